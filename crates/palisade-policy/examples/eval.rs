//! Detection-quality evaluation of the shipped policy packs over the corpora in `eval/corpora/`.
//!
//! ```text
//! cargo run -p palisade-policy --release --example eval -- [--split test|dev|all] [--json out.json]
//!                                                          [--top N] [--gate] [--write-baseline]
//! ```
//!
//! `--gate` evaluates only the deterministic CI subset that `tests/eval.rs` uses.
//! `--write-baseline` evaluates the test split and records `eval/baseline.json`, which
//! `tests/eval.rs` compares against. See `eval/README.md` for the definitions.

#[path = "../../../eval/harness.rs"]
mod harness;

use std::process::ExitCode;

use harness::Split;

fn main() -> ExitCode {
    let mut split = Split::Test;
    let mut json_out: Option<String> = None;
    let mut top = 15usize;
    let mut write_baseline = false;
    let mut gate = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--split" => match args.next().as_deref().and_then(Split::parse) {
                Some(s) => split = s,
                None => return usage("--split needs test, dev or all"),
            },
            "--json" => match args.next() {
                Some(p) => json_out = Some(p),
                None => return usage("--json needs a path"),
            },
            "--top" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => top = n,
                None => return usage("--top needs a number"),
            },
            "--write-baseline" => write_baseline = true,
            "--gate" => gate = true,
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if write_baseline && (split != Split::Test || gate) {
        return usage("--write-baseline records the test split; drop --split and --gate");
    }
    let started = std::time::Instant::now();
    let (run, figures) = match harness::evaluate_split(split, gate.then_some(harness::CI_GATE)) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", harness::render(&run, &figures, top));
    println!("\n(evaluated in {:.2} s)", started.elapsed().as_secs_f64());
    if let Some(path) = json_out {
        let body = serde_json::to_string_pretty(&harness::to_json(&run, &figures)).unwrap();
        if let Err(e) = std::fs::write(&path, body + "\n") {
            eprintln!("error: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("wrote {path}");
    }
    if write_baseline {
        let (grun, gfig) = match harness::evaluate_split(Split::Test, Some(harness::CI_GATE)) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let path = harness::eval_dir().join("baseline.json");
        let value = harness::baseline_json((&run, &figures), (&grun, &gfig));
        let body = serde_json::to_string_pretty(&value).unwrap();
        if let Err(e) = std::fs::write(&path, body + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!(
            "wrote {} (full test split: {} samples; CI subset: {} samples, {} variants)",
            path.display(),
            run.samples.len(),
            grun.samples.len(),
            grun.variants.len()
        );
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: cargo run -p palisade-policy --release --example eval -- \
         [--split test|dev|all] [--json out.json] [--top N] [--gate] [--write-baseline]"
    );
    if problem.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
