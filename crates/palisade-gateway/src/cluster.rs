//! Rate limits and group spend shared by several gateway nodes through Redis.
//!
//! A request never waits for Redis: each node admits from its own buckets and spend book, as a
//! single node does. Every `interval` a background task sends what this node took from each
//! bucket in use and what it charged each group since the last exchange, and reads back the
//! shared figures in the same round trip:
//!
//! - a bucket is a hash (`tokens`, `at`) that one Lua script refills by Redis's clock, takes the
//!   nodes' units from and returns, all buckets of an exchange in one atomic call; the node's
//!   bucket becomes the shared level less what it took while the exchange was in flight;
//! - a group's month is a counter of nano-dollars (`INCRBY`); the first exchange starts it from
//!   the node's own figure (its request log) unless another node started it already, later ones
//!   from the total the node last saw (so a Redis restarted empty is filled again); a reset by
//!   hand sets it to what was charged since, and the other nodes see their total fall and start
//!   the period again.
//!
//! So nodes overshoot a shared limit by at most what the others admit in one interval. When
//! Redis cannot be reached every node keeps enforcing its own figures, keeps what it took to
//! send later, and tries again (with back-off); the failure is logged once per outage and
//! counted in [`ClusterStatus`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::accounting::{Accounting, SpendPush, SpendSent};
use crate::resp::{Conn, RedisUrl, Reply};

/// Refills, takes from and returns the buckets named by `KEYS` (`ARGV`: limit and units taken
/// for each), by the server's clock; levels are returned as strings (Lua numbers would be
/// truncated to integers).
const BUCKETS_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local take = tonumber(ARGV[2 * i])
  local v = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local tokens = tonumber(v[1])
  local at = tonumber(v[2])
  if tokens == nil or at == nil then
    tokens = limit
    at = now
  end
  if now > at then
    tokens = math.min(limit, tokens + (now - at) * limit / 60000)
  end
  tokens = math.min(limit, tokens - take)
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[i], 180000)
  out[i] = tostring(tokens)
end
return out
";

/// Buckets per script call (bounds one command's size).
const BUCKETS_PER_CALL: usize = 500;
/// A month's spend counter outlives its month by a few days, then expires.
const SPEND_TTL_MS: &str = "3456000000";
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
}

/// The exchanges' health, for metrics.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    /// Counters are shared (a Redis URL is configured).
    pub enabled: AtomicBool,
    /// Connected and the last exchange succeeded.
    pub up: AtomicBool,
    /// Exchanges that failed (connection, timeout, Redis's error).
    pub failures: AtomicU64,
    /// Exchanges that succeeded.
    pub exchanges: AtomicU64,
    /// Unix ms of the last successful exchange (0: none yet).
    pub last_ok_ms: AtomicI64,
}

fn cmd(args: &[&[u8]]) -> Vec<Vec<u8>> {
    args.iter().map(|a| a.to_vec()).collect()
}

/// The commands of one exchange and where each figure's reply is.
fn commands(
    prefix: &str,
    buckets: &[(String, u32, f64)],
    spend: &[SpendSent],
) -> (Vec<Vec<Vec<u8>>>, Vec<usize>) {
    let mut cmds = Vec::new();
    for chunk in buckets.chunks(BUCKETS_PER_CALL) {
        let mut c = vec![
            b"EVAL".to_vec(),
            BUCKETS_SCRIPT.as_bytes().to_vec(),
            chunk.len().to_string().into_bytes(),
        ];
        c.extend(
            chunk
                .iter()
                .map(|(scope, _, _)| format!("{prefix}rl:{scope}").into_bytes()),
        );
        for (_, limit, units) in chunk {
            c.push(limit.to_string().into_bytes());
            c.push(format!("{units}").into_bytes());
        }
        cmds.push(c);
    }
    let mut totals = Vec::with_capacity(spend.len());
    for (group, month, nano, push) in spend {
        let key = format!("{prefix}spend:{group}:{month}");
        let k = key.as_bytes();
        let n = nano.to_string();
        match push {
            SpendPush::Reset => {
                totals.push(cmds.len());
                cmds.push(cmd(&[
                    b"SET",
                    k,
                    n.as_bytes(),
                    b"PX",
                    SPEND_TTL_MS.as_bytes(),
                ]));
            }
            SpendPush::Seed(start) => {
                let s = start.to_string();
                cmds.push(cmd(&[
                    b"SET",
                    k,
                    s.as_bytes(),
                    b"NX",
                    b"PX",
                    SPEND_TTL_MS.as_bytes(),
                ]));
                totals.push(cmds.len());
                cmds.push(cmd(&[b"INCRBY", k, n.as_bytes()]));
            }
        }
    }
    (cmds, totals)
}

/// What an exchange brought back: each bucket's shared level, each group's shared total.
type Shared = (Vec<(String, f64)>, Vec<i64>);

/// Reads the exchange's replies: each bucket's level, each group's total.
fn read_replies(
    buckets: &[(String, u32, f64)],
    spend: &[SpendSent],
    replies: &[Reply],
    totals_at: &[usize],
) -> Result<Shared, String> {
    if let Some(Reply::Error(e)) = replies.iter().find(|r| matches!(r, Reply::Error(_))) {
        return Err(format!("Redis refused the exchange: {e}"));
    }
    let mut levels = Vec::with_capacity(buckets.len());
    for (chunk, reply) in buckets.chunks(BUCKETS_PER_CALL).zip(replies) {
        let Reply::Array(Some(items)) = reply else {
            return Err(format!("unexpected reply to the bucket script: {reply:?}"));
        };
        if items.len() != chunk.len() {
            return Err("the bucket script answered for fewer buckets than it was given".into());
        }
        for ((scope, _, _), item) in chunk.iter().zip(items) {
            let level = item
                .number()
                .filter(|l| l.is_finite())
                .ok_or_else(|| format!("unexpected bucket level {item:?}"))?;
            levels.push((scope.clone(), level));
        }
    }
    let mut totals = Vec::with_capacity(spend.len());
    for ((_, _, nano, push), &at) in spend.iter().zip(totals_at) {
        let total = match (push, replies.get(at)) {
            (SpendPush::Reset, Some(Reply::Status(_))) => *nano,
            (_, Some(Reply::Int(t))) => *t,
            (_, other) => return Err(format!("unexpected reply to a spend counter: {other:?}")),
        };
        totals.push(total);
    }
    Ok((levels, totals))
}

/// One exchange over `conn`; what it carried is kept for the next one when it fails.
async fn exchange(conn: &mut Conn, acc: &Accounting, prefix: &str) -> Result<(), String> {
    let now = (acc.clock)();
    let buckets = acc.limiter.take_pending(now);
    let groups: Vec<String> = acc.groups.load().keys().cloned().collect();
    let spend = acc.spend.take_pending(&groups, now);
    if buckets.is_empty() && spend.is_empty() {
        return Ok(());
    }
    let (cmds, totals_at) = commands(prefix, &buckets, &spend);
    let outcome = match conn.run(&cmds).await {
        Ok(replies) => read_replies(&buckets, &spend, &replies, &totals_at),
        Err(e) => Err(e),
    };
    let now = (acc.clock)();
    match outcome {
        Ok((levels, totals)) => {
            acc.limiter.apply_shared(&levels, now);
            acc.spend.apply_shared(&spend, &totals, now);
            Ok(())
        }
        Err(e) => {
            // A batch Redis applied but whose answer was lost is sent again: the nodes then
            // count it twice, erring on the side of the limit.
            acc.limiter.restore_pending(&buckets);
            acc.spend.restore_pending(&spend, now);
            Err(e)
        }
    }
}

/// Exchanges with Redis every `cfg.interval` until the process ends.
pub async fn run(acc: Arc<Accounting>, cfg: ClusterConfig) {
    let status = acc.cluster.clone();
    status.enabled.store(true, Ordering::Relaxed);
    let timeout = Duration::from_secs(2).max(cfg.interval);
    let mut conn: Option<Conn> = None;
    let mut backoff = cfg.interval;
    let mut failing = false;
    loop {
        tokio::time::sleep(backoff).await;
        let attempt = async {
            if conn.is_none() {
                conn = Some(Conn::connect(&cfg.url, timeout).await?);
            }
            match conn.as_mut() {
                Some(c) => exchange(c, &acc, &cfg.prefix).await,
                None => Ok(()),
            }
        }
        .await;
        match attempt {
            Ok(()) => {
                if failing {
                    tracing::info!(redis = %cfg.url, "shared counters: Redis reachable again");
                }
                failing = false;
                backoff = cfg.interval;
                status.up.store(true, Ordering::Relaxed);
                status.exchanges.fetch_add(1, Ordering::Relaxed);
                status
                    .last_ok_ms
                    .store(palisade_core::now_ms(), Ordering::Relaxed);
            }
            Err(e) => {
                conn = None;
                status.up.store(false, Ordering::Relaxed);
                status.failures.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::error!(
                        redis = %cfg.url,
                        error = %e,
                        "shared counters: exchange with Redis failed; this node enforces its own \
                         rate limits and budgets until Redis answers again"
                    );
                }
                failing = true;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_is_one_script_call_per_500_buckets_and_a_command_per_counter() {
        let buckets: Vec<(String, u32, f64)> =
            (0..501).map(|i| (format!("k:key{i}"), 60, 1.0)).collect();
        let spend = vec![
            ("eng".to_string(), 202611, 500, SpendPush::Seed(1_000)),
            ("ops".to_string(), 202611, 0, SpendPush::Seed(80)),
            ("ml".to_string(), 202611, 7, SpendPush::Reset),
        ];
        let (cmds, at) = commands("palisade:", &buckets, &spend);
        assert_eq!(cmds.len(), 2 + 2 + 2 + 1);
        assert_eq!(cmds[4][2], b"80");
        assert_eq!(cmds[0][2], b"500");
        assert_eq!(cmds[0][3], b"palisade:rl:k:key0");
        assert_eq!(cmds[1][2], b"1");
        assert_eq!(cmds[2][0], b"SET");
        assert_eq!(cmds[2][3], b"NX");
        assert_eq!(
            cmds[3],
            cmd(&[b"INCRBY", b"palisade:spend:eng:202611", b"500"])
        );
        assert_eq!(at, vec![3, 5, 6]);
        let replies = vec![
            Reply::Array(Some(vec![Reply::Bulk(Some(b"59.5".to_vec())); 500])),
            Reply::Array(Some(vec![Reply::Bulk(Some(b"-2".to_vec()))])),
            Reply::Bulk(None),
            Reply::Int(1_700),
            Reply::Status("OK".into()),
            Reply::Int(90),
            Reply::Status("OK".into()),
        ];
        let (levels, totals) = read_replies(&buckets, &spend, &replies, &at).unwrap();
        assert_eq!(levels.len(), 501);
        assert_eq!(levels[0].1, 59.5);
        assert_eq!(levels[500], ("k:key500".to_string(), -2.0));
        assert_eq!(totals, vec![1_700, 90, 7]);
        let mut refused = replies.clone();
        refused[5] = Reply::Error("WRONGTYPE".into());
        assert!(read_replies(&buckets, &spend, &refused, &at).is_err());
        let mut short = replies;
        short[1] = Reply::Array(Some(vec![]));
        assert!(read_replies(&buckets, &spend, &short, &at).is_err());
    }

    #[test]
    fn spend_exchanges_keep_what_failed_and_see_resets_made_elsewhere() {
        let acc = Accounting::default();
        let now = palisade_core::now_ms();
        acc.spend.set("eng", 1_000, 0, now, None);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Seed(1_000));
        // Another node had started the month at 5 000: this node's figure follows it.
        acc.spend.apply_shared(&sent, &[5_000], now);
        assert_eq!(acc.spend.spent("eng", now), 5_000);
        // A failed exchange keeps the reset and the spend for the next one.
        acc.spend.reset("eng", now);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Reset);
        acc.spend.restore_pending(&sent, now);
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Reset);
        acc.spend.apply_shared(&sent, &[0], now);
        // Spent elsewhere meanwhile: seen at the next exchange.
        let sent = acc.spend.take_pending(&[], now);
        assert_eq!(sent[0].3, SpendPush::Seed(0));
        acc.spend.apply_shared(&sent, &[2_500], now);
        assert_eq!(acc.spend.spent("eng", now), 2_500);
        // The total fell: reset on another node, the period starts again here.
        let sent = acc.spend.take_pending(&[], now);
        acc.spend.apply_shared(&sent, &[10], now + 5);
        assert_eq!(acc.spend.spent("eng", now), 10);
        assert_eq!(acc.spend.period("eng", now + 5), now + 5);
    }
}
