//! `palisade scan`: the MCP vulnerability scanner on the command line (table, JSON or SARIF;
//! baselines to catch drift; an exit status for CI).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use palisade_gateway::scan::{self, AnyClient, Baseline, ScanOptions, ScanTarget};
use palisade_policy::{PolicySet, Severity};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
    Sarif,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Level {
    Low,
    Medium,
    High,
    Critical,
}

impl Level {
    fn severity(self) -> Severity {
        match self {
            Level::Low => Severity::Low,
            Level::Medium => Severity::Medium,
            Level::High => Severity::High,
            Level::Critical => Severity::Critical,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  palisade scan http://127.0.0.1:3000/mcp
  TOKEN=… palisade scan https://mcp.example.com/mcp --bearer-env TOKEN --format sarif -o scan.sarif
  palisade scan --save-baseline tools.json -- npx -y @modelcontextprotocol/server-everything
  palisade scan --baseline tools.json --fail-on high -- npx -y @modelcontextprotocol/server-everything

Exit status: 0 scanned (no finding at or above --fail-on), 1 a finding at or above --fail-on,
2 the scan could not run, 130/143 interrupted (SIGINT/SIGTERM).")]
pub struct ScanArgs {
    /// URL of a Streamable HTTP MCP endpoint (for a stdio server, give its command after `--`).
    url: Option<String>,
    /// A stdio MCP server to launch and scan: its command line, after `--`.
    #[arg(last = true)]
    command: Vec<String>,
    /// A header sent with every request (`Name: value`), e.g. credentials. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Send `Authorization: Bearer <token>` with the token read from this environment variable
    /// (kept out of shell history and the process list).
    #[arg(long, value_name = "VAR")]
    bearer_env: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Write the report to this file instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    /// Compare with a baseline saved earlier: changed, new and removed items are findings.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Save what the server offers as a baseline for later scans.
    #[arg(long)]
    save_baseline: Option<PathBuf>,
    /// Exit with status 1 when a finding is at least this severe.
    #[arg(long, value_enum)]
    fail_on: Option<Level>,
    /// How many text resources to read and check (0: none).
    #[arg(long, default_value_t = 20)]
    read_resources: usize,
    /// Seconds the whole scan may take.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86400))]
    max_time: u64,
    /// Seconds each exchange with the server may take.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    timeout: u64,
    /// A policy file (JSON) whose `tool_description` and `tool_result` rules also read what the
    /// server offers, besides the shipped packs. Repeatable.
    #[arg(long = "policy", value_name = "FILE")]
    policies: Vec<PathBuf>,
}

fn rules(extra: &[PathBuf]) -> anyhow::Result<PolicySet> {
    let mut policies = crate::serve::builtin_policies()?;
    for path in extra {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        policies.push(
            palisade_policy::Policy::from_json(&text)
                .with_context(|| format!("policy file {}", path.display()))?,
        );
    }
    PolicySet::compile(&policies).context("compiling the policies")
}

fn headers(args: &ScanArgs) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for h in &args.headers {
        let (k, v) = h.split_once(':').context(
            "a --header is not `Name: value` (it has no colon; its text is not shown, as it may hold a credential)",
        )?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    if let Some(var) = &args.bearer_env {
        let token =
            std::env::var(var).with_context(|| format!("--bearer-env: `{var}` is not set"))?;
        anyhow::ensure!(!token.trim().is_empty(), "--bearer-env: `{var}` is empty");
        out.push(("authorization".into(), format!("Bearer {}", token.trim())));
    }
    Ok(out)
}

/// Runs a scan; the process's exit status.
pub async fn run(args: ScanArgs) -> anyhow::Result<i32> {
    let target = match (&args.url, args.command.is_empty()) {
        (Some(url), true) => ScanTarget::Http {
            url: url.clone(),
            headers: headers(&args)?,
            client: AnyClient::Plain(palisade_gateway::build_client()),
        },
        (None, false) => {
            anyhow::ensure!(
                args.headers.is_empty() && args.bearer_env.is_none(),
                "--header and --bearer-env apply to HTTP servers; give a stdio server its credentials in its environment"
            );
            ScanTarget::Stdio {
                command: args.command.clone(),
            }
        }
        (Some(_), false) => anyhow::bail!("give either a URL or a command after `--`, not both"),
        (None, true) => anyhow::bail!(
            "give the URL of an MCP endpoint, or a stdio server's command after `--` (see --help)"
        ),
    };
    let baseline = match &args.baseline {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            Some(Baseline::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let set = std::sync::Arc::new(rules(&args.policies)?);
    palisade_policy::release_free_memory();
    let opts = ScanOptions {
        timeout: Duration::from_secs(args.timeout),
        read_resources: args.read_resources,
        baseline,
        probe_transport: true,
    };
    // Ctrl-C or SIGTERM ends the scan cleanly: dropping it stops a launched server's whole
    // process group, which a terminal's Ctrl-C does not reach (it runs in a group of its own).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let limit = Duration::from_secs(args.max_time);
    let report = tokio::select! {
        r = tokio::time::timeout(limit, scan::scan(target, &opts, set)) => match r {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the scan took longer than --max-time ({} s)", args.max_time),
        },
        _ = tokio::signal::ctrl_c() => return Ok(130),
        _ = term.recv() => return Ok(143),
    };
    let text = match args.format {
        Format::Table => scan::table(&report),
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Sarif => serde_json::to_string_pretty(&scan::sarif(&report))? + "\n",
    };
    match &args.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{text}"),
    }
    if let Some(p) = &args.save_baseline {
        let b = serde_json::to_string_pretty(&Baseline::of(&report))? + "\n";
        std::fs::write(p, b).with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!(
            "baseline of {} items saved to {}",
            report.inventory.len(),
            p.display()
        );
    }
    Ok(match args.fail_on {
        Some(l) if report.has_at_least(l.severity()) => 1,
        _ => 0,
    })
}
