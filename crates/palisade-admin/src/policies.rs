//! Policies: the built-in packs and custom policies, their compilation for proxies, the policy
//! API (CRUD, validate, test) and alerts.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use palisade_core::record::AlertRecord;
use palisade_policy::{Evaluation, Policy, PolicySet, Target};
use palisade_store::{ALERT_STATUSES, AlertFilter, AlertPage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Admin, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::json::{JsonBody, ValidJson, ValidQuery};

/// Compiled sets kept for reuse (each holds ~20 MiB with all shipped packs).
const MAX_CACHED_SETS: usize = 8;

/// Built-in packs plus custom policies, and a cache of compiled sets by id list.
#[derive(Default)]
pub struct PolicyRegistry {
    builtin: BTreeMap<String, Arc<Policy>>,
    custom: BTreeMap<String, Arc<Policy>>,
    compiled: HashMap<Vec<String>, Arc<PolicySet>>,
    /// Counts changes to custom policies: a set compiled from policies read before a change
    /// is not cached after it.
    generation: u64,
}

impl PolicyRegistry {
    /// Ids of every policy, built-in and custom.
    pub(crate) fn all_ids(&self) -> Vec<String> {
        self.builtin
            .keys()
            .chain(self.custom.keys())
            .cloned()
            .collect()
    }

    /// A registry of the given built-in packs.
    pub fn new(builtin: Vec<Policy>) -> Self {
        Self {
            builtin: builtin
                .into_iter()
                .map(|p| (p.id.clone(), Arc::new(p)))
                .collect(),
            ..Default::default()
        }
    }

    /// Puts (`Some`) or removes a custom policy, forgetting every compiled set that held it.
    fn set_custom(&mut self, id: &str, p: Option<Policy>) {
        match p {
            Some(p) => self.custom.insert(id.to_string(), Arc::new(p)),
            None => self.custom.remove(id),
        };
        self.generation += 1;
        self.compiled.retain(|k, _| !k.iter().any(|x| x == id));
    }

    fn get(&self, id: &str) -> Option<(Arc<Policy>, bool)> {
        self.builtin
            .get(id)
            .map(|p| (p.clone(), true))
            .or_else(|| self.custom.get(id).map(|p| (p.clone(), false)))
    }
}

/// Caches `v` under `key`, keeping at most [`MAX_CACHED_SETS`]: entries nobody else holds go
/// first, then any (whoever holds one keeps it alive). Returns whether entries were dropped.
fn insert_bounded<V>(
    cache: &mut HashMap<Vec<String>, Arc<V>>,
    key: Vec<String>,
    v: Arc<V>,
) -> bool {
    let full = cache.len() >= MAX_CACHED_SETS;
    if full {
        cache.retain(|_, s| Arc::strong_count(s) > 1);
        while cache.len() >= MAX_CACHED_SETS {
            let Some(k) = cache.keys().next().cloned() else {
                break;
            };
            cache.remove(&k);
        }
    }
    cache.insert(key, v);
    full
}

/// Changes to custom policies and to the policies of proxies, one at a time from the store
/// write to the proxies' switch: two concurrent `PUT`s must leave the proxies with the version
/// the store and the API show, a proxy switched to a policy while it is replaced must get the
/// new version, and a policy cannot be deleted while a proxy is being switched to it.
static POLICY_WRITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the turn to change policies or what proxies use (see [`POLICY_WRITES`]).
pub(crate) async fn policy_change_turn() -> tokio::sync::MutexGuard<'static, ()> {
    POLICY_WRITES.lock().await
}

/// Locks the registry (a poisoned lock still holds consistent data: every write is one insert).
pub(crate) fn lock(r: &Mutex<PolicyRegistry>) -> std::sync::MutexGuard<'_, PolicyRegistry> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// One policy compilation at a time, for a proxy's set, the playground or a policy being
/// validated or stored: each takes a core and a transient ~100 MiB for a second, and the
/// playground and validation let any signed-in user ask for one.
static COMPILING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl AppState {
    /// Whether a policy (built-in pack or custom policy) has this id.
    pub fn has_policy(&self, id: &str) -> bool {
        lock(&self.policies).get(id).is_some()
    }

    /// Loads custom policies from the store (at start).
    pub async fn load_custom_policies(&self) -> ApiResult<()> {
        let rows = self.store.list_policies().await?;
        let mut reg = lock(&self.policies);
        for (id, doc, _) in rows {
            match Policy::from_json(&doc) {
                Ok(p) => {
                    reg.custom.insert(id, Arc::new(p));
                }
                Err(e) => {
                    tracing::error!(policy = %id, error = %e, "stored policy no longer loads; skipped")
                }
            }
        }
        reg.compiled.clear();
        reg.generation += 1;
        Ok(())
    }

    /// The compiled set for a proxy's policy ids (cached; compiled off the async threads).
    pub async fn compile_policies(&self, ids: &[String]) -> ApiResult<Option<Arc<PolicySet>>> {
        if ids.is_empty() {
            return Ok(None);
        }
        // A repeated id is refused before anything is copied (each copy of a pack is its whole
        // rule text, and a 1 MiB list could name one pack tens of thousands of times).
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if !seen.insert(id.as_str()) {
                return Err(ApiError::field(
                    format!("policies[{i}]"),
                    format!("`{id}` is listed twice"),
                ));
            }
        }
        let mut key = ids.to_vec();
        key.sort();
        let (policies, generation) = {
            let reg = lock(&self.policies);
            if let Some(set) = reg.compiled.get(&key) {
                return Ok(Some(set.clone()));
            }
            let mut out = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let (p, _) = reg.get(id).ok_or_else(|| {
                    ApiError::field(
                        format!("policies[{i}]"),
                        format!("no policy with id `{id}`"),
                    )
                })?;
                out.push((*p).clone());
            }
            (out, reg.generation)
        };
        let _turn = COMPILING.acquire().await.map_err(ApiError::internal)?;
        // A call that waited for the same set finds it compiled by the one before it.
        if let Some(set) = lock(&self.policies).compiled.get(&key) {
            return Ok(Some(set.clone()));
        }
        let set = tokio::task::spawn_blocking(move || PolicySet::compile(&policies))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("policies", e.to_string()))?;
        let set = Arc::new(set);
        let mut reg = lock(&self.policies);
        // Compiled from policies that changed meanwhile: used by this caller only.
        if reg.generation == generation && insert_bounded(&mut reg.compiled, key, set.clone()) {
            drop(reg);
            palisade_policy::release_free_memory();
        }
        Ok(Some(set))
    }

    /// Recompiles and swaps every running proxy that uses `policy_id` (after it changed).
    async fn refresh_proxies_using(&self, policy_id: &str) -> ApiResult<()> {
        for row in self.store.list_proxies().await? {
            if row.spec.policies.iter().any(|p| p == policy_id) {
                let rt = self
                    .runtime(&row.spec, row.upstream_key_sealed.as_deref())
                    .await?;
                self.manager
                    .reconfigure(rt)
                    .await
                    .map_err(|e| ApiError::conflict(e.to_string()))?;
            }
        }
        Ok(())
    }

    async fn proxies_using(&self, policy_id: &str) -> ApiResult<Vec<String>> {
        Ok(self
            .store
            .list_proxies()
            .await?
            .into_iter()
            .filter(|r| r.spec.policies.iter().any(|p| p == policy_id))
            .map(|r| r.spec.name)
            .collect())
    }
}

/// A policy in the list.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyInfo {
    /// Policy id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Version.
    pub version: String,
    /// Number of rules.
    pub rule_count: usize,
    /// Shipped with Palisade (read-only).
    pub builtin: bool,
    /// Proxies that use it.
    pub used_by: Vec<String>,
}

fn info(p: &Policy, builtin: bool, used_by: Vec<String>) -> PolicyInfo {
    PolicyInfo {
        id: p.id.clone(),
        name: p.name.clone(),
        description: p.description.clone(),
        version: p.version.clone(),
        rule_count: p.rules.len(),
        builtin,
        used_by,
    }
}

/// List policies (built-in packs and custom).
#[utoipa::path(get, path = "/api/v1/policies", tag = "policies", security(("bearer" = [])),
    responses((status = 200, body = [PolicyInfo]), (status = 401, body = ErrorBody)))]
pub async fn list(State(s): State<AppState>, _v: Viewer) -> ApiResult<Json<Vec<PolicyInfo>>> {
    let proxies = s.store.list_proxies().await?;
    let used = |id: &str| {
        proxies
            .iter()
            .filter(|r| r.spec.policies.iter().any(|p| p == id))
            .map(|r| r.spec.name.clone())
            .collect()
    };
    let reg = lock(&s.policies);
    let mut out: Vec<PolicyInfo> = reg
        .builtin
        .values()
        .map(|p| info(p, true, used(&p.id)))
        .collect();
    out.extend(reg.custom.values().map(|p| info(p, false, used(&p.id))));
    Ok(Json(out))
}

/// Get a policy document with all its rules.
#[utoipa::path(get, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 200, description = "The policy document (see policies/policy.schema.json)", body = Object),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    _v: Viewer,
    Path(id): Path<String>,
) -> ApiResult<Json<Policy>> {
    let p = lock(&s.policies)
        .get(&id)
        .map(|(p, _)| p)
        .ok_or_else(|| ApiError::not_found(format!("policy `{id}`")))?;
    Ok(Json((*p).clone()))
}

/// Parses and compiles a policy document, with errors naming the policy, rule and problem.
async fn parse_policy(body: Bytes) -> ApiResult<Policy> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("body is not UTF-8"))?
        .to_string();
    let _turn = COMPILING.acquire().await.map_err(ApiError::internal)?;
    tokio::task::spawn_blocking(move || {
        let p = Policy::from_json(&text)?;
        PolicySet::compile(std::slice::from_ref(&p))?;
        Ok::<_, palisade_policy::PolicyError>(p)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_policy", e.to_string()))
}

/// Create a custom policy.
#[utoipa::path(post, path = "/api/v1/policies", tag = "policies", security(("bearer" = [])),
    request_body(content = Object, description = "A policy document"),
    responses((status = 201, body = PolicyInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(s): State<AppState>,
    Admin(u): Admin,
    JsonBody(body): JsonBody,
) -> ApiResult<(StatusCode, Json<PolicyInfo>)> {
    let p = parse_policy(body).await?;
    let _one_change = policy_change_turn().await;
    if lock(&s.policies).get(&p.id).is_some() {
        return Err(ApiError::conflict(format!(
            "a policy with id `{}` already exists",
            p.id
        )));
    }
    s.store
        .put_policy(&p.id, p.to_json_pretty(), true, u.actor())
        .await?;
    let out = info(&p, false, vec![]);
    lock(&s.policies).set_custom(&out.id, Some(p));
    Ok((StatusCode::CREATED, Json(out)))
}

/// Replace a custom policy; proxies using it switch to the new rules at once.
#[utoipa::path(put, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(("id" = String, Path, description = "Policy id")),
    request_body(content = Object, description = "A policy document"),
    responses((status = 200, body = PolicyInfo), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn replace(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<PolicyInfo>> {
    let p = parse_policy(body).await?;
    if p.id != id {
        return Err(ApiError::field(
            "id",
            "must match the policy id in the path",
        ));
    }
    let _one_change = policy_change_turn().await;
    match lock(&s.policies).get(&id) {
        None => return Err(ApiError::not_found(format!("policy `{id}`"))),
        Some((_, true)) => {
            return Err(ApiError::forbidden(
                "built-in packs are read-only; create a custom policy",
            ));
        }
        Some(_) => {}
    }
    s.store
        .put_policy(&id, p.to_json_pretty(), false, u.actor())
        .await?;
    lock(&s.policies).set_custom(&id, Some(p.clone()));
    s.refresh_proxies_using(&id).await?;
    Ok(Json(info(&p, false, s.proxies_using(&id).await?)))
}

/// Delete a custom policy that no proxy uses.
#[utoipa::path(delete, path = "/api/v1/policies/{id}", tag = "policies", security(("bearer" = [])),
    params(("id" = String, Path, description = "Policy id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let _one_change = policy_change_turn().await;
    match lock(&s.policies).get(&id) {
        None => return Err(ApiError::not_found(format!("policy `{id}`"))),
        Some((_, true)) => return Err(ApiError::forbidden("built-in packs cannot be deleted")),
        Some(_) => {}
    }
    let used = s.proxies_using(&id).await?;
    if !used.is_empty() {
        return Err(ApiError::conflict(format!(
            "policy `{id}` is used by proxies: {}",
            used.join(", ")
        )));
    }
    s.store.delete_policy(&id, u.actor()).await?;
    lock(&s.policies).set_custom(&id, None);
    Ok(StatusCode::NO_CONTENT)
}

/// Result of a validation.
#[derive(Debug, Serialize, ToSchema)]
pub struct Validation {
    /// Whether the document loads and compiles.
    pub valid: bool,
    /// Number of rules when valid.
    pub rule_count: Option<usize>,
    /// The problem, naming the policy and rule, when invalid.
    pub error: Option<String>,
}

/// Validate a policy document without storing it.
#[utoipa::path(post, path = "/api/v1/policies/validate", tag = "policies", security(("bearer" = [])),
    request_body(content = Object, description = "A policy document"),
    responses((status = 200, body = Validation), (status = 401, body = ErrorBody)))]
pub async fn validate(
    State(s): State<AppState>,
    Viewer(u): Viewer,
    JsonBody(body): JsonBody,
) -> ApiResult<Json<Validation>> {
    let out = match parse_policy(body).await {
        Ok(p) => Validation {
            valid: true,
            rule_count: Some(p.rules.len()),
            error: None,
        },
        Err(e) => Validation {
            valid: false,
            rule_count: None,
            error: Some(e.message),
        },
    };
    let detail = serde_json::json!({"valid": out.valid});
    s.store
        .record_event(u.actor(), "policy.validate", "policy", "-", Some(detail))
        .await?;
    Ok(Json(out))
}

/// Playground request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    /// Text to check.
    pub text: String,
    /// Policy ids to check it against (default: every policy).
    #[serde(default)]
    pub policies: Vec<String>,
    /// Target (`llm_request` by default).
    #[serde(default)]
    pub target: Option<String>,
}

/// Playground: which rules match a text, its risk score and the decision.
#[utoipa::path(post, path = "/api/v1/policies/test", tag = "policies", security(("bearer" = [])),
    request_body = TestRequest,
    responses((status = 200, description = "matches, score and decision", body = Object), (status = 400, body = ErrorBody)))]
pub async fn test(
    State(s): State<AppState>,
    Viewer(u): Viewer,
    ValidJson(req): ValidJson<TestRequest>,
) -> ApiResult<Json<Evaluation>> {
    if req.text.len() > 1024 * 1024 {
        return Err(ApiError::field("text", "must be at most 1 MiB"));
    }
    let t = req.target.as_deref().unwrap_or("llm_request");
    let target = Target::ALL
        .iter()
        .copied()
        .find(|x| x.as_str() == t)
        .ok_or_else(|| ApiError::field("target", format!("unknown target `{t}`")))?;
    let ids = if req.policies.is_empty() {
        lock(&s.policies).all_ids()
    } else {
        req.policies.clone()
    };
    let set = s
        .compile_policies(&ids)
        .await?
        .ok_or_else(|| ApiError::field("policies", "no policy to test"))?;
    let text = req.text;
    let ev = tokio::task::spawn_blocking(move || set.evaluate(target, &text))
        .await
        .map_err(ApiError::internal)?;
    let detail = serde_json::json!({"policies": ids, "target": target.as_str(), "matches": ev.matches.len()});
    s.store
        .record_event(u.actor(), "policy.test", "policy", "-", Some(detail))
        .await?;
    Ok(Json(ev))
}

/// List alerts with filters and paging (newest first).
#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", security(("bearer" = [])), params(AlertFilter),
    responses((status = 200, body = AlertPage), (status = 401, body = ErrorBody)))]
pub async fn alerts(
    State(s): State<AppState>,
    _v: Viewer,
    ValidQuery(f): ValidQuery<AlertFilter>,
) -> ApiResult<Json<AlertPage>> {
    crate::logs::check_limit(f.limit)?;
    use crate::logs::check_one_of;
    check_one_of("status", f.status.as_deref(), &ALERT_STATUSES)?;
    check_one_of(
        "kind",
        f.kind.as_deref(),
        &["policy", "budget", "mcp_tool", "mcp_answer"],
    )?;
    check_one_of(
        "severity",
        f.severity.as_deref(),
        &["critical", "high", "medium", "low"],
    )?;
    Ok(Json(s.store.query_alerts(f).await?))
}

/// Alert status change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertUpdate {
    /// `new`, `acknowledged`, `resolved` or `false_positive`.
    pub status: String,
}

/// Move an alert through the workflow.
#[utoipa::path(patch, path = "/api/v1/alerts/{id}", tag = "alerts", security(("bearer" = [])),
    params(("id" = String, Path, description = "Alert id")), request_body = AlertUpdate,
    responses((status = 200, body = AlertRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_alert(
    State(s): State<AppState>,
    Admin(u): Admin,
    Path(id): Path<String>,
    ValidJson(upd): ValidJson<AlertUpdate>,
) -> ApiResult<Json<AlertRecord>> {
    if !ALERT_STATUSES.contains(&upd.status.as_str()) {
        return Err(ApiError::field(
            "status",
            format!("must be one of {}", ALERT_STATUSES.join(", ")),
        ));
    }
    Ok(Json(
        s.store
            .set_alert_status(&id, &upd.status, u.actor())
            .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_set_cache_is_bounded_and_keeps_sets_in_use_longest() {
        let mut cache = HashMap::new();
        let held: Vec<Arc<u32>> = (0..3).map(Arc::new).collect();
        for (i, h) in held.iter().enumerate() {
            insert_bounded(&mut cache, vec![format!("in-use-{i}")], h.clone());
        }
        for i in 0..20u32 {
            insert_bounded(&mut cache, vec![format!("tried-{i}")], Arc::new(i));
            assert!(cache.len() <= MAX_CACHED_SETS);
        }
        for i in 0..3 {
            assert!(cache.contains_key(&vec![format!("in-use-{i}")]), "{i}");
        }
        assert!(cache.contains_key(&vec!["tried-19".to_string()]));
    }
}
