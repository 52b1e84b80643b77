//! `palisade-bench report DIR`: the side-by-side table of one `bench/run.sh` invocation.
//!
//! DIR holds JSON files, read in name order: load results (`scenario`, `target`), skipped
//! scenarios (`scenario`, `skipped`), idle memory readings (`kind: "idle"`) and one `kind:
//! "meta"` file describing the run. Scenarios are printed in the order they first appear.
//!
//! A scenario run several times (`bench/run.sh --repeat N`) has several results per target; they
//! are shown as one row of medians (see [`merge`]) followed by each run's added latency, and
//! the goals are judged on the medians.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

/// Options of `palisade-bench report`.
#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directory of result files written by `bench/run.sh`.
    pub dir: PathBuf,
    /// Scenarios whose added latency and peak RSS are checked against the goals, in order of
    /// preference (the first one present is used).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chat1k-allpacks-ka-r2000,chat1k-nopolicy-ka-r2000"
    )]
    pub latency_goal: Vec<String>,
    /// Scenarios whose throughput ratio is checked against the goal, in order of preference.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chat1k-allpacks-ka-sat,chat1k-nopolicy-ka-sat"
    )]
    pub saturation_goal: Vec<String>,
}

struct Scenario {
    name: String,
    /// One result per target, in order of first appearance (repeated runs merged).
    results: Vec<Value>,
    /// Every run's result, per target, in run order (one each unless repeated).
    runs: Vec<(String, Vec<Value>)>,
    skipped: Option<String>,
}

/// Latency-like fields whose percentiles are merged.
const LATENCY_FIELDS: [&str; 3] = ["latency_us", "ttfb_us", "send_lag_us"];

/// The median of `values` (the lower middle one for an even count).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values
        .get((values.len().max(1) - 1) / 2)
        .copied()
        .unwrap_or(0.0)
}

/// One result standing for several runs of the same scenario and target: latency percentiles,
/// throughput, overhead and CPU per request are the runs' medians; the largest latency and the
/// highest peak RSS are the largest of any run; counts and errors are summed, so no failed
/// request is hidden by the merge. Fields not listed are the first run's.
fn merge(runs: &[Value]) -> Value {
    let Some(first) = runs.first() else {
        return Value::Null;
    };
    if runs.len() == 1 {
        return first.clone();
    }
    let mut out = first.clone();
    let med = |path: &[&str]| -> Value {
        let mut v: Vec<f64> = runs.iter().map(|r| f(r, path)).collect();
        let m = median(&mut v);
        if m.fract() == 0.0 && path.last() != Some(&"rps") {
            serde_json::json!(m as i64)
        } else {
            serde_json::json!(m)
        }
    };
    let sum = |path: &[&str]| -> Value {
        serde_json::json!(runs.iter().map(|r| u(r, path)).sum::<i64>())
    };
    let max = |path: &[&str]| -> Value {
        serde_json::json!(runs.iter().map(|r| u(r, path)).max().unwrap_or(0))
    };
    for field in LATENCY_FIELDS {
        if !first[field].is_object() {
            continue;
        }
        for p in ["p50", "p90", "p99", "p999", "mean"] {
            out[field][p] = med(&[field, p]);
        }
        out[field]["max"] = max(&[field, "max"]);
        out[field]["count"] = sum(&[field, "count"]);
    }
    for k in ["io", "non_2xx", "unexpected", "timeouts", "unsent"] {
        out["errors"][k] = sum(&["errors", k]);
    }
    for k in ["ok", "requests", "overhead_samples", "bytes_received"] {
        out[k] = sum(&[k]);
    }
    out["rps"] = med(&["rps"]);
    if first["overhead_us_mean"].is_number() {
        out["overhead_us_mean"] = med(&["overhead_us_mean"]);
    }
    if out["process"].is_object() && out["process"].get("error").is_none() {
        out["process"]["cpu_us_per_request"] = med(&["process", "cpu_us_per_request"]);
        out["process"]["peak_rss_kib"] = max(&["process", "peak_rss_kib"]);
    }
    if let Some(e) = runs.iter().find_map(|r| r["first_error"].as_str()) {
        out["first_error"] = serde_json::json!(e);
    }
    out["repeats"] = serde_json::json!(runs.len());
    out
}

fn u(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().map(|f| f as i64).unwrap_or(0)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(0.0)
}

/// Microseconds, compact: 812, 12.3k (ms shown as k µs would confuse; use ms).
fn us(v: i64) -> String {
    if v.abs() >= 100_000 {
        format!("{:.0}ms", v as f64 / 1000.0)
    } else if v.abs() >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}")
    }
}

/// Like [`us`], with its unit: `812 µs`, `19.7ms`.
fn us_unit(v: i64) -> String {
    let s = us(v);
    if s.ends_with("ms") {
        s
    } else {
        format!("{s} µs")
    }
}

fn signed(v: i64) -> String {
    if v >= 0 {
        format!("+{}", us(v))
    } else {
        format!("-{}", us(-v))
    }
}

fn mib(kib: i64) -> String {
    if kib <= 0 {
        "-".into()
    } else {
        format!("{:.1}MiB", kib as f64 / 1024.0)
    }
}

const PCTS: [&str; 5] = ["p50", "p90", "p99", "p999", "max"];

/// Scenarios, idle readings and the meta record of a result directory.
type Loaded = (Vec<Scenario>, Vec<Value>, Option<Value>);

fn load_dir(dir: &PathBuf) -> Result<Loaded, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut idle = Vec::new();
    let mut meta = None;
    for p in files {
        let text =
            std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("palisade-bench: skipping {}: {e}", p.display());
                continue;
            }
        };
        match v["kind"].as_str() {
            Some("idle") => {
                idle.push(v);
                continue;
            }
            Some("meta") => {
                meta = Some(v);
                continue;
            }
            _ => {}
        }
        let Some(name) = v["scenario"].as_str().map(str::to_string) else {
            continue;
        };
        let idx = match scenarios.iter().position(|s| s.name == name) {
            Some(i) => i,
            None => {
                scenarios.push(Scenario {
                    name,
                    results: Vec::new(),
                    runs: Vec::new(),
                    skipped: None,
                });
                scenarios.len() - 1
            }
        };
        let s = &mut scenarios[idx];
        if let Some(reason) = v["skipped"].as_str() {
            s.skipped = Some(reason.to_string());
        } else {
            let target = v["target"].as_str().unwrap_or("?").to_string();
            match s.runs.iter_mut().find(|(t, _)| *t == target) {
                Some((_, runs)) => runs.push(v),
                None => s.runs.push((target, vec![v])),
            }
        }
    }
    for s in &mut scenarios {
        s.results = s.runs.iter().map(|(_, runs)| merge(runs)).collect();
    }
    Ok((scenarios, idle, meta))
}

fn find<'a>(s: &'a Scenario, target: &str) -> Option<&'a Value> {
    s.results.iter().find(|r| r["target"] == target)
}

fn describe(r: &Value) -> String {
    let mode = match r["rate_target"].as_f64() {
        Some(rate) => format!("open loop {rate:.0} RPS, {} conns", u(r, &["connections"])),
        None => format!("closed loop (saturation), {} conns", u(r, &["connections"])),
    };
    let conn = if r["keep_alive"] == true {
        "keep-alive"
    } else {
        "fresh connection per request"
    };
    let stream = if r["stream"] == true {
        "streamed"
    } else {
        "non-streamed"
    };
    let runs = match u(r, &["repeats"]) {
        n if n > 1 => format!(" per run; median of {n} runs (max: the largest; errs: all runs)"),
        _ => String::new(),
    };
    format!(
        "{mode}; {conn}; {stream}; request body {} B; {}s measured{runs}",
        u(r, &["body_bytes"]),
        f(r, &["duration_s"])
    )
}

/// Each run's added p50 and p99 when a scenario was repeated: run i of `other` against run i of
/// the direct path (they ran one after the other), so the spread behind the medians shows.
fn runs_row(out: &mut String, s: &Scenario, target: &str, metric: &str) {
    let runs = |t: &str| s.runs.iter().find(|(name, _)| name == t).map(|(_, r)| r);
    let (Some(direct), Some(other)) = (runs("direct"), runs(target)) else {
        return;
    };
    if other.len() < 2 {
        return;
    }
    let each = |p: &str| -> String {
        direct
            .iter()
            .zip(other)
            .map(|(d, o)| signed(u(o, &[metric, p]) - u(d, &[metric, p])))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        "    {target} runs: added p50 {}; added p99 {}",
        each("p50"),
        each("p99")
    );
}

fn row(out: &mut String, label: &str, r: &Value, metric: &str, extra: bool) {
    let mut line = format!("  {label:<16}");
    for p in PCTS {
        let _ = write!(line, "{:>9}", us(u(r, &[metric, p])));
    }
    let _ = write!(line, "{:>10.1}", f(r, &["rps"]));
    if extra {
        let errs = format!(
            "{}/{}",
            u(r, &["errors", "non_2xx"]) + u(r, &["errors", "unexpected"]),
            u(r, &["errors", "io"]) + u(r, &["errors", "unsent"])
        );
        let _ = write!(line, "{errs:>10}");
        let ovh = r["overhead_us_mean"]
            .as_f64()
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into());
        let _ = write!(line, "{ovh:>8}");
        let p = &r["process"];
        if p.is_object() && p.get("error").is_none() {
            let _ = write!(
                line,
                "{:>10.1}{:>10}",
                f(p, &["cpu_us_per_request"]),
                mib(u(p, &["peak_rss_kib"]))
            );
        }
    }
    let _ = writeln!(out, "{}", line.trim_end());
}

fn added_row(out: &mut String, label: &str, base: &Value, other: &Value, metric: &str) {
    let mut line = format!("  {label:<16}");
    if u(other, &["ok"]) == 0 || u(base, &["ok"]) == 0 {
        let _ = writeln!(out, "{line}{:>9}", "(no successful answers to compare)");
        return;
    }
    for p in PCTS {
        let d = u(other, &[metric, p]) - u(base, &[metric, p]);
        let _ = write!(line, "{:>9}", signed(d));
    }
    let (rb, ro) = (f(base, &["rps"]), f(other, &["rps"]));
    if rb > 0.0 {
        let _ = write!(line, "{:>10}", format!("x{:.2}", ro / rb));
    }
    let _ = writeln!(out, "{line}");
}

/// Says when an open-loop target could not keep up with the schedule.
fn overload_note(r: &Value) -> Option<String> {
    let rate = r["rate_target"].as_f64()?;
    let unsent = u(r, &["errors", "unsent"]);
    let rps = f(r, &["rps"]);
    if unsent == 0 && rps >= 0.95 * rate {
        return None;
    }
    Some(format!(
        "OVERLOADED: achieved {rps:.0} of {rate:.0} RPS; {unsent} scheduled requests never sent before the drain deadline"
    ))
}

/// No errors of any kind and at least one answer.
fn clean(r: &Value) -> bool {
    u(r, &["ok"]) > 0
        && u(r, &["errors", "non_2xx"])
            + u(r, &["errors", "unexpected"])
            + u(r, &["errors", "io"])
            + u(r, &["errors", "unsent"])
            == 0
}

fn added(base: &Value, other: &Value, p: &str) -> i64 {
    u(other, &["latency_us", p]) - u(base, &["latency_us", p])
}

pub fn run(args: &ReportArgs) -> Result<(), String> {
    let (scenarios, idle, meta) = load_dir(&args.dir)?;
    let mut out = String::new();
    if let Some(m) = &meta {
        let _ = writeln!(
            out,
            "Palisade benchmark — {}",
            m["date"].as_str().unwrap_or("?")
        );
        for k in ["machine", "commit", "load", "pinning", "idle", "mode"] {
            if let Some(v) = m[k].as_str() {
                let _ = writeln!(out, "  {k:<8} {v}");
            }
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "Latencies in µs (ms where marked). errs = non-2xx (and 2xx without the --expect text) / I/O (incl. timeouts, unsent).\n\
         ovh = mean x-palisade-overhead-us. cpu/req = CPU µs per request of the server process\n\
         (the mock on the direct row, the gateway, nginx or LiteLLM on theirs); rss = its peak RSS in the window.\n\
         Open loop latency counts from the scheduled send time (no coordinated omission)."
    );
    for s in &scenarios {
        let _ = writeln!(out);
        if let Some(reason) = &s.skipped {
            let _ = writeln!(out, "== {}: {reason}", s.name);
            continue;
        }
        let Some(first) = s.results.first() else {
            continue;
        };
        let _ = writeln!(out, "== {}  ({})", s.name, describe(first));
        let _ = writeln!(
            out,
            "  {:<16}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}{:>10}{:>8}{:>10}{:>10}",
            "", "p50", "p90", "p99", "p99.9", "max", "rps", "errs", "ovh", "cpu/req", "rss"
        );
        let stream = first["stream"] == true;
        let direct = find(s, "direct");
        for r in &s.results {
            let target = r["target"].as_str().unwrap_or("?");
            if stream {
                row(&mut out, &format!("{target} ttfb"), r, "ttfb_us", false);
                row(&mut out, &format!("{target} total"), r, "latency_us", true);
            } else {
                row(&mut out, target, r, "latency_us", true);
            }
            if let Some(d) = direct
                && target != "direct"
            {
                if stream {
                    added_row(&mut out, "  added ttfb", d, r, "ttfb_us");
                    added_row(&mut out, "  added total", d, r, "latency_us");
                } else {
                    added_row(&mut out, "  added", d, r, "latency_us");
                }
            }
            if target != "direct" {
                runs_row(
                    &mut out,
                    s,
                    target,
                    if stream { "ttfb_us" } else { "latency_us" },
                );
            }
            if let Some(e) = r["first_error"].as_str() {
                let _ = writeln!(out, "    first error ({target}): {e}");
            }
            if let Some(note) = overload_note(r) {
                let _ = writeln!(out, "    {target}: {note}");
            } else if u(r, &["requests"]) == 0 && u(r, &["errors", "io"]) == 0 {
                let _ = writeln!(
                    out,
                    "    {target}: no request started in the measured window finished before it closed (each took longer than the run)"
                );
            }
        }
        if let (Some(g), Some(n), Some(d)) = (find(s, "gateway"), find(s, "nginx"), direct)
            && u(g, &["ok"]) > 0
            && u(n, &["ok"]) > 0
        {
            // nginx forwards without reading the body: what the extra hop alone costs here.
            let _ = writeln!(
                out,
                "  Palisade vs the nginx floor: added p50 {} vs {}, p99 {} vs {}; achieved RPS {:.0} vs {:.0}",
                us_unit(added(d, g, "p50")),
                us_unit(added(d, n, "p50")),
                us_unit(added(d, g, "p99")),
                us_unit(added(d, n, "p99")),
                f(g, &["rps"]),
                f(n, &["rps"])
            );
        }
        if let (Some(g), Some(l)) = (find(s, "gateway"), find(s, "litellm"))
            && let Some(d) = direct
            && u(g, &["ok"]) > 0
            && u(l, &["ok"]) > 0
        {
            let (ag, al) = (added(d, g, "p99"), added(d, l, "p99"));
            let lat = if ag > 0 {
                format!("{:.1}x", al as f64 / ag as f64)
            } else {
                "n/a (Palisade added p99 <= 0)".into()
            };
            let (rg, rl) = (f(g, &["rps"]), f(l, &["rps"]));
            let tput = if rl > 0.0 {
                format!("{:.1}x", rg / rl)
            } else {
                "n/a".into()
            };
            let _ = writeln!(
                out,
                "  Palisade vs LiteLLM: added p99 {} vs {} (LiteLLM/Palisade {lat}); achieved RPS Palisade/LiteLLM {tput}",
                us_unit(ag),
                us_unit(al)
            );
        }
    }
    if !idle.is_empty() {
        let _ = writeln!(out, "\nIdle memory (after start, before any traffic):");
        for i in &idle {
            // Anonymous memory is the process's own; file-backed pages are its mapped binary
            // and libraries, which the kernel counts only while they sit in the page cache.
            let parts = match (i.get("rss_anon_kib"), i.get("rss_file_kib")) {
                (Some(_), Some(_)) => format!(
                    " (anonymous {}, file-backed {})",
                    mib(u(i, &["rss_anon_kib"])),
                    mib(u(i, &["rss_file_kib"]))
                ),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:<28} RSS {}{parts}",
                i["config"].as_str().unwrap_or("?"),
                mib(u(i, &["rss_kib"]))
            );
        }
    }
    goals(&mut out, args, &scenarios, &idle);
    print!("{out}");
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

/// An added-latency goal: a negative figure means the direct run was the slower one (the
/// machine's noise, not a gateway that saves time), so it proves nothing either way.
fn latency_verdict(added: i64, limit: i64, clean: bool) -> &'static str {
    if clean && added < 0 {
        "INCONCLUSIVE (the direct run was slower: machine noise)"
    } else {
        verdict(clean && added < limit)
    }
}

/// A duration in µs with its unit: `812 µs`, `12.3 ms`.
fn dur(v: i64) -> String {
    if v.abs() >= 10_000 {
        us(v)
    } else {
        format!("{v} µs")
    }
}

/// A goal's scenario name, with the number of runs its medians come from when repeated.
fn runs_label(name: &str, result: &Value) -> String {
    match u(result, &["repeats"]) {
        n if n > 1 => format!("{name}, median of {n} runs"),
        _ => name.to_string(),
    }
}

fn goals(out: &mut String, args: &ReportArgs, scenarios: &[Scenario], idle: &[Value]) {
    // Every candidate scenario that ran is judged (the first is the one the issue names).
    let present = |names: &[String]| -> Vec<(String, Value, Value, Option<Value>)> {
        names
            .iter()
            .filter_map(|n| {
                let s = scenarios
                    .iter()
                    .find(|s| &s.name == n && s.skipped.is_none())?;
                Some((
                    s.name.clone(),
                    find(s, "direct")?.clone(),
                    find(s, "gateway")?.clone(),
                    find(s, "litellm").cloned(),
                ))
            })
            .collect()
    };
    let _ = writeln!(out, "\nGoals (issue 8):");
    let lat = present(&args.latency_goal);
    if lat.is_empty() {
        let _ = writeln!(
            out,
            "  latency goals: no result for {:?}",
            args.latency_goal
        );
    }
    for (name, d, g, l) in &lat {
        let name = &runs_label(name, g);
        let (a50, a99) = (added(d, g, "p50"), added(d, g, "p99"));
        let both_clean = clean(g) && clean(d);
        if !both_clean {
            let _ = writeln!(
                out,
                "  [{name}] gateway or direct run had errors or overload: latency goals not met"
            );
        }
        let _ = writeln!(
            out,
            "  added p50 < 100 µs  [{name}]: {} — {}",
            dur(a50),
            latency_verdict(a50, 100, both_clean)
        );
        let _ = writeln!(
            out,
            "  added p99 < 1 ms    [{name}]: {} — {}",
            dur(a99),
            latency_verdict(a99, 1000, both_clean)
        );
        let peak = u(g, &["process", "peak_rss_kib"]);
        let _ = writeln!(
            out,
            "  peak RSS < 64 MiB   [{name}]: {} — {}",
            mib(peak),
            verdict(peak > 0 && peak < 64 * 1024)
        );
        if let Some(l) = l {
            let al = added(d, l, "p99");
            // An overloaded LiteLLM still counts: its added latency is then the queueing it caused.
            let ok = both_clean
                && u(l, &["ok"]) > 0
                && (a99 > 0 && al >= 20 * a99 || a99 <= 0 && al > 0);
            let _ = writeln!(
                out,
                "  added p99 20x lower than LiteLLM [{name}]: Palisade {}, LiteLLM {} — {}",
                dur(a99),
                dur(al),
                verdict(ok)
            );
        }
    }
    let sat = present(&args.saturation_goal);
    if sat.is_empty() {
        let _ = writeln!(
            out,
            "  throughput goal: no result for {:?}",
            args.saturation_goal
        );
    }
    for (name, d, g, l) in &sat {
        let name = &runs_label(name, g);
        let ratio = f(g, &["rps"]) / f(d, &["rps"]).max(1e-9);
        let _ = writeln!(
            out,
            "  throughput >= 80 % of direct [{name}]: {:.0} % ({:.0} vs {:.0} RPS) — {}",
            ratio * 100.0,
            f(g, &["rps"]),
            f(d, &["rps"]),
            verdict(ratio >= 0.8 && clean(g))
        );
        if let Some(l) = l {
            let _ = writeln!(
                out,
                "  max throughput vs LiteLLM   [{name}]: {:.0} vs {:.0} RPS ({:.1}x)",
                f(g, &["rps"]),
                f(l, &["rps"]),
                f(g, &["rps"]) / f(l, &["rps"]).max(1e-9)
            );
        }
    }
    for i in idle {
        let rss = u(i, &["rss_kib"]);
        let _ = writeln!(
            out,
            "  idle RSS < 30 MiB   [{}]: {} — {}",
            i["config"].as_str().unwrap_or("?"),
            mib(rss),
            verdict(rss > 0 && rss < 30 * 1024)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::{latency_verdict, merge};
    use serde_json::json;

    fn run(p50: i64, p99: i64, max: i64, rps: f64, io: i64, rss: i64) -> serde_json::Value {
        json!({"scenario": "s", "target": "gateway", "rps": rps, "ok": 100, "requests": 100,
            "latency_us": {"p50": p50, "p90": p50, "p99": p99, "p999": p99, "max": max,
                "mean": p50, "count": 100},
            "errors": {"io": io, "non_2xx": 0, "timeouts": 0, "unsent": 0},
            "process": {"cpu_us_per_request": 10.0, "peak_rss_kib": rss}})
    }

    #[test]
    fn repeated_runs_merge_to_medians_without_hiding_errors() {
        let one = run(300, 900, 5000, 2000.0, 0, 50_000);
        assert_eq!(merge(std::slice::from_ref(&one)), one);
        let m = merge(&[
            one,
            run(200, 700, 3000, 1990.0, 2, 52_000),
            run(250, 2500, 9000, 1995.0, 0, 51_000),
        ]);
        assert_eq!(m["latency_us"]["p50"], 250);
        assert_eq!(m["latency_us"]["p99"], 900);
        assert_eq!(m["latency_us"]["max"], 9000);
        assert_eq!(m["latency_us"]["count"], 300);
        assert_eq!(m["rps"], 1995.0);
        assert_eq!(m["errors"]["io"], 2);
        assert_eq!(m["ok"], 300);
        assert_eq!(m["process"]["peak_rss_kib"], 52_000);
        assert_eq!(m["repeats"], 3);
    }

    #[test]
    fn negative_added_latency_is_inconclusive() {
        assert_eq!(latency_verdict(80, 100, true), "MET");
        assert_eq!(latency_verdict(150, 100, true), "NOT MET");
        assert_eq!(latency_verdict(80, 100, false), "NOT MET");
        assert!(latency_verdict(-34_000, 1000, true).starts_with("INCONCLUSIVE"));
    }
}
