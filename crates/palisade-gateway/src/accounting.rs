//! Spend and rate control on the data path: per-key and per-group token buckets, monthly group
//! spend kept in memory (seeded from the store, rolled over by the calendar), prices, and the
//! budget alerts.
//!
//! Budgets are checked before the upstream is called and charged when the answer's usage is
//! known, so concurrent requests can overspend only by what is already in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use palisade_core::identity::KeyInfo;
use palisade_core::record::{AlertRecord, RequestRecord};
use palisade_core::spend::{
    BudgetAction, GroupSpec, NANO_PER_USD, PriceTable, month_key, month_start_ms,
};

use crate::error::ProxyError;
use crate::usage::Usage;

/// A clock in Unix ms; injectable so month roll-over can be tested.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A token bucket refilled continuously at `limit` per minute.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
    /// The limit the bucket was last used with (what the shared bucket refills to).
    limit: u32,
    /// Units taken here since the last exchange with the other nodes (`cluster.rs`).
    pending: f64,
    /// Last time a request used the bucket (only buckets in use are exchanged).
    used_ms: i64,
    /// Last time the bucket was sent to the other nodes (the longest unsent go first).
    sent_ms: i64,
}

impl Bucket {
    fn full(limit: u32, now: i64) -> Bucket {
        Bucket {
            tokens: f64::from(limit),
            at_ms: now,
            limit,
            pending: 0.0,
            used_ms: now,
            sent_ms: 0,
        }
    }
}

/// One limit a request must pass: its bucket, the limit per minute, what the request takes
/// (0: only checked, as for tokens charged later), and whose limit it is (for the client's
/// message, written only when it refuses).
struct Check<'a> {
    scope: String,
    limit: u32,
    take: f64,
    owner: (&'static str, &'a str),
}

impl<'a> Check<'a> {
    /// The check of `limit` (none: nothing to check) on bucket `prefix:name`; a requests limit
    /// takes one, a tokens limit only checks.
    fn of(
        limit: Option<u32>,
        prefix: &str,
        id: &str,
        owner: (&'static str, &'a str),
        tokens: bool,
    ) -> Option<Check<'a>> {
        Some(Check {
            scope: format!("{prefix}:{id}"),
            limit: limit?,
            take: if tokens { 0.0 } else { 1.0 },
            owner,
        })
    }

    /// What the client is told when this limit refuses.
    fn refusal(&self) -> String {
        let unit = if self.take == 0.0 {
            "tokens"
        } else {
            "requests"
        };
        let (kind, name) = self.owner;
        format!("{kind} `{name}`: {} {unit} per minute", self.limit)
    }
}

/// Per-minute limits keyed by scope (`k:<key name>`, `g:<group>`, `p:<proxy>`, `t…` for
/// tokens). Names, not ids: the scopes are the same on every node that shares them.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    fn refill(b: &mut Bucket, limit: f64, now: i64) {
        let elapsed = (now - b.at_ms).max(0) as f64;
        b.tokens = (b.tokens + elapsed * limit / 60_000.0).min(limit);
        b.at_ms = now;
    }

    /// Buckets unused for two minutes go once the map is large.
    fn prune(map: &mut HashMap<String, Bucket>, now: i64) {
        if map.len() > 100_000 {
            map.retain(|_, b| now - b.used_ms < 120_000);
        }
    }

    /// The bucket of `scope` (full when new; the scope's name is copied only then), marked used
    /// now with `limit`, and refilled to now.
    fn used<'a>(
        map: &'a mut HashMap<String, Bucket>,
        scope: &str,
        limit: u32,
        now: i64,
    ) -> &'a mut Bucket {
        if !map.contains_key(scope) {
            map.insert(scope.to_string(), Bucket::full(limit, now));
        }
        let b = map.get_mut(scope).expect("inserted above");
        b.limit = limit;
        b.used_ms = now;
        Self::refill(b, f64::from(limit), now);
        b
    }

    /// Seconds until `missing` units of a per-minute `limit` are back (at least one).
    fn wait_secs(missing: f64, limit: f64) -> u64 {
        ((missing * 60.0 / limit).ceil() as u64).max(1)
    }

    /// Checks that `scope` has budget left (> 0) and, with `take`, takes that many units.
    /// On refusal returns the seconds until one unit is available.
    fn acquire(&self, scope: &str, limit: u32, take: f64, now: i64) -> Result<(), u64> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::prune(&mut map, now);
        let b = Self::used(&mut map, scope, limit, now);
        let need = take.max(f64::MIN_POSITIVE);
        if b.tokens >= need {
            b.tokens -= take;
            b.pending += take;
            Ok(())
        } else {
            Err(Self::wait_secs(need - b.tokens, f64::from(limit)))
        }
    }

    /// [`RateLimiter::acquire`] for several buckets at once, all or nothing: the first that
    /// refuses (in order) is the answer, and then none is taken from — a request refused by one
    /// limit does not use up the others. Returns the refusing check's index and its wait.
    fn acquire_all(&self, checks: &[Check], now: i64) -> Result<(), (usize, u64)> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        Self::prune(&mut map, now);
        for (i, c) in checks.iter().enumerate() {
            let b = Self::used(&mut map, &c.scope, c.limit, now);
            let need = c.take.max(f64::MIN_POSITIVE);
            if b.tokens < need {
                return Err((i, Self::wait_secs(need - b.tokens, f64::from(c.limit))));
            }
        }
        for c in checks {
            if let Some(b) = map.get_mut(&c.scope) {
                b.tokens -= c.take;
                b.pending += c.take;
            }
        }
        Ok(())
    }

    /// Charges units after the fact (tokens); the balance may go negative and then refuses.
    fn charge(&self, scope: &str, limit: u32, amount: f64, now: i64) {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = Self::used(&mut map, scope, limit, now);
        b.tokens = (b.tokens - amount).min(f64::from(limit));
        b.pending += amount;
    }

    /// What this node took from its buckets since the last exchange (`(scope, limit, units)`),
    /// now counted as sent: the buckets it took from, then those used in the last minute (kept
    /// in step: used again, they start from the shared level, not from a full one); at most
    /// `max`, the longest unsent first (the rest wait for the next exchange, in turn).
    pub(crate) fn take_pending(&self, now: i64, max: usize) -> Vec<(String, u32, f64)> {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut due: Vec<(bool, i64, String)> = map
            .iter()
            .filter(|(_, b)| b.pending != 0.0 || now - b.used_ms < 60_000)
            .map(|(scope, b)| (b.pending == 0.0, b.sent_ms, scope.clone()))
            .collect();
        if due.len() > max {
            due.select_nth_unstable(max);
            due.truncate(max);
        }
        due.into_iter()
            .filter_map(|(_, _, scope)| {
                let b = map.get_mut(&scope)?;
                b.sent_ms = now;
                let units = std::mem::take(&mut b.pending);
                Some((scope, b.limit, units))
            })
            .collect()
    }

    /// Forgets what was taken while the other nodes could not be reached: each node enforced
    /// the whole limit alone meanwhile, and sending it afterwards would only empty the shared
    /// buckets for as long again.
    pub(crate) fn discard_pending(&self) {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for b in map.values_mut() {
            b.pending = 0.0;
        }
    }

    /// The shared buckets' levels after an exchange (none: Redis could not read that bucket):
    /// this node's bucket is the shared one less what it took since the exchange began.
    pub(crate) fn apply_shared(&self, levels: &[(String, Option<f64>)], now: i64) {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for (scope, level) in levels {
            if let (Some(b), Some(level)) = (map.get_mut(scope), level) {
                let limit = f64::from(b.limit);
                b.tokens = (level - b.pending).clamp(-limit, limit);
                b.at_ms = now;
            }
        }
    }
}

/// Estimated tokens a request holds in tokens-per-minute buckets until it is settled; given
/// back when dropped.
pub struct TokenHold {
    acc: Arc<Accounting>,
    scopes: Vec<(String, u32)>,
    tokens: f64,
}

impl Drop for TokenHold {
    fn drop(&mut self) {
        let now = (self.acc.clock)();
        for (scope, tpm) in &self.scopes {
            self.acc.limiter.charge(scope, *tpm, -self.tokens, now);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupSpend {
    month: i32,
    /// Start of the budget period (Unix ms): the month's start, or a manual reset after it.
    period: i64,
    nano: i64,
    /// The budget (nano-dollars) whose warning threshold / whole amount this period's spend
    /// crossed, alerted once each: a budget changed mid-month alerts again at its new marks.
    warned: Option<i64>,
    exceeded: Option<i64>,
    /// Spend charged here since the last exchange with the other nodes (`cluster.rs`).
    pending: i64,
    /// The shared total at the last exchange (none before the first).
    shared: Option<i64>,
    /// Reset here by hand since the last exchange: the shared total starts again too.
    reset: bool,
}

/// What one exchange sends of a group's spend.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpendPush {
    /// Add to the shared total, which starts at this figure when Redis has none: this node's
    /// (seeded from its log) at the first exchange, later the total it last saw (a Redis that
    /// lost its data is filled again by the first node to exchange).
    Seed(i64),
    /// Reset by hand: the shared total becomes what was charged since.
    Reset,
}

/// One group's spend in one exchange: group, month, what was charged here, how to send it.
pub(crate) type SpendSent = (String, i32, i64, SpendPush);

/// Largest shared month's spend taken from Redis (nano-dollars; ~$92 million: its percentages
/// stay within `i64`).
const MAX_SHARED_NANO: i64 = i64::MAX / 100;

/// Spend of each group in the current calendar month (UTC).
#[derive(Default)]
pub struct SpendBook {
    groups: Mutex<HashMap<String, GroupSpend>>,
}

impl SpendBook {
    fn entry<'a>(
        map: &'a mut HashMap<String, GroupSpend>,
        group: &str,
        now: i64,
    ) -> &'a mut GroupSpend {
        let month = month_key(now);
        let fresh = GroupSpend {
            month,
            period: month_start_ms(now),
            ..Default::default()
        };
        let e = map.entry(group.to_string()).or_insert(fresh);
        if e.month != month {
            // A new month: spend starts from zero without any job having to run.
            *e = fresh;
        }
        e
    }

    /// Sets a group's spend in the period that started at `period` (start-up seeding from the
    /// store, manual reset); its alerts may be raised again.
    ///
    /// `budget` (the group's budget and warning percent) tells which of its marks the spend
    /// is already past: their alerts were raised before (a restart does not raise them again).
    pub fn set(&self, group: &str, nano: i64, period: i64, now: i64, budget: Option<(i64, u8)>) {
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let past = |reached: bool, limit: i64| reached.then_some(limit);
        *Self::entry(&mut map, group, now) = GroupSpend {
            month: month_key(now),
            period: period.max(month_start_ms(now)),
            nano,
            warned: budget.and_then(|(limit, pct)| {
                past(
                    nano.saturating_mul(100) >= limit.saturating_mul(i64::from(pct)),
                    limit,
                )
            }),
            exceeded: budget.and_then(|(limit, _)| past(nano >= limit, limit)),
            ..Default::default()
        };
    }

    /// A reset by hand: spend counts from `now`, here and (with shared counters) on every node.
    pub fn reset(&self, group: &str, now: i64) {
        self.set(group, 0, now, now, None);
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        Self::entry(&mut map, group, now).reset = true;
    }

    /// Each group's spend charged here since the last exchange, now counted as sent; `known`
    /// (the configured groups) are exchanged even before this node charged them, so a budget
    /// spent on other nodes is known here before this node's first request of the group.
    pub(crate) fn take_pending(&self, known: &[String], now: i64) -> Vec<SpendSent> {
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut groups: Vec<String> = map.keys().cloned().collect();
        groups.extend(known.iter().filter(|g| !map.contains_key(*g)).cloned());
        groups
            .into_iter()
            .map(|g| {
                let e = Self::entry(&mut map, &g, now);
                let push = if std::mem::take(&mut e.reset) {
                    SpendPush::Reset
                } else {
                    SpendPush::Seed(e.shared.unwrap_or(e.nano - e.pending))
                };
                (g, e.month, std::mem::take(&mut e.pending), push)
            })
            .collect()
    }

    /// The shared totals after an exchange, in the order sent: this node's figure is the total
    /// plus what it charged since. A total below what this node last saw plus what it just
    /// sent was reset on another node: the period starts again here too, and its alerts may be
    /// raised again. A group Redis could not count (none) keeps this node's figure, and what was
    /// sent for it is sent again with the next exchange; one whose total is out of range (a
    /// counter changed by hand) was counted, and keeps this node's figure; a group reset here
    /// while the exchange was under way waits for the next one.
    pub(crate) fn apply_shared(&self, sent: &[SpendSent], totals: &[Option<i64>], now: i64) {
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        for ((g, month, nano, push), total) in sent.iter().zip(totals) {
            let e = Self::entry(&mut map, g, now);
            if e.month != *month {
                continue;
            }
            let Some(total) = total else {
                e.pending = e.pending.saturating_add(*nano);
                e.reset |= *push == SpendPush::Reset;
                continue;
            };
            if !(0..=MAX_SHARED_NANO).contains(total) {
                continue;
            }
            let total = *total;
            if e.reset {
                continue;
            }
            if let (Some(prev), SpendPush::Seed(_)) = (e.shared, push)
                && total < prev.saturating_add(*nano)
            {
                e.period = now;
                e.warned = None;
                e.exceeded = None;
            }
            e.shared = Some(total);
            e.nano = total.saturating_add(e.pending);
        }
    }

    /// Start of a group's budget period (Unix ms).
    pub(crate) fn period(&self, group: &str, now: i64) -> i64 {
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        Self::entry(&mut map, group, now).period
    }

    /// Spend this month in nano-dollars.
    pub fn spent(&self, group: &str, now: i64) -> i64 {
        let mut map = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        Self::entry(&mut map, group, now).nano
    }
}

/// What the pre-check decided.
#[derive(Debug, Default)]
pub struct Admission {
    /// A warning for the client (`warn` budgets over their limit).
    pub budget_warning: Option<String>,
}

/// The accounting state shared by all proxies.
pub struct Accounting {
    /// Groups by name.
    pub groups: ArcSwap<HashMap<String, GroupSpec>>,
    /// Prices.
    pub prices: ArcSwap<PriceTable>,
    /// Rate limits.
    pub limiter: RateLimiter,
    /// Group spend.
    pub spend: SpendBook,
    /// Time source.
    pub clock: Clock,
    /// The exchanges with the other nodes, when counters are shared (`cluster.rs`).
    pub cluster: Arc<crate::cluster::ClusterStatus>,
}

impl Default for Accounting {
    fn default() -> Self {
        Self {
            groups: ArcSwap::from_pointee(HashMap::new()),
            prices: ArcSwap::from_pointee(PriceTable::default()),
            limiter: RateLimiter::default(),
            spend: SpendBook::default(),
            clock: Arc::new(palisade_core::now_ms),
            cluster: Arc::default(),
        }
    }
}

/// Dollars for a message: cents, or under a dollar as many decimals as it takes (up to eight),
/// so a $0.00001 budget is not "$0.00".
fn dollars(v: f64) -> String {
    if v.abs() >= 1.0 || v == 0.0 {
        return format!("${v:.2}");
    }
    // Under a dollar: cents at least ($0.50), more digits only when they are not zero.
    let s = format!("{v:.8}");
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let frac = frac.trim_end_matches('0');
    format!("${whole}.{frac:0<2}")
}

fn usd(nano: i64) -> f64 {
    nano as f64 / NANO_PER_USD
}

impl Accounting {
    /// Phase 1b: key scope, rate limits and budget, before any upstream work.
    /// [`Accounting::admit`] on a proxy: the proxy's group restriction first, then the key's
    /// and group's budget and limits, then the proxy's own requests-per-minute limit (shared by
    /// every caller: an A2A agent's or an MCP server's capacity).
    pub fn admit_on(
        &self,
        key: &KeyInfo,
        spec: &palisade_core::model::ProxySpec,
        alert: &dyn Fn(AlertRecord),
        rec: &RequestRecord,
    ) -> Result<Admission, ProxyError> {
        if !spec.admits_group(key.group.as_deref()) {
            return Err(ProxyError::Forbidden(format!(
                "key `{}` ({}) may not use proxy `{}`: it is open to groups {}",
                key.name,
                key.group
                    .as_deref()
                    .map_or("no group".to_string(), |g| format!("group `{g}`")),
                spec.name,
                spec.allowed_groups.join(", ")
            )));
        }
        let proxy_rpm = Check::of(
            spec.requests_per_minute,
            "p",
            &spec.name,
            ("proxy", &spec.name),
            false,
        );
        self.admit_with(key, &spec.name, proxy_rpm, alert, rec)
    }

    /// Admits a request of `key` on `proxy`: its allowed proxies, its group's budget, and the
    /// key's and group's rate limits.
    pub fn admit(
        &self,
        key: &KeyInfo,
        proxy: &str,
        alert: &dyn Fn(AlertRecord),
        rec: &RequestRecord,
    ) -> Result<Admission, ProxyError> {
        self.admit_with(key, proxy, None, alert, rec)
    }

    /// [`Accounting::admit`] with one more limit (the proxy's own rate), taken with the
    /// others, all or nothing.
    fn admit_with(
        &self,
        key: &KeyInfo,
        proxy: &str,
        extra: Option<Check<'_>>,
        alert: &dyn Fn(AlertRecord),
        rec: &RequestRecord,
    ) -> Result<Admission, ProxyError> {
        if !key.allowed_proxies.is_empty() && !key.allowed_proxies.iter().any(|p| p == proxy) {
            return Err(ProxyError::Forbidden(format!(
                "key `{}` may not use proxy `{proxy}`",
                key.name
            )));
        }
        let now = (self.clock)();
        let groups = self.groups.load();
        let group = key.group.as_ref().and_then(|g| groups.get(g));
        // The budget first: a request it refuses does not use up the rate limits.
        let mut out = Admission::default();
        if let Some(g) = group
            && let Some(limit) = g.budget_nano()
        {
            let spent = self.spend.spent(&g.name, now);
            if spent >= limit {
                let msg = format!(
                    "group `{}` has spent {} of its {} monthly budget",
                    g.name,
                    dollars(usd(spent)),
                    dollars(usd(limit))
                );
                self.budget_alert(g, spent, limit, now, true, alert, rec);
                match g.budget_action {
                    BudgetAction::Block => return Err(ProxyError::BudgetExceeded(msg)),
                    BudgetAction::Warn => out.budget_warning = Some(msg),
                }
            }
        }
        let mut checks: Vec<Check> = [
            Check::of(key.rpm, "k", &key.name, ("key", &key.name), false),
            Check::of(key.tpm, "t", &key.name, ("key", &key.name), true),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(g) = group {
            checks.extend(Check::of(
                g.group_rpm,
                "g",
                &g.name,
                ("group", &g.name),
                false,
            ));
            checks.extend(Check::of(
                g.group_tpm,
                "gt",
                &g.name,
                ("group", &g.name),
                true,
            ));
        }
        checks.extend(extra);
        if !checks.is_empty() {
            self.limiter
                .acquire_all(&checks, now)
                .map_err(|(i, s)| ProxyError::RateLimited {
                    retry_after: s,
                    what: checks[i].refusal(),
                })?;
        }
        Ok(out)
    }

    /// Takes a request's estimated prompt tokens from its key's and group's tokens-per-minute
    /// buckets once its body is known: requests sent at once would otherwise all pass the check
    /// made before any of them was answered (tokens are charged when the answer's count
    /// arrives). Refused when a bucket is already spent; the hold gives the estimate back when
    /// dropped, after [`Accounting::settle`] has charged the real count.
    pub fn hold_tokens(
        self: &Arc<Self>,
        key: &KeyInfo,
        estimate: i64,
    ) -> Result<Option<TokenHold>, ProxyError> {
        // (scope, limit, whose limit: a key's or a group's name)
        let groups = self.groups.load();
        let group = key
            .group
            .as_ref()
            .and_then(|g| groups.get(g))
            .and_then(|g| g.group_tpm.map(|t| (g.name.as_str(), t)));
        let mut scopes: Vec<(String, u32, bool)> = Vec::new();
        if let Some(tpm) = key.tpm {
            scopes.push((format!("t:{}", key.name), tpm, true));
        }
        if let Some((name, tpm)) = group {
            scopes.push((format!("gt:{name}"), tpm, false));
        }
        if scopes.is_empty() || estimate <= 0 {
            return Ok(None);
        }
        let now = (self.clock)();
        for (scope, tpm, of_key) in &scopes {
            self.limiter.acquire(scope, *tpm, 0.0, now).map_err(|s| {
                let what = match (of_key, group) {
                    (true, _) | (false, None) => {
                        format!("key `{}`: {tpm} tokens per minute", key.name)
                    }
                    (false, Some((name, _))) => format!("group `{name}`: {tpm} tokens per minute"),
                };
                ProxyError::RateLimited {
                    retry_after: s,
                    what,
                }
            })?;
        }
        let tokens = estimate as f64;
        for (scope, tpm, _) in &scopes {
            self.limiter.charge(scope, *tpm, tokens, now);
        }
        Ok(Some(TokenHold {
            acc: self.clone(),
            scopes: scopes.into_iter().map(|(s, t, _)| (s, t)).collect(),
            tokens,
        }))
    }

    /// Checks a request's model against the key's allowed models.
    pub fn check_model(&self, key: &KeyInfo, model: Option<&str>) -> Result<(), ProxyError> {
        if key.allowed_models.is_empty() {
            return Ok(());
        }
        match model {
            Some(m) if key.allowed_models.iter().any(|a| a == m) => Ok(()),
            m => Err(ProxyError::Forbidden(format!(
                "key `{}` may not use model `{}`",
                key.name,
                m.unwrap_or("(none)")
            ))),
        }
    }

    /// Completion: prices the usage into the record, charges spend and token buckets, and
    /// raises the month's warning alert when the threshold is crossed.
    pub fn settle(
        &self,
        rec: &mut RequestRecord,
        usage: &Usage,
        key_tpm: Option<u32>,
        alert: &dyn Fn(AlertRecord),
    ) {
        let now = (self.clock)();
        let tokens = usage.total_or_sum().unwrap_or(0);
        if tokens > 0 {
            if let (Some(name), Some(tpm)) = (&rec.key_name, key_tpm) {
                self.limiter
                    .charge(&format!("t:{name}"), tpm, tokens as f64, now);
            }
            if let Some(g) = rec
                .group
                .as_ref()
                .and_then(|g| self.groups.load().get(g).cloned())
                && let Some(tpm) = g.group_tpm
            {
                self.limiter
                    .charge(&format!("gt:{}", g.name), tpm, tokens as f64, now);
            }
        }
        if usage.prompt.is_none() && usage.completion.is_none() {
            return;
        }
        let model = rec.model.clone().unwrap_or_default();
        let nano = match self.prices.load().lookup(&model) {
            Some(p) => p.cost_nano_with_writes(
                usage.prompt.unwrap_or(0),
                usage.completion.unwrap_or(0),
                usage.cached.unwrap_or(0),
                usage.cache_write.unwrap_or(0),
            ),
            None => {
                rec.cost_unknown = true;
                0
            }
        };
        rec.cost_usd = Some(usd(nano));
        let Some(group) = rec.group.clone() else {
            return;
        };
        let groups = self.groups.load();
        let Some(g) = groups.get(&group) else { return };
        let (spent, crossed) = {
            let mut map = self.spend.groups.lock().unwrap_or_else(|p| p.into_inner());
            let e = SpendBook::entry(&mut map, &group, now);
            e.nano = e.nano.saturating_add(nano);
            e.pending = e.pending.saturating_add(nano);
            let crossed = match g.budget_nano() {
                // (Past the whole budget already alerted, a warning says nothing new.)
                Some(limit)
                    if e.warned != Some(limit)
                        && e.exceeded != Some(limit)
                        && e.nano.saturating_mul(100)
                            >= limit.saturating_mul(i64::from(g.budget_warn_percent)) =>
                {
                    e.warned = Some(limit);
                    Some(limit)
                }
                _ => None,
            };
            (e.nano, crossed)
        };
        if let Some(limit) = crossed {
            self.budget_alert(g, spent, limit, now, false, alert, rec);
        }
    }

    /// One alert per group and budget period (a month, or from a manual reset) for crossing the
    /// warning threshold, and one for exceeding the budget (deduplicated in memory and by key
    /// in the store).
    #[allow(clippy::too_many_arguments)]
    fn budget_alert(
        &self,
        g: &GroupSpec,
        spent: i64,
        limit: i64,
        now: i64,
        exceeded: bool,
        alert: &dyn Fn(AlertRecord),
        rec: &RequestRecord,
    ) {
        if exceeded {
            let mut map = self.spend.groups.lock().unwrap_or_else(|p| p.into_inner());
            let e = SpendBook::entry(&mut map, &g.name, now);
            if e.exceeded == Some(limit) {
                return;
            }
            e.exceeded = Some(limit);
        }
        let period = self.spend.period(&g.name, now);
        let (kind, title, severity) = if exceeded {
            ("exceeded", "Monthly budget exhausted", "high")
        } else {
            ("warn", "Monthly budget warning threshold crossed", "medium")
        };
        let what = match (exceeded, g.budget_action) {
            (false, _) => format!("past its {}% warning threshold", g.budget_warn_percent),
            (true, BudgetAction::Block) => {
                "exhausted; requests are refused (402) for the rest of the month".into()
            }
            (true, BudgetAction::Warn) => "exhausted; requests are served with a warning".into(),
        };
        alert(AlertRecord {
            id: palisade_core::crypto::record_id(),
            ts_ms: palisade_core::now_ms(),
            kind: "budget".into(),
            title: title.into(),
            category: Some("budget".into()),
            severity: severity.into(),
            proxy: Some(rec.proxy.clone()),
            group: Some(g.name.clone()),
            key_name: rec.key_name.clone(),
            request_id: Some(rec.id.clone()),
            message: format!(
                "group `{}` spent {} of its {} monthly budget: {what}",
                g.name,
                dollars(usd(spent)),
                dollars(usd(limit))
            ),
            status: "new".into(),
            dedup_key: Some(format!("budget-{kind}:{}:{period}:{limit}", g.name)),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_amounts_keep_their_digits() {
        assert_eq!(super::dollars(12.5), "$12.50");
        assert_eq!(super::dollars(0.0), "$0.00");
        assert_eq!(super::dollars(0.005), "$0.005");
        assert_eq!(super::dollars(0.00001), "$0.00001");
        assert_eq!(super::dollars(0.5), "$0.50");
        assert_eq!(super::dollars(0.25), "$0.25");
    }

    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    fn key(rpm: Option<u32>) -> KeyInfo {
        KeyInfo {
            id: "k1".into(),
            name: "ci".into(),
            group: Some("eng".into()),
            rpm,
            ..Default::default()
        }
    }

    #[test]
    fn shared_buckets_follow_the_shared_level_and_forget_an_outage() {
        let acc = Accounting {
            clock: Arc::new(|| 1_000_000),
            ..Default::default()
        };
        let rec = RequestRecord::default();
        let ci = key(Some(6));
        for _ in 0..2 {
            acc.admit(&ci, "p", &|_| {}, &rec).unwrap();
        }
        let sent = acc.limiter.take_pending(1_000_000, 100);
        assert_eq!(sent, vec![("k:ci".to_string(), 6, 2.0)]);
        // Taken meanwhile here, and 3 elsewhere: the bucket is the shared level less this one.
        acc.admit(&ci, "p", &|_| {}, &rec).unwrap();
        acc.limiter
            .apply_shared(&[("k:ci".to_string(), Some(1.0))], 1_000_000);
        assert!(acc.admit(&ci, "p", &|_| {}, &rec).is_err());
        // A level below minus the limit (a flood elsewhere) is held there.
        acc.limiter
            .apply_shared(&[("k:ci".to_string(), Some(-50.0))], 1_000_000);
        let sent = acc.limiter.take_pending(1_000_000, 100);
        assert_eq!(sent[0].2, 1.0);
        acc.limiter.discard_pending();
        assert!(acc.limiter.take_pending(1_000_000, 100)[0].2 == 0.0);
        let map = acc.limiter.buckets.lock().unwrap();
        assert_eq!(map["k:ci"].tokens, -6.0);
    }

    #[test]
    fn buckets_past_the_exchange_size_are_sent_in_turn() {
        let acc = Accounting {
            clock: Arc::new(|| 1_000_000),
            ..Default::default()
        };
        let rec = RequestRecord::default();
        for name in ["a", "b", "c"] {
            let k = KeyInfo {
                name: name.into(),
                ..key(Some(60))
            };
            acc.admit(&k, "p", &|_| {}, &rec).unwrap();
        }
        let first: Vec<String> = acc
            .limiter
            .take_pending(2_000_000, 2)
            .into_iter()
            .map(|(s, ..)| s)
            .collect();
        assert_eq!(first.len(), 2);
        let second = acc.limiter.take_pending(2_000_001, 2);
        // The one left out goes first, with its units.
        assert!(!first.contains(&second[0].0), "{first:?} {second:?}");
        assert_eq!(second[0].2, 1.0);
    }

    #[test]
    fn rpm_limits_and_refills() {
        let acc = Accounting::default();
        let now = Arc::new(AtomicI64::new(1_000_000));
        let n = now.clone();
        let acc = Accounting {
            clock: Arc::new(move || n.load(Ordering::SeqCst)),
            ..acc
        };
        let rec = RequestRecord::default();
        for _ in 0..3 {
            acc.admit(&key(Some(3)), "p", &|_| {}, &rec).unwrap();
        }
        match acc.admit(&key(Some(3)), "p", &|_| {}, &rec) {
            Err(ProxyError::RateLimited { retry_after, .. }) => {
                assert!((1..=20).contains(&retry_after))
            }
            other => panic!("expected 429, got {other:?}"),
        }
        now.fetch_add(20_000, Ordering::SeqCst);
        acc.admit(&key(Some(3)), "p", &|_| {}, &rec).unwrap();
        // Another key is unaffected.
        let other = KeyInfo {
            id: "k2".into(),
            name: "batch".into(),
            ..key(Some(3))
        };
        acc.admit(&other, "p", &|_| {}, &rec).unwrap();
    }

    #[test]
    fn a_request_refused_by_one_limit_uses_up_none_of_the_others() {
        let acc = Accounting {
            clock: Arc::new(|| 1_000_000),
            ..Default::default()
        };
        let spec = |name: &str, rpm: Option<u32>| -> palisade_core::model::ProxySpec {
            serde_json::from_value(serde_json::json!({
                "name": name, "kind": "llm", "listen": "127.0.0.1:0",
                "upstream": "http://127.0.0.1:9", "requests_per_minute": rpm
            }))
            .unwrap()
        };
        let (limited, open) = (spec("limited", Some(1)), spec("open", None));
        let rec = RequestRecord::default();
        // The key may make two requests a minute, the proxy `limited` take one.
        acc.admit_on(&key(Some(2)), &limited, &|_| {}, &rec)
            .unwrap();
        match acc.admit_on(&key(Some(2)), &limited, &|_| {}, &rec) {
            Err(ProxyError::RateLimited { what, .. }) => assert!(what.contains("proxy"), "{what}"),
            other => panic!("expected the proxy's 429, got {other:?}"),
        }
        // The refused request did not take the key's second request.
        acc.admit_on(&key(Some(2)), &open, &|_| {}, &rec).unwrap();
        match acc.admit_on(&key(Some(2)), &open, &|_| {}, &rec) {
            Err(ProxyError::RateLimited { what, .. }) => assert!(what.contains("key"), "{what}"),
            other => panic!("expected the key's 429, got {other:?}"),
        }
    }

    #[test]
    fn spend_rolls_over_with_the_month_and_alerts_once() {
        let now = Arc::new(AtomicI64::new(1_795_622_400_000)); // 2026-11-25
        let n = now.clone();
        let acc = Accounting {
            clock: Arc::new(move || n.load(Ordering::SeqCst)),
            ..Default::default()
        };
        let mut g = GroupSpec::named("eng");
        g.monthly_budget_usd = Some(1.0);
        acc.groups
            .store(Arc::new([("eng".to_string(), g)].into_iter().collect()));
        acc.prices
            .store(Arc::new(PriceTable::new([palisade_core::spend::Price {
                model: "m".into(),
                input_per_mtok: 100_000.0,
                output_per_mtok: 0.0,
                cached_input_per_mtok: None,
                cache_write_per_mtok: None,
            }])));
        let alerts = Mutex::new(Vec::new());
        let push = |a: AlertRecord| alerts.lock().unwrap().push(a);
        let usage = Usage {
            prompt: Some(3),
            completion: Some(0),
            ..Default::default()
        }; // $0.30
        // One $0.30 request of the group, admitted and settled.
        let spend = || {
            let mut rec = RequestRecord {
                group: Some("eng".into()),
                model: Some("m".into()),
                ..Default::default()
            };
            acc.admit(&key(None), "p", &push, &rec).unwrap();
            acc.settle(&mut rec, &usage, None, &push);
            assert_eq!(rec.cost_usd, Some(0.3));
        };
        for _ in 0..4 {
            spend();
        }
        assert_eq!(
            acc.spend.spent("eng", now.load(Ordering::SeqCst)),
            1_200_000_000
        );
        let warns = alerts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| {
                a.dedup_key
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("budget-warn")
            })
            .count();
        assert_eq!(warns, 1, "one warning per month");
        let rec = RequestRecord::default();
        assert!(matches!(
            acc.admit(&key(None), "p", &push, &rec),
            Err(ProxyError::BudgetExceeded(_))
        ));
        assert!(matches!(
            acc.admit(&key(None), "p", &push, &rec),
            Err(ProxyError::BudgetExceeded(_))
        ));
        let exceeded = alerts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.title.contains("exhausted"))
            .count();
        assert_eq!(exceeded, 1);
        // A raised budget alerts again at its own marks.
        let mut raised = GroupSpec::named("eng");
        raised.monthly_budget_usd = Some(2.0);
        acc.groups.store(Arc::new(
            [("eng".to_string(), raised)].into_iter().collect(),
        ));
        for _ in 0..3 {
            spend();
        }
        let _ = acc.admit(&key(None), "p", &push, &rec);
        let titles: Vec<String> = alerts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.title.clone())
            .collect();
        assert_eq!(
            titles.iter().filter(|t| t.contains("warning")).count(),
            2,
            "{titles:?}"
        );
        assert_eq!(
            titles.iter().filter(|t| t.contains("exhausted")).count(),
            2,
            "{titles:?}"
        );
        // Seeded after a restart past both marks: nothing is raised again.
        let t = now.load(Ordering::SeqCst);
        acc.spend
            .set("eng", 2_100_000_000, 0, t, Some((2_000_000_000, 80)));
        let _ = acc.admit(&key(None), "p", &push, &rec);
        assert_eq!(alerts.lock().unwrap().len(), 4);
        // 2026-12-01: a new month, spend is zero again.
        now.store(1_796_083_200_000, Ordering::SeqCst);
        assert_eq!(month_key(now.load(Ordering::SeqCst)), 202612);
        acc.admit(&key(None), "p", &push, &rec).unwrap();
        assert_eq!(acc.spend.spent("eng", now.load(Ordering::SeqCst)), 0);
    }

    #[test]
    fn concurrent_requests_hold_their_estimated_tokens() {
        let now = Arc::new(AtomicI64::new(1_000_000));
        let n = now.clone();
        let acc = Arc::new(Accounting {
            clock: Arc::new(move || n.load(Ordering::SeqCst)),
            ..Default::default()
        });
        let k = KeyInfo {
            tpm: Some(2000),
            ..key(None)
        };
        // Four requests of ~500 tokens sent at once use the minute's 2 000; the fifth waits.
        let holds: Vec<TokenHold> = (0..4)
            .map(|_| acc.hold_tokens(&k, 500).unwrap().expect("held"))
            .collect();
        assert!(matches!(
            acc.hold_tokens(&k, 500),
            Err(ProxyError::RateLimited { .. })
        ));
        // Answered with 100 tokens each: the real counts are charged, the estimates given back.
        for h in holds {
            let mut rec = RequestRecord {
                key_name: Some("ci".into()),
                ..Default::default()
            };
            let usage = Usage {
                prompt: Some(60),
                completion: Some(40),
                ..Default::default()
            };
            acc.settle(&mut rec, &usage, k.tpm, &|_| {});
            drop(h);
        }
        assert!(acc.hold_tokens(&k, 1500).unwrap().is_some());
        // A key without a limit holds nothing.
        assert!(acc.hold_tokens(&key(None), 500).unwrap().is_none());
    }

    #[test]
    fn key_scope_is_enforced() {
        let acc = Accounting::default();
        let k = KeyInfo {
            allowed_proxies: vec!["a".into()],
            allowed_models: vec!["m1".into()],
            ..key(None)
        };
        let rec = RequestRecord::default();
        assert!(acc.admit(&k, "a", &|_| {}, &rec).is_ok());
        assert!(matches!(
            acc.admit(&k, "b", &|_| {}, &rec),
            Err(ProxyError::Forbidden(_))
        ));
        assert!(acc.check_model(&k, Some("m1")).is_ok());
        assert!(acc.check_model(&k, Some("m2")).is_err());
    }
}
