//! Names a request gives of other objects (groups, proxies) must exist, as the config file's
//! must: a name mistyped through the API would otherwise switch something off without a word
//! (a prompt applied nowhere, a proxy that refuses every key).

use crate::AppState;
use crate::error::{ApiError, ApiResult};

impl AppState {
    /// Refuses a group among `names` (the member `field` of the request) that does not exist.
    /// An update passes the names it replaces as `before`: only those it adds are checked, so
    /// a name kept after its group was deleted does not block other changes.
    pub(crate) async fn check_groups_exist(
        &self,
        field: &str,
        names: &[String],
        before: Option<&[String]>,
    ) -> ApiResult<()> {
        let added = added(names, before);
        if added.is_empty() {
            return Ok(());
        }
        let known = self.store.list_groups().await?;
        all_known(field, "group", &added, known.iter().map(|g| &g.spec.name))
    }

    /// Refuses a proxy among `names` that does not exist (as [`AppState::check_groups_exist`]).
    pub(crate) async fn check_proxies_exist(
        &self,
        field: &str,
        names: &[String],
        before: Option<&[String]>,
    ) -> ApiResult<()> {
        let added = added(names, before);
        if added.is_empty() {
            return Ok(());
        }
        let known = self.store.list_proxies().await?;
        all_known(field, "proxy", &added, known.iter().map(|p| &p.spec.name))
    }
}

/// The names of `now` that `before` did not have.
fn added<'a>(now: &'a [String], before: Option<&[String]>) -> Vec<&'a String> {
    now.iter()
        .filter(|n| !before.is_some_and(|b| b.contains(n)))
        .collect()
}

/// The first of `names` that is not among `known`, as a 400 on `field`.
fn all_known<'a>(
    field: &str,
    noun: &str,
    names: &[&String],
    known: impl Iterator<Item = &'a String>,
) -> ApiResult<()> {
    let known: Vec<&String> = known.collect();
    match names.iter().find(|n| !known.contains(n)) {
        Some(n) => Err(ApiError::field(
            field,
            format!("{noun} `{n}` does not exist"),
        )),
        None => Ok(()),
    }
}
