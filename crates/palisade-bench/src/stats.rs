//! Per-worker measurements, merged at the end into one JSON result.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Microseconds from 1 µs to one hour, three significant digits.
fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts; fall back to auto-resizing.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable!("3 sigfig is valid"));
        h.auto(true);
        h
    })
}

/// What one worker saw during the measured window.
pub struct Stats {
    /// Total time of successful (2xx) requests: from scheduled (open loop) or actual (closed
    /// loop) send time to the last body byte.
    pub latency: Histogram<u64>,
    /// Time to the first body byte of successful requests.
    pub ttfb: Histogram<u64>,
    /// Open loop: how late each request left compared with its schedule (generator health:
    /// a large value means not enough connections, or the target is saturated).
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    pub non_2xx: u64,
    /// 2xx answers without the `--expect` text.
    pub unexpected: u64,
    pub io_errors: u64,
    pub timeouts: u64,
    pub unsent: u64,
    pub reconnects: u64,
    pub bytes_received: u64,
    pub overhead_sum_us: u64,
    pub overhead_count: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub first_error: Option<String>,
    /// Completion time of the last recorded request, relative to the window start.
    pub last_done_us: u64,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            latency: histogram(),
            ttfb: histogram(),
            send_lag: histogram(),
            ok: 0,
            non_2xx: 0,
            unexpected: 0,
            io_errors: 0,
            timeouts: 0,
            unsent: 0,
            reconnects: 0,
            bytes_received: 0,
            overhead_sum_us: 0,
            overhead_count: 0,
            statuses: BTreeMap::new(),
            first_error: None,
            last_done_us: 0,
        }
    }

    pub fn error(&mut self, msg: impl FnOnce() -> String) {
        self.io_errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
    }

    /// Notes the first answer without the `--expect` text (as the first error, when none came
    /// before it).
    pub fn first_unexpected(&mut self, status: u16) {
        if self.first_error.is_none() {
            self.first_error = Some(format!(
                "a {status} answer without the expected text (--expect)"
            ));
        }
    }

    pub fn merge(&mut self, o: Stats) {
        // Same bounds everywhere, so adding cannot fail; a failure would only lose samples.
        let _ = self.latency.add(&o.latency);
        let _ = self.ttfb.add(&o.ttfb);
        let _ = self.send_lag.add(&o.send_lag);
        self.ok += o.ok;
        self.non_2xx += o.non_2xx;
        self.unexpected += o.unexpected;
        self.io_errors += o.io_errors;
        self.timeouts += o.timeouts;
        self.unsent += o.unsent;
        self.reconnects += o.reconnects;
        self.bytes_received += o.bytes_received;
        self.overhead_sum_us += o.overhead_sum_us;
        self.overhead_count += o.overhead_count;
        for (k, v) in o.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.last_done_us = self.last_done_us.max(o.last_done_us);
    }

    pub fn completed(&self) -> u64 {
        self.ok + self.non_2xx + self.unexpected
    }
}

/// Percentiles of a histogram in microseconds (all zero when empty).
pub fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0.0});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_samples() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for v in 1..=100 {
            a.latency.saturating_record(v);
            b.latency.saturating_record(v + 100);
        }
        a.ok = 100;
        b.ok = 100;
        b.non_2xx = 3;
        b.statuses.insert(503, 3);
        b.error(|| "boom".into());
        a.merge(b);
        assert_eq!(a.ok, 200);
        assert_eq!(a.completed(), 203);
        assert_eq!(a.io_errors, 1);
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        let p = percentiles(&a.latency);
        assert_eq!(p["count"], 200);
        assert_eq!(p["p50"], 100);
        assert_eq!(p["max"], 200);
    }

    #[test]
    fn empty_percentiles_are_zero() {
        assert_eq!(percentiles(&Stats::new().latency)["p99"], 0);
    }
}
