//! `palisade`: the single binary — gateway, admin API and built-in mock model.
#![forbid(unsafe_code)]

mod config;
mod mock;
mod mock_a2a;
mod mock_mcp;
mod mock_oidc;
mod otlp;
mod scan;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "palisade",
    version,
    about = "Security gateway for AI traffic: LLM APIs, MCP servers and A2A agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: admin API plus every enabled proxy.
    Serve(serve::ServeArgs),
    /// Run a deterministic OpenAI- and Anthropic-compatible fake model (for tests and demos).
    MockLlm(MockArgs),
    /// Run a small MCP test server (Streamable HTTP) whose tools can be changed at run time.
    MockMcp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9200")]
        addr: SocketAddr,
        /// Answer requests with SSE streams instead of JSON.
        #[arg(long)]
        sse: bool,
        /// Serve requests that carry no session (for load tests of `tools/call`).
        #[arg(long)]
        stateless: bool,
        /// Speak newline-delimited JSON-RPC on stdin/stdout instead of HTTP (a stdio server).
        #[arg(long)]
        stdio: bool,
        /// With `--stdio`: read the tool list (a JSON array) from this file on every `tools/list`.
        #[arg(long)]
        tools_file: Option<std::path::PathBuf>,
    },
    /// Scan an MCP server for vulnerabilities: tool poisoning, injections in prompts and
    /// resources, dangerous tools without annotations, broad schemas, missing authentication,
    /// unchecked Origin, plaintext transport, drift from a baseline.
    Scan(scan::ScanArgs),
    /// Run a small A2A agent that echoes (for tests and demos).
    MockA2a {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9300")]
        addr: SocketAddr,
    },
    /// Run a small OpenID Connect provider that signs everyone in as one identity (for tests
    /// and demos of `oauth_provider`).
    MockOidc {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9400")]
        addr: SocketAddr,
        /// The client id it accepts.
        #[arg(long, default_value = "palisade")]
        client_id: String,
        /// The client secret it accepts.
        #[arg(long, default_value = "mock-oidc-client-secret")]
        client_secret: String,
        /// The verified address it signs users in as.
        #[arg(long, default_value = "mia@example.com")]
        email: String,
    },
    /// Check a config file without starting anything.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
        /// The admin API's address on the gateway that will read it (no proxy may listen there).
        #[arg(long, env = "PALISADE_ADMIN_ADDR", default_value = "127.0.0.1:8080")]
        admin_addr: SocketAddr,
    },
}

#[derive(clap::Args)]
struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    addr: SocketAddr,
    /// Delay before the answer starts, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Number of content chunks in a streamed answer.
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// Refuse requests that do not carry this key (`Authorization: Bearer` or `x-api-key`).
    #[arg(long, env = "MOCK_LLM_REQUIRE_KEY")]
    require_key: Option<String>,
}

/// Logs go to standard error for commands whose standard output is their result (`scan`), and
/// show warnings only there unless `RUST_LOG` says otherwise.
fn init_tracing(quiet: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if quiet { "warn" } else { "info" })
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if quiet {
        fmt.with_writer(std::io::stderr).init();
    } else {
        fmt.init();
    }
}

/// A failed command prints its error and the chain of causes, never a backtrace (whatever
/// `RUST_BACKTRACE` says: the message is for the operator), and exits with status 1.
fn main() -> std::process::ExitCode {
    // Before any thread exists: compilation garbage then stays trimmable (see the function).
    palisade_policy::use_one_arena();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    init_tracing(matches!(cli.command, Command::Scan(_)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(args)),
        Command::MockLlm(a) => rt.block_on(mock::run(mock::MockConfig {
            addr: a.addr,
            latency_ms: a.latency_ms,
            chunks: a.chunks.max(1),
            chunk_delay_ms: a.chunk_delay_ms,
            require_key: a.require_key,
        })),
        Command::MockMcp {
            stdio: true,
            tools_file,
            ..
        } => rt.block_on(mock_mcp::run_stdio(tools_file)),
        Command::MockMcp {
            addr,
            sse,
            stateless,
            ..
        } => rt.block_on(mock_mcp::run(addr, sse, stateless)),
        Command::MockA2a { addr } => rt.block_on(mock_a2a::run(addr)),
        Command::MockOidc {
            addr,
            client_id,
            client_secret,
            email,
        } => rt.block_on(mock_oidc::run(addr, client_id, client_secret, email)),
        Command::Scan(args) => {
            // 0 and 1 tell a CI job whether findings reach its threshold; 2 is a scan that
            // could not run (anyhow's own status would be 1).
            let code = match rt.block_on(scan::run(args)) {
                Ok(code) => code,
                Err(e) => {
                    // Errors quote what the server said: shown escaped, like the report.
                    let msg = palisade_gateway::scan::printable(&format!("{e:#}"));
                    eprintln!("palisade scan: {msg}");
                    2
                }
            };
            drop(rt);
            std::process::exit(code);
        }
        Command::CheckConfig { file, admin_addr } => {
            let cfg = config::load(&file)?;
            // `serve` refuses a proxy on its admin API's address.
            if let Some((p, _)) = cfg.proxies.iter().find(|(p, _)| {
                palisade_core::model::listens_clash(&p.listen, &admin_addr.to_string())
            }) {
                anyhow::bail!(
                    "{}: proxy `{}` listens on `{}`, the admin API's address ({admin_addr}); choose another (or give the gateway's own with --admin-addr)",
                    file.display(),
                    p.name,
                    p.listen
                );
            }
            let builtin: Vec<String> = serve::builtin_policies()?
                .into_iter()
                .map(|p| p.id)
                .collect();
            println!(
                "{}: OK ({} proxies, {} groups, {} API keys)",
                file.display(),
                cfg.proxies.len(),
                cfg.groups.len(),
                cfg.api_keys.len()
            );
            // What only the gateway can confirm: `serve` refuses the file if any is missing.
            for r in cfg.outside_references(&builtin) {
                println!(
                    "  note: {} uses {}, which this file does not define: it must exist on the gateway",
                    r.from,
                    r.what()
                );
            }
            Ok(())
        }
    }
}
