//! `palisade-bench`: the load generator and report tool of Palisade's benchmark harness.
//!
//! `palisade-bench load` drives one HTTP/1.1 target (the mock upstream directly, the gateway,
//! or another proxy) either closed-loop (N connections, each sending its next request when the
//! previous answer is complete: maximum throughput) or open-loop at a fixed rate, where the
//! latency of each request is measured from the time it was *scheduled* to be sent, so a stall
//! of the target is charged to every request it delayed (no coordinated omission).
//! `palisade-bench report DIR` turns the JSON results of a `bench/run.sh` invocation into the
//! side-by-side table (direct vs gateway vs LiteLLM).
#![forbid(unsafe_code)]

mod load;
mod procstat;
mod prompt;
mod report;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "palisade-bench",
    version,
    about = "Load generator and report tool of Palisade's benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Send load to one URL and print (or write) the result as JSON.
    Load(Box<LoadArgs>),
    /// Print the comparison table of the result files in a directory.
    Report(report::ReportArgs),
}

/// Options of `palisade-bench load`.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Target URL (http only), e.g. http://127.0.0.1:9100/v1/chat/completions.
    #[arg(long)]
    pub url: String,
    /// Send `Authorization: Bearer KEY`.
    #[arg(long)]
    pub key: Option<String>,
    /// Extra request header `NAME: VALUE` (repeatable).
    #[arg(long = "header")]
    pub headers: Vec<String>,
    /// Request body from this file (sent as is, `content-type: application/json`).
    #[arg(long, conflicts_with_all = ["prompt_bytes", "stream"])]
    pub body_file: Option<PathBuf>,
    /// Generate an OpenAI chat completion request whose prompt has this many bytes.
    #[arg(long, default_value_t = 1024)]
    pub prompt_bytes: usize,
    /// Draw the prompts from this corpus (a text per line: a JSON string or an object with a
    /// `text` field): `--distinct` prompts, each a different run of its lines, taken in turn,
    /// so requests bring text the gateway has not seen, as real traffic does (the generated
    /// prompt is the same on every request).
    #[arg(long, conflicts_with_all = ["body_file", "pii"])]
    pub prompt_lines: Option<PathBuf>,
    /// Number the generated prompt (`#000001 …` in place of its first words), a different
    /// number on every request (`--distinct` of them, in turn): the words are the repeated
    /// prompt's, but no text comes back soon enough for the gateway's policy memo to answer it
    /// (the mock's answer, which quotes the prompt, differs too).
    #[arg(long, conflicts_with_all = ["body_file", "prompt_lines"])]
    pub numbered: bool,
    /// How many different prompts `--prompt-lines` or `--numbered` makes.
    #[arg(long, default_value_t = 20_000)]
    pub distinct: usize,
    /// Put an e-mail address and a phone number into the generated prompt about every 256
    /// bytes, so redaction rules have something to do.
    #[arg(long)]
    pub pii: bool,
    /// Ask for a streamed answer (`"stream": true`); time to first byte is reported too.
    #[arg(long)]
    pub stream: bool,
    /// Model name in the generated request.
    #[arg(long, default_value = "mock-gpt")]
    pub model: String,
    /// Number of connections (closed loop: concurrency; open loop: the most requests in flight).
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Fixed request rate per second (open loop). Without it: closed loop, maximum throughput.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measured duration in seconds.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up before the measured window, in seconds (same load, not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Open a fresh TCP connection for every request instead of keeping connections alive.
    #[arg(long)]
    pub fresh_connections: bool,
    /// A 2xx answer must contain this text (e.g. `"result"` for a JSON-RPC call); one that
    /// does not is counted as `unexpected` (an error, kept out of the latencies): a refusal
    /// sent as HTTP 200, as MCP's JSON-RPC errors are, is not timed as a served call.
    #[arg(long)]
    pub expect: Option<String>,
    /// Per-request timeout in seconds (counted as an I/O error).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Longest wait, after the last scheduled send, for the backlog of an overloaded target
    /// (open loop); requests still unsent then are counted as `unsent`.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Tokio worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Measure this process during the measured window: CPU time (utime+stime from
    /// /proc/PID/stat) and peak RSS (VmHWM, reset through /proc/PID/clear_refs at the start).
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    pub clk_tck: u64,
    /// Scenario name written into the result.
    #[arg(long, default_value = "adhoc")]
    pub scenario: String,
    /// Target name written into the result (direct, gateway, litellm, ...).
    #[arg(long, default_value = "target")]
    pub target: String,
    /// Write the JSON result to this file as well as to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl LoadArgs {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.1))
    }
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup.max(0.0))
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Load(args) => run_load(*args),
        Command::Report(args) => report::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_load(args: LoadArgs) -> Result<(), String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if let Some(r) = args.rate
        && !(r > 0.0 && r.is_finite())
    {
        return Err("--rate must be a positive number".into());
    }
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let result = rt.block_on(load::run(&args))?;
    let text = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
    println!("{text}");
    if let Some(path) = &args.out {
        std::fs::write(path, format!("{text}\n"))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
