//! Times `evaluate()` / `redact()` on adversarial inputs with every pack in `policies/` loaded.
//!
//! ```text
//! cargo run -p palisade-policy --release --example worst_case -- [NAME-FILTER] [--iters N]
//! ```
//!
//! The inputs are those of `tests/worst_case.rs` and `benches/engine.rs` (shared through
//! `tests/support/adversarial.rs`).

#[path = "../tests/support/adversarial.rs"]
mod adversarial;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use palisade_policy::{PolicySet, Target, load_dir};

fn main() {
    let mut filter: Option<String> = None;
    let mut iters = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--iters" {
            iters = args.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else {
            filter = Some(a);
        }
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../policies");
    let packs = load_dir(&dir).unwrap_or_else(|e| panic!("loading packs: {e}"));
    let set = PolicySet::compile(&packs).unwrap_or_else(|e| panic!("compile: {e}"));
    println!(
        "{} packs, {} rules ({} for llm_request)",
        packs.len(),
        set.rule_count(),
        set.rule_count_for(Target::LlmRequest)
    );
    println!(
        "{:<28} {:>9} {:>12} {:>12} {:>8} {:>6}",
        "input", "bytes", "evaluate", "redact", "MB/s", "hits"
    );
    for (name, text) in adversarial::cases() {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        // Warm-up (lazy DFA caches), then the best of a few runs.
        let e = set.evaluate(Target::LlmRequest, &text);
        let n = if iters > 0 {
            iters
        } else if text.len() > 200_000 {
            3
        } else {
            10
        };
        let best_eval = best_of(n, || {
            std::hint::black_box(set.evaluate(Target::LlmRequest, &text));
        });
        let best_redact = best_of(n, || {
            std::hint::black_box(set.redact(Target::LlmRequest, &text));
        });
        let mbs = text.len() as f64 / best_eval.as_secs_f64() / 1e6;
        println!(
            "{name:<28} {:>9} {:>10.3}ms {:>10.3}ms {mbs:>8.1} {:>6}",
            text.len(),
            best_eval.as_secs_f64() * 1e3,
            best_redact.as_secs_f64() * 1e3,
            e.matches.len()
        );
    }
}

fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}
