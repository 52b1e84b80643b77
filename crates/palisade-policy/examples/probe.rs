//! Tuning aid for the policy packs (see `eval/README.md`, "Tuning"). Not part of the product.
//!
//! ```text
//! probe dump SPLIT OUT.jsonl            per-sample matches of all packs (rule id, action)
//! probe rules CANDIDATES.json SPLIT [DUMP.jsonl]
//!                                       a candidate policy on SPLIT: per rule, attacks it catches
//!                                       (new ones, given a dump) and benign block/alert hits
//! probe time [POLICIES_DIR]             min-of-batches evaluate() time on the bench's benign text
//! probe spin SIZE SECS                  one benign text of SIZE bytes, SECS seconds (profiling;
//!                                       per-call percentiles, anonymous memory before/after)
//! probe cold SIZE MIB [TARGET [NAP]]    per-call time when MIB of other memory was touched
//!                                       (caches evicted, as in a busy gateway) and NAP ms
//!                                       were slept (as an idle one does) before each call
//! probe lines TARGET FILE [POLICIES_DIR] evaluate each line (a JSON string) of FILE as TARGET
//! probe norm FILE                       each line (a JSON string) of FILE as the rules see it
//!                                       (normalised), to write patterns for other scripts
//! probe heap POLICIES_DIR [RULE_ID...]  heap bytes in use for the compiled set, and what the
//!                                       first 1 KiB benign evaluation adds (lazily built rule
//!                                       checks), without the given rules: what each rule costs
//! ```
//!
//! Tune on `dev` only: looking at the test split's misses defeats the held-out figure.

#[path = "../tests/support/adversarial.rs"]
mod adversarial;

#[path = "../../../eval/harness.rs"]
mod harness;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use palisade_policy::{Action, Policy, PolicySet};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let corpora = harness::load_corpora(&harness::eval_dir().join("corpora")).unwrap();
    match args[0].as_str() {
        "norm" => {
            for l in std::fs::read_to_string(&args[1]).unwrap().lines() {
                if let Ok(text) = serde_json::from_str::<String>(l) {
                    println!("{}", palisade_policy::normalize(&text));
                }
            }
        }
        "dump" => {
            let split = args[1].clone();
            let (set, _, _) = harness::load_packs().unwrap();
            let samples: Vec<_> = corpora
                .samples
                .iter()
                .filter(|s| s.split == split)
                .collect();
            let n = samples.len();
            let half = n / 2;
            let (a, b) = samples.split_at(half);
            let run = |part: &[&harness::Sample]| -> Vec<String> {
                part.iter()
                    .map(|s| {
                        let t0 = std::time::Instant::now();
                        let e = set.evaluate(s.target, &s.text);
                        let us = t0.elapsed().as_micros();
                        let hits: Vec<serde_json::Value> = e
                            .matches
                            .iter()
                            .map(|m| serde_json::json!([m.rule_id.to_string(), m.action.as_str()]))
                            .collect();
                        serde_json::json!({"id": s.id, "attack": s.attack, "category": s.category,
                            "source": s.source, "target": s.target.as_str(), "variant": s.variant,
                            "hits": hits, "us": us, "bytes": s.text.len()})
                        .to_string()
                    })
                    .collect()
            };
            let (ra, rb) = std::thread::scope(|sc| {
                let h = sc.spawn(|| run(a));
                let rb = run(b);
                (h.join().unwrap(), rb)
            });
            let mut f = std::fs::File::create(&args[2]).unwrap();
            for l in ra.iter().chain(rb.iter()) {
                writeln!(f, "{l}").unwrap();
            }
        }
        "rules" => {
            let policy = Policy::from_path(&args[1]).unwrap_or_else(|e| panic!("{e}"));
            let split = args[2].clone();
            let mut detected: HashSet<String> = HashSet::new();
            let mut fp_before: HashSet<String> = HashSet::new();
            if let Some(p) = args.get(3) {
                for l in std::fs::read_to_string(p).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    let hits = v["hits"].as_array().unwrap();
                    let id = v["id"].as_str().unwrap().to_owned();
                    if !hits.is_empty() {
                        detected.insert(id.clone());
                    }
                    if hits.iter().any(|h| h[1] == "block" || h[1] == "alert") {
                        fp_before.insert(id);
                    }
                }
            }
            let set = PolicySet::compile(std::slice::from_ref(&policy)).unwrap();
            // rule -> (attack category -> (hits, new)), benign hits
            let mut att: BTreeMap<String, BTreeMap<String, (usize, usize)>> = BTreeMap::new();
            let mut ben: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
            let mut new_any: BTreeMap<String, HashSet<String>> = BTreeMap::new();
            let mut fp_any: HashSet<String> = HashSet::new();
            for s in corpora.samples.iter().filter(|s| s.split == split) {
                if s.variant != "plain" {
                    continue;
                }
                let e = set.evaluate(s.target, &s.text);
                for m in &e.matches {
                    let r = m.rule_id.to_string();
                    if s.attack {
                        let c = att
                            .entry(r)
                            .or_default()
                            .entry(s.category.clone())
                            .or_default();
                        c.0 += 1;
                        if !detected.contains(&s.id) {
                            c.1 += 1;
                            new_any
                                .entry(s.category.clone())
                                .or_default()
                                .insert(s.id.clone());
                        }
                    } else if matches!(m.action, Action::Block | Action::Alert) {
                        if !fp_before.contains(&s.id) {
                            fp_any.insert(s.id.clone());
                        }
                        let mut excerpt = m.excerpt.clone();
                        excerpt.truncate(160);
                        ben.entry(r)
                            .or_default()
                            .push((s.id.clone(), s.category.clone(), excerpt));
                    }
                }
            }
            for rule in &policy.rules {
                let a = att.get(&rule.id).cloned().unwrap_or_default();
                let tot: usize = a.values().map(|x| x.0).sum();
                let new: usize = a.values().map(|x| x.1).sum();
                let b = ben.get(&rule.id).cloned().unwrap_or_default();
                println!(
                    "{:<10} attacks {tot:>4} new {new:>4}  benign {:>3}   {}",
                    rule.id,
                    b.len(),
                    a.iter()
                        .map(|(k, v)| format!("{k}:{}/{}", v.1, v.0))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                for (id, cat, ex) in b.iter().take(8) {
                    println!("      FP {id} [{cat}] {}", ex.replace('\n', " "));
                }
            }
            println!(
                "new detections: {}  new FP samples: {}",
                new_any
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.len()))
                    .collect::<Vec<_>>()
                    .join(" "),
                fp_any.len()
            );
        }
        "time" => {
            // min over batches of the mean per-call time: robust against a loaded machine
            let dir = args
                .get(1)
                .map(std::path::PathBuf::from)
                .unwrap_or_else(harness::policies_dir);
            let packs = palisade_policy::load_dir(dir).unwrap();
            let set = PolicySet::compile(&packs).unwrap();
            for size in [1024usize, 4096, 32768] {
                let text = adversarial::benign(size);
                // The figure is the cached case.
                adversarial::learn(&set, palisade_policy::Target::LlmRequest, &text);
                let best = min_per_call_us((200_000 / size).max(10), || {
                    set.evaluate(
                        palisade_policy::Target::LlmRequest,
                        std::hint::black_box(&text),
                    )
                });
                let (_, stats) = set.evaluate_with_stats(
                    palisade_policy::Target::LlmRequest,
                    &text,
                    &palisade_policy::EvalOptions::default(),
                );
                println!("{size:>6} B  min {best:8.2} us  {stats:?}");
            }
            // The learned detector alone, on the same normalised texts.
            let model = palisade_policy::classifier_model("prompt-attack").unwrap();
            for size in [1024usize, 4096, 32768] {
                let raw = adversarial::benign(size);
                let text = palisade_policy::normalize(&raw);
                let best = min_per_call_us((2_000_000 / size).max(10), || {
                    model.logit(std::hint::black_box(&text))
                });
                println!("{size:>6} B  min {best:8.2} us  prompt-attack model alone");
            }
        }
        "spin" => {
            // evaluate one benign text of SIZE bytes for SECS seconds (for a profiler)
            let size: usize = args[1].parse().unwrap();
            let secs: f64 = args[2].parse().unwrap();
            let t0 = std::time::Instant::now();
            let packs = palisade_policy::load_dir(harness::policies_dir()).unwrap();
            let loaded = t0.elapsed().as_secs_f64() * 1e3;
            let set = PolicySet::compile(&packs).unwrap();
            let all = t0.elapsed().as_secs_f64() * 1e3;
            println!("load {loaded:.0} ms, compile {:.0} ms", all - loaded);
            let text = adversarial::benign(size);
            palisade_policy::release_free_memory();
            let anon_before = rss_anon_kb();
            let t0 = std::time::Instant::now();
            std::hint::black_box(set.evaluate(palisade_policy::Target::LlmRequest, &text));
            println!(
                "first call: {:.0} ms (RssAnon before {} kB, after {} kB)",
                t0.elapsed().as_secs_f64() * 1e3,
                anon_before,
                rss_anon_kb()
            );
            let t0 = std::time::Instant::now();
            let mut each: Vec<f64> = Vec::new();
            let (mut over, mut checks) = (0, 0);
            while t0.elapsed().as_secs_f64() < secs {
                let t = std::time::Instant::now();
                let (_, st) = set.evaluate_with_stats(
                    palisade_policy::Target::LlmRequest,
                    std::hint::black_box(&text),
                    &palisade_policy::EvalOptions::default(),
                );
                each.push(t.elapsed().as_secs_f64() * 1e6);
                over += st.set_budget_exceeded;
                checks += st.rule_checks;
            }
            let mean = each.iter().sum::<f64>() / each.len() as f64;
            println!(
                "{size} B: {} calls ({over} over budget, {checks} rule checks), mean {mean:.2} us; {}; RssAnon {} kB",
                each.len(),
                percentiles(&mut each),
                rss_anon_kb()
            );
        }
        "cold" => {
            // per-call time of one benign text of SIZE bytes when other work has evicted the
            // CPU caches between calls (EVICT MiB of memory touched before each call)
            let size: usize = args[1].parse().unwrap();
            let evict: usize = args[2].parse().unwrap();
            // NAP: milliseconds asleep before each call (what an idle gateway does between
            // requests at a low rate).
            let nap: u64 = args.get(4).map_or(0, |v| v.parse().unwrap());
            let packs = palisade_policy::load_dir(harness::policies_dir()).unwrap();
            let set = PolicySet::compile(&packs).unwrap();
            let text = adversarial::benign(size);
            let target = args
                .get(3)
                .map_or(palisade_policy::Target::LlmRequest, |t| target_named(t));
            let t0 = std::time::Instant::now();
            while t0.elapsed().as_secs_f64() < 3.0 {
                std::hint::black_box(set.evaluate(target, &text));
            }
            let mut junk = vec![0u8; evict << 20];
            let mut each = Vec::new();
            let model = palisade_policy::classifier_model("prompt-attack").unwrap();
            let normal = palisade_policy::normalize(&text);
            let nodecode = palisade_policy::EvalOptions {
                decode: false,
                ..Default::default()
            };
            let raw = palisade_policy::EvalOptions {
                decode: false,
                normalize: false,
                ..Default::default()
            };
            let parts: [(&str, &dyn Fn()); 5] = [
                ("evaluate (no decoding)", &|| {
                    std::hint::black_box(set.evaluate_with_stats(
                        target,
                        std::hint::black_box(&text),
                        &nodecode,
                    ));
                }),
                (
                    "evaluate (normalised text, no normalising or decoding)",
                    &|| {
                        std::hint::black_box(set.evaluate_with_stats(
                            target,
                            std::hint::black_box(&normal),
                            &raw,
                        ));
                    },
                ),
                ("evaluate", &|| {
                    std::hint::black_box(set.evaluate(target, std::hint::black_box(&text)));
                }),
                ("normalize", &|| {
                    std::hint::black_box(palisade_policy::normalize(std::hint::black_box(&text)));
                }),
                ("model", &|| {
                    std::hint::black_box(model.logit(std::hint::black_box(&normal)));
                }),
            ];
            for (name, f) in parts {
                each.clear();
                let rounds = if nap > 0 { 200 } else { 2000u32 };
                for round in 0..rounds {
                    if nap > 0 {
                        std::thread::sleep(std::time::Duration::from_millis(nap));
                    }
                    for i in (0..junk.len()).step_by(64) {
                        junk[i] = junk[i].wrapping_add(round as u8);
                    }
                    let t = std::time::Instant::now();
                    f();
                    each.push(t.elapsed().as_secs_f64() * 1e6);
                }
                println!(
                    "{size} B {name} after touching {evict} MiB: {}",
                    percentiles(&mut each)
                );
            }
            std::hint::black_box(&junk);
        }
        "lines" => {
            // evaluate each line of a file (JSON string per line) as the given target
            let dir = args
                .get(3)
                .map(std::path::PathBuf::from)
                .unwrap_or_else(harness::policies_dir);
            let packs = palisade_policy::load_dir(dir).unwrap();
            let set = PolicySet::compile(&packs).unwrap();
            let target = target_named(&args[1]);
            for l in std::fs::read_to_string(&args[2]).unwrap().lines() {
                if l.trim().is_empty() {
                    continue;
                }
                let text: String = serde_json::from_str(l).unwrap();
                let t0 = std::time::Instant::now();
                let (e, stats) = set.evaluate_with_stats(
                    target,
                    &text,
                    &palisade_policy::EvalOptions::default(),
                );
                let us = t0.elapsed().as_micros();
                let ids: Vec<String> = e
                    .matches
                    .iter()
                    .map(|m| format!("{}:{}", m.rule_id, m.action.as_str()))
                    .collect();
                let mark = if e.matches.iter().any(|m| m.action != Action::Log) {
                    "    "
                } else if e.matches.is_empty() {
                    "MISS"
                } else {
                    "log "
                };
                // `factors`: the shared set was over its state budget for this text.
                let via = if stats.set_budget_exceeded > 0 {
                    format!(" factors ({} rules checked)", stats.rule_checks)
                } else {
                    String::new()
                };
                println!("{mark} {us:>8}us{via} {text}  {}", ids.join(" "));
            }
        }
        "heap" => {
            let skip = &args[2..];
            let mut packs = palisade_policy::load_dir(&args[1]).unwrap();
            for p in &mut packs {
                p.rules.retain(|r| !skip.iter().any(|s| r.id.as_str() == s));
            }
            let before = heap_in_use();
            let set = PolicySet::compile(&packs).unwrap();
            let compiled = heap_in_use();
            let text = adversarial::benign(1024);
            std::hint::black_box(set.evaluate(palisade_policy::Target::LlmRequest, &text));
            let evaluated = heap_in_use();
            println!(
                "compiled set {} KiB; first 1 KiB evaluation +{} KiB",
                compiled.saturating_sub(before) / 1024,
                evaluated.saturating_sub(compiled) / 1024
            );
        }
        _ => panic!("norm|dump|rules|time|spin|cold|lines|heap"),
    }
}

/// Min over 30 batches of `iters` calls of the mean time per call, in µs: robust against a
/// loaded machine.
fn min_per_call_us<R>(iters: usize, mut f: impl FnMut() -> R) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..30 {
        let t = std::time::Instant::now();
        for _ in 0..iters {
            std::hint::black_box(f());
        }
        best = best.min(t.elapsed().as_secs_f64() * 1e6 / iters as f64);
    }
    best
}

/// The process's anonymous resident memory (`RssAnon` of /proc/self/status), in kB.
/// Bytes the allocator has handed out and not got back (glibc `mallinfo2`; 0 elsewhere).
fn heap_in_use() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: `mallinfo2` only reads the allocator's statistics; it has no preconditions.
    unsafe {
        libc::mallinfo2().uordblks
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

fn rss_anon_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The target called `name` (as in policy files); panics naming the choices otherwise.
fn target_named(name: &str) -> palisade_policy::Target {
    let all = palisade_policy::Target::ALL;
    all.iter()
        .copied()
        .find(|t| t.as_str() == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = all.iter().map(|t| t.as_str()).collect();
            panic!("unknown target `{name}`: one of {}", names.join(", "))
        })
}

/// Min and percentiles of per-call times in µs (sorts them).
fn percentiles(each: &mut [f64]) -> String {
    each.sort_by(f64::total_cmp);
    let q = |f: f64| each[((each.len() - 1) as f64 * f) as usize];
    format!(
        "min {:.1} p10 {:.1} p50 {:.1} p90 {:.1} p99 {:.1} max {:.0} us",
        q(0.0),
        q(0.1),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    )
}
