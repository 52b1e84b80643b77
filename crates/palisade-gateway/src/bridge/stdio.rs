//! A stdio MCP server: a child process speaking newline-delimited JSON-RPC on stdin/stdout, its
//! stderr captured to the log. It runs in its own process group so stopping it also stops what
//! it started (`npx` runs the real server as a grandchild).

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::hub::{Inbound, Link};

/// Longest line (one JSON-RPC message) accepted from a server.
const MAX_LINE: usize = 32 * 1024 * 1024;
/// Longest stderr line logged (the rest is cut).
const MAX_LOG_LINE: usize = 4096;
/// Variables a launched server always gets from the gateway's environment (when set).
const BASE_ENV: [&str; 10] = [
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TMP", "TEMP",
];

/// What to launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StdioSpec {
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub inherit_env: Vec<String>,
    pub cwd: Option<String>,
}

/// Kills the child's whole process group when dropped (the link's tasks were aborted or ended).
pub(crate) struct GroupGuard {
    pid: Option<u32>,
}

impl GroupGuard {
    /// Guards the process group led by `pid` (a child started with `process_group(0)`).
    pub(crate) fn new(pid: Option<u32>) -> Self {
        Self { pid }
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let pgid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads one line of at most `max` bytes into `buf` (without the newline). `Ok(false)` at end of
/// input; a longer line is skipped whole and reported as `Err(len)`.
pub(crate) async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Result<bool, usize>> {
    buf.clear();
    let mut skipped = 0usize;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if skipped > 0 {
                Err(skipped)
            } else {
                Ok(!buf.is_empty())
            });
        }
        let (part, found) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if skipped > 0 || buf.len() + part.len() > max {
            skipped += buf.len() + part.len();
            buf.clear();
        } else {
            buf.extend_from_slice(part);
        }
        let used = found.unwrap_or(chunk.len());
        r.consume(used);
        if found.is_some() {
            return Ok(if skipped > 0 { Err(skipped) } else { Ok(true) });
        }
    }
}

/// Launches the server and returns its link.
pub(crate) fn spawn(proxy: &str, spec: &StdioSpec) -> std::io::Result<Link> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for name in BASE_ENV {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    for name in &spec.inherit_env {
        match std::env::var_os(name) {
            Some(v) => {
                cmd.env(name, v);
            }
            None => tracing::warn!(
                proxy,
                "`{name}` (inherit_env) is not set in the gateway's environment"
            ),
        }
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn()?;
    let guard = GroupGuard::new(child.id());
    tracing::info!(proxy, program = %program, pid = ?child.id(), "MCP server process started");
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| std::io::Error::other("no stderr"))?;

    let (out, mut out_rx) = mpsc::channel::<Bytes>(256);
    let (in_tx, inbound) = mpsc::channel(256);
    let (last_tx, last_rx) = tokio::sync::watch::channel(String::new());
    // Dropped by the logger at the end of stderr, so the exit reason can quote its last line.
    let (logged_tx, logged_rx) = tokio::sync::oneshot::channel::<()>();

    let writer = tokio::spawn({
        let proxy = proxy.to_string();
        async move {
            let mut stdin = stdin;
            while let Some(msg) = out_rx.recv().await {
                let wrote = async {
                    stdin.write_all(&msg).await?;
                    stdin.write_all(b"\n").await?;
                    stdin.flush().await
                }
                .await;
                if let Err(e) = wrote {
                    tracing::warn!(proxy, "cannot write to the MCP server's stdin: {e}");
                    break;
                }
            }
            // Dropping stdin tells the server to exit.
        }
    });

    let logger = tokio::spawn({
        let proxy = proxy.to_string();
        async move {
            let _logged = logged_tx;
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                match r.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end();
                        let cut: String = line.chars().take(MAX_LOG_LINE).collect();
                        if !cut.is_empty() {
                            tracing::info!(proxy, "MCP server stderr: {cut}");
                            let _ = last_tx.send(cut);
                        }
                        buf.clear();
                    }
                }
                if buf.capacity() > 1 << 20 {
                    buf = Vec::new();
                }
            }
        }
    });

    let reader = tokio::spawn({
        let proxy = proxy.to_string();
        async move {
            let _guard = guard;
            let mut r = BufReader::with_capacity(64 * 1024, stdout);
            let mut buf = Vec::new();
            loop {
                match read_line(&mut r, &mut buf, MAX_LINE).await {
                    Err(_) | Ok(Ok(false)) => break,
                    Ok(Err(len)) => tracing::warn!(
                        proxy,
                        "the MCP server wrote a {len}-byte line; messages above {MAX_LINE} bytes are dropped"
                    ),
                    Ok(Ok(true)) => {
                        let line = buf.trim_ascii();
                        if line.is_empty() {
                            continue;
                        }
                        match serde_json::from_slice::<Value>(line) {
                            Ok(v) => {
                                if in_tx.send(Inbound::Message(v)).await.is_err() {
                                    break;
                                }
                            }
                            Err(_) => tracing::warn!(
                                proxy,
                                "the MCP server wrote a line that is not JSON-RPC: {}",
                                String::from_utf8_lossy(&line[..line.len().min(200)])
                            ),
                        }
                    }
                }
            }
            let status = exit_status(&mut child).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), logged_rx).await;
            let last = last_rx.borrow().clone();
            let reason = if last.is_empty() {
                format!("the MCP server process {status}")
            } else {
                format!("the MCP server process {status} (last stderr line: {last})")
            };
            let _ = in_tx.send(Inbound::Closed(reason)).await;
        }
    });

    Ok(Link {
        out,
        inbound,
        tasks: vec![
            reader.abort_handle(),
            writer.abort_handle(),
            logger.abort_handle(),
        ],
    })
}

/// Waits briefly for the process to exit after its stdout closed; kills it otherwise.
async fn exit_status(child: &mut Child) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(s)) => match s.code() {
            Some(c) => format!("exited with status {c}"),
            None => format!("ended ({s})"),
        },
        Ok(Err(e)) => format!("could not be waited for: {e}"),
        Err(_) => {
            let _ = child.kill().await;
            "closed its stdout and was killed".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_skipped_whole() {
        let data: &[u8] = b"short\nxxxxxxxxxxxxxxxxxxxx\nok\nlast";
        let mut r = BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Ok(true));
        assert_eq!(buf, b"short");
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Err(20));
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Ok(true));
        assert_eq!(buf, b"ok");
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Ok(true));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut r, &mut buf, 8).await.unwrap(), Ok(false));
    }

    #[tokio::test]
    async fn a_process_that_echoes_is_a_link_and_its_exit_is_reported() {
        // `head -n 1` echoes the first line: a message in is a message out.
        let spec = StdioSpec {
            command: vec!["sh".into(), "-c".into(), "head -n 1; echo bye >&2".into()],
            env: vec![],
            inherit_env: vec![],
            cwd: None,
        };
        let mut link = spawn("t", &spec).unwrap();
        link.out
            .send(Bytes::from_static(br#"{"jsonrpc":"2.0","method":"x"}"#))
            .await
            .unwrap();
        match link.inbound.recv().await.unwrap() {
            Inbound::Message(v) => assert_eq!(v["method"], "x"),
            Inbound::Closed(r) => panic!("closed: {r}"),
        }
        match link.inbound.recv().await.unwrap() {
            Inbound::Closed(r) => {
                assert!(r.contains("exited with status 0"), "{r}");
                assert!(r.contains("last stderr line: bye"), "{r}");
            }
            Inbound::Message(v) => panic!("unexpected {v}"),
        }
    }
}
