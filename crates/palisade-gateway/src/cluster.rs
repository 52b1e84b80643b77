//! Rate limits and group spend shared by several gateway nodes through Redis.
//!
//! A request never waits for Redis: each node admits from its own buckets and spend book, as a
//! single node does. Every `interval` a background task sends, in one atomic script call, what
//! this node took from its buckets and charged each group since the last exchange, and reads
//! back the shared figures:
//!
//! - a bucket is a hash (`tokens`, `at`) refilled by Redis's clock and never below minus its
//!   limit; the node's bucket becomes the shared level less what it took while the exchange
//!   was in flight;
//! - a group's month is a counter of nano-dollars; it starts at the node's own figure (its
//!   request log at the first exchange, the total it last saw later, so a Redis restarted empty
//!   is filled again) unless present; a reset by hand sets it to what was charged since, and
//!   the other nodes see their total fall and start the period again;
//! - each exchange is numbered, and Redis keeps the last number it applied for each node: an
//!   exchange whose answer was lost is sent again as it was, and applied once.
//!
//! Between exchanges every node may admit what the shared bucket held at the last one. When
//! Redis cannot be reached every node enforces its own figures; the spend charged meanwhile is
//! sent later, the buckets' units are dropped (each node enforced the whole limit alone). The
//! failure is logged once per outage and counted in [`ClusterStatus`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::accounting::{Accounting, SpendPush, SpendSent};
use crate::resp::{Conn, RedisUrl, Reply};

/// One exchange, applied atomically and at most once: `KEYS[1]` holds the last batch number
/// this node had applied (a batch sent again after its answer was lost is not counted twice);
/// then the buckets (a hash `tokens`, `at`: refilled by the server's clock, taken from, never
/// below minus the limit) and the groups' month counters (`S`: started at the given figure if
/// absent, then added to; `R`: reset to what was charged since). `ARGV`: batch number, bucket
/// count, group count, each bucket's limit and units, each group's kind, start figure and
/// nano-dollars. Answers whether the batch was applied now, each bucket's level (a string:
/// Lua numbers become integers) and each group's total; `nil` for a key Redis could not use
/// (another type), which leaves the others counted.
const EXCHANGE_SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local seq = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local ng = tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local apply = seq > last
if apply then redis.call('SET', KEYS[1], ARGV[1], 'PX', 3456000000) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {apply and 1 or 0}
for i = 1, nb do
  local key = KEYS[1 + i]
  local limit = tonumber(ARGV[2 + 2 * i])
  local take = 0
  if apply then take = tonumber(ARGV[3 + 2 * i]) end
  local v = redis.pcall('HMGET', key, 'tokens', 'at')
  if v.err then
    out[#out + 1] = false
  else
    local tokens = tonumber(v[1])
    local at = tonumber(v[2])
    if tokens == nil or at == nil then
      tokens = limit
      at = now
    end
    if now > at then tokens = math.min(limit, tokens + (now - at) * limit / 60000) end
    tokens = math.max(-limit, math.min(limit, tokens - take))
    redis.pcall('HSET', key, 'tokens', tostring(tokens), 'at', tostring(now))
    redis.pcall('PEXPIRE', key, 180000)
    out[#out + 1] = tostring(tokens)
  end
end
local first = 4 + 2 * nb
for j = 1, ng do
  local key = KEYS[1 + nb + j]
  local kind = ARGV[first + 3 * (j - 1)]
  local start = ARGV[first + 3 * (j - 1) + 1]
  local nano = '0'
  if apply then nano = ARGV[first + 3 * (j - 1) + 2] end
  local total
  if kind == 'R' and apply then
    local r = redis.pcall('SET', key, nano, 'PX', 3456000000)
    if not r.err then total = tonumber(nano) end
  elseif kind == 'R' then
    local r = redis.pcall('GET', key)
    if type(r) ~= 'table' then total = tonumber(r) or 0 end
  else
    redis.pcall('SET', key, start, 'NX', 'PX', 3456000000)
    local r = redis.pcall('INCRBY', key, nano)
    if type(r) == 'number' then total = r end
  end
  out[#out + 1] = total or false
end
return out
";

/// Buckets sent in one exchange at most (the others wait for the next).
const MAX_BUCKETS: usize = 5_000;
/// Longest wait between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How the shared counters are reached.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: RedisUrl,
    /// Time between exchanges.
    pub interval: Duration,
    /// Prefix of every Redis key (`palisade:` by default): gateways of separate deployments
    /// sharing one Redis keep apart by it, or by the URL's database number.
    pub prefix: String,
    /// TLS settings for a `rediss://` URL ([`crate::TlsSource`]: a renewed client certificate
    /// is used from the next connection on).
    pub tls: Option<Arc<crate::TlsSource>>,
}

/// The exchanges' health, for metrics.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// Counters are shared (a Redis URL is configured).
    pub enabled: AtomicBool,
    /// The exchange task runs and its last exchange succeeded.
    pub up: AtomicBool,
    /// Exchanges that failed (connection, timeout, Redis's error).
    pub failures: AtomicU64,
    /// Exchanges that succeeded.
    pub exchanges: AtomicU64,
    /// Unix ms of the last successful exchange (0: none yet).
    pub last_ok_ms: AtomicI64,
}

/// One exchange's content, kept until Redis has answered it.
struct Batch {
    seq: u64,
    buckets: Vec<(String, u32, f64)>,
    spend: Vec<SpendSent>,
}

/// The script call of a batch.
fn command(prefix: &str, node: &str, b: &Batch) -> Vec<Vec<u8>> {
    let mut keys = vec![format!("{prefix}node:{node}").into_bytes()];
    let mut args = vec![
        b.seq.to_string().into_bytes(),
        b.buckets.len().to_string().into_bytes(),
        b.spend.len().to_string().into_bytes(),
    ];
    for (scope, limit, units) in &b.buckets {
        keys.push(format!("{prefix}rl:{scope}").into_bytes());
        args.push(limit.to_string().into_bytes());
        args.push(format!("{units}").into_bytes());
    }
    for (group, month, nano, push) in &b.spend {
        keys.push(format!("{prefix}spend:{group}:{month}").into_bytes());
        let (kind, start) = match push {
            SpendPush::Reset => ("R", 0),
            SpendPush::Seed(start) => ("S", *start),
        };
        args.push(kind.into());
        args.push(start.to_string().into_bytes());
        args.push(nano.to_string().into_bytes());
    }
    let mut cmd = vec![
        b"EVAL".to_vec(),
        EXCHANGE_SCRIPT.as_bytes().to_vec(),
        keys.len().to_string().into_bytes(),
    ];
    cmd.extend(keys);
    cmd.extend(args);
    cmd
}

/// What an exchange brought back: each bucket's shared level, each group's shared total
/// (none: Redis could not count that one).
type Shared = (Vec<(String, Option<f64>)>, Vec<Option<i64>>);

/// Reads the script's answer to a batch.
fn read_reply(b: &Batch, reply: &Reply) -> Result<Shared, String> {
    let items = match reply {
        Reply::Array(Some(items)) if items.len() == 1 + b.buckets.len() + b.spend.len() => items,
        Reply::Error(e) => return Err(format!("Redis refused the exchange: {e}")),
        other => return Err(format!("unexpected answer to the exchange: {other:?}")),
    };
    let levels = b
        .buckets
        .iter()
        .zip(&items[1..])
        .map(|((scope, _, _), item)| (scope.clone(), item.number().filter(|l| l.is_finite())))
        .collect();
    let totals = items[1 + b.buckets.len()..]
        .iter()
        .map(|item| match item {
            Reply::Int(t) => Some(*t),
            _ => None,
        })
        .collect();
    Ok((levels, totals))
}

/// The exchange task's state.
struct Exchanger {
    acc: Arc<Accounting>,
    cfg: ClusterConfig,
    /// This process's name in Redis (its batch numbers are its own).
    node: String,
    seq: u64,
    conn: Option<Conn>,
    /// A batch sent whose answer did not arrive: sent again, as it is, before anything new.
    unanswered: Option<Batch>,
    /// An exchange failed since the last new batch: the buckets' units taken meanwhile are
    /// dropped (see [`crate::accounting::RateLimiter::discard_pending`]).
    missed: bool,
    /// Redis could not use some of the keys at the last exchange (logged when it starts).
    partial: bool,
}

impl Exchanger {
    fn next_batch(&mut self) -> Batch {
        if let Some(b) = self.unanswered.take() {
            return b;
        }
        if std::mem::take(&mut self.missed) {
            self.acc.limiter.discard_pending();
        }
        let now = (self.acc.clock)();
        let groups: Vec<String> = self.acc.groups.load().keys().cloned().collect();
        self.seq += 1;
        Batch {
            seq: self.seq,
            buckets: self.acc.limiter.take_pending(now, MAX_BUCKETS),
            spend: self.acc.spend.take_pending(&groups, now),
        }
    }

    /// One exchange; a batch whose answer did not arrive is kept to be sent again. Tells
    /// whether it sent such a batch again (what was charged since is still to send).
    async fn exchange(&mut self, timeout: Duration) -> Result<bool, String> {
        if self.conn.is_none() {
            let tls = self.cfg.tls.as_ref().map(|t| t.current());
            self.conn = Some(Conn::connect(&self.cfg.url, timeout, tls.as_ref()).await?);
        }
        let again = self.unanswered.is_some();
        let batch = self.next_batch();
        let cmd = command(&self.cfg.prefix, &self.node, &batch);
        let sent = match self.conn.as_mut() {
            Some(conn) => conn.run(std::slice::from_ref(&cmd)).await,
            None => Err("no connection".to_string()),
        };
        let outcome = match sent {
            Ok(replies) => read_reply(&batch, &replies[0]),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((levels, totals)) => {
                let now = (self.acc.clock)();
                self.acc.limiter.apply_shared(&levels, now);
                self.acc.spend.apply_shared(&batch.spend, &totals, now);
                let partial =
                    levels.iter().any(|(_, l)| l.is_none()) || totals.iter().any(Option::is_none);
                if partial && !self.partial {
                    tracing::warn!(
                        "shared counters: Redis could not use some of the gateway's keys \
                         (another type under the same name?); those are counted on this node only"
                    );
                }
                self.partial = partial;
                Ok(again)
            }
            Err(e) => {
                self.conn = None;
                self.unanswered = Some(batch);
                Err(e)
            }
        }
    }
}

/// Marks the exchanges down when the task ends, however it ends.
struct Down(Arc<ClusterStatus>);

impl Drop for Down {
    fn drop(&mut self) {
        self.0.up.store(false, Ordering::Relaxed);
    }
}

/// Exchanges with Redis every `cfg.interval` until `stop` turns true, then once more (what
/// was charged since the last exchange is not left behind).
pub async fn run(
    acc: Arc<Accounting>,
    cfg: ClusterConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let status = acc.cluster.clone();
    status.enabled.store(true, Ordering::Relaxed);
    let _down = Down(status.clone());
    let timeout = Duration::from_secs(2).max(cfg.interval);
    let url = cfg.url.clone();
    let interval = cfg.interval;
    let mut ex = Exchanger {
        acc,
        cfg,
        node: palisade_core::crypto::random_token(12),
        seq: 0,
        conn: None,
        unanswered: None,
        missed: false,
        partial: false,
    };
    let mut backoff = interval;
    let mut failing = false;
    loop {
        let last = tokio::select! {
            () = tokio::time::sleep(backoff) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        // (Not cut short from outside: a batch taken is either answered or kept; the connection
        // and each round trip have their own time limits.)
        let mut outcome = ex.exchange(timeout).await;
        if last && outcome == Ok(true) {
            // The last round sent a batch again: what was charged since goes too.
            outcome = ex.exchange(timeout).await.map(|_| false);
        }
        match outcome {
            Ok(_) => {
                if failing {
                    tracing::info!(redis = %url, "shared counters: Redis reachable again");
                }
                failing = false;
                backoff = interval;
                status.up.store(true, Ordering::Relaxed);
                status.exchanges.fetch_add(1, Ordering::Relaxed);
                status
                    .last_ok_ms
                    .store(palisade_core::now_ms(), Ordering::Relaxed);
            }
            Err(e) => {
                // Whatever failed (even the first connection), the units taken until the next
                // exchange are this node's alone.
                ex.missed = true;
                status.up.store(false, Ordering::Relaxed);
                status.failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::error!(
                        redis = %url,
                        error = %e,
                        "shared counters: exchange with Redis failed; this node enforces its own \
                         rate limits and budgets until Redis answers again"
                    );
                }
                failing = true;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            seq: 7,
            buckets: vec![("k:ci".into(), 60, 1.0), ("g:eng".into(), 600, 0.0)],
            spend: vec![
                ("eng".into(), 202611, 500, SpendPush::Seed(1_000)),
                ("ml".into(), 202611, 7, SpendPush::Reset),
            ],
        }
    }

    #[test]
    fn a_batch_is_one_script_call_with_its_number_and_every_figure() {
        let b = batch();
        let cmd = command("palisade:", "n1", &b);
        let text: Vec<String> = cmd
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(text[0], "EVAL");
        assert_eq!(text[2], "5");
        assert_eq!(
            &text[3..8],
            [
                "palisade:node:n1",
                "palisade:rl:k:ci",
                "palisade:rl:g:eng",
                "palisade:spend:eng:202611",
                "palisade:spend:ml:202611"
            ]
        );
        assert_eq!(
            &text[8..],
            [
                "7", "2", "2", "60", "1", "600", "0", "S", "1000", "500", "R", "0", "7"
            ]
        );
        let reply = Reply::Array(Some(vec![
            Reply::Int(1),
            Reply::Bulk(Some(b"59.5".to_vec())),
            Reply::Bulk(None),
            Reply::Int(1_700),
            Reply::Bulk(None),
        ]));
        let (levels, totals) = read_reply(&b, &reply).unwrap();
        assert_eq!(
            levels,
            vec![
                ("k:ci".to_string(), Some(59.5)),
                ("g:eng".to_string(), None)
            ]
        );
        assert_eq!(totals, vec![Some(1_700), None]);
        assert!(read_reply(&b, &Reply::Error("NOSCRIPT".into())).is_err());
        assert!(read_reply(&b, &Reply::Array(Some(vec![Reply::Int(1)]))).is_err());
    }

    #[test]
    fn spend_exchanges_resend_what_redis_could_not_count_and_see_resets_made_elsewhere() {
        let acc = Accounting::default();
        let now = palisade_core::now_ms();
        acc.spend.set("eng", 1_000, 0, now, None);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Seed(1_000));
        // Another node had started the month at 5 000: this node's figure follows it.
        acc.spend.apply_shared(&sent, &[Some(5_000)], now);
        assert_eq!(acc.spend.spent("eng", now), 5_000);
        // A reset whose counter Redis could not write is sent again.
        acc.spend.reset("eng", now);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Reset);
        acc.spend.apply_shared(&sent, &[None], now);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Reset);
        acc.spend.apply_shared(&sent, &[Some(0)], now);
        // Spent elsewhere meanwhile: seen at the next exchange; a figure out of range is not.
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Seed(0));
        acc.spend.apply_shared(&sent, &[Some(2_500)], now);
        assert_eq!(acc.spend.spent("eng", now), 2_500);
        let sent = acc.spend.take_pending(&[], now);
        acc.spend.apply_shared(&sent, &[Some(-4)], now);
        acc.spend.apply_shared(&sent, &[Some(i64::MAX)], now);
        assert_eq!(acc.spend.spent("eng", now), 2_500);
        // A reset made here while an exchange was under way is not undone by its answer.
        let sent = acc.spend.take_pending(&[], now);
        acc.spend.reset("eng", now);
        acc.spend.apply_shared(&sent, &[Some(2_500)], now);
        assert_eq!(acc.spend.spent("eng", now), 0);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Reset);
        acc.spend.apply_shared(&sent, &[Some(0)], now);
        // The total fell: reset on another node, the period starts again here.
        acc.spend
            .apply_shared(&acc.spend.take_pending(&[], now), &[Some(900)], now);
        let sent = acc.spend.take_pending(&[], now);
        acc.spend.apply_shared(&sent, &[Some(10)], now + 5);
        assert_eq!(acc.spend.spent("eng", now), 10);
        assert_eq!(acc.spend.period("eng", now + 5), now + 5);
        // Known groups are exchanged before this node charged them.
        let sent = acc.spend.take_pending(&["ops".to_string()], now);
        assert!(sent.iter().any(|(g, ..)| g == "ops"));
    }
}
