//! The load loops: closed loop (saturation) and open loop (fixed rate, latency from the
//! scheduled send time), over raw hyper HTTP/1.1 connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

use crate::stats::{Stats, percentiles};
use crate::{LoadArgs, procstat, prompt};

static OVERHEAD: HeaderName = HeaderName::from_static("x-palisade-overhead-us");

/// How much of an answer's start is searched for the `--expect` text.
const EXPECT_WITHIN: usize = 64 * 1024;

/// Everything a worker needs, shared read-only.
struct Shared {
    addr: SocketAddr,
    path: Uri,
    headers: HeaderMap,
    /// Request bodies, sent in turn (one, unless prompts come from a corpus).
    bodies: Vec<Bytes>,
    /// Requests sent so far: which body goes next.
    sent: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    /// Text a 2xx answer must contain (`--expect`).
    expect: Option<Vec<u8>>,
    fresh: bool,
    /// Start of the measured window (end of warm-up).
    window_start: Instant,
    /// Nothing is sent after this, and requests in flight are cut off at it.
    hard_deadline: Instant,
}

/// What one request produced.
struct Outcome {
    status: u16,
    first_byte: Option<Instant>,
    done: Instant,
    overhead_us: Option<u64>,
    bytes: u64,
    /// The answer lacked the `--expect` text.
    unexpected: bool,
}

enum ReqError {
    Io(String),
    Timeout,
}

fn build_shared(args: &LoadArgs, now: Instant) -> Result<Shared, String> {
    let uri: Uri = args
        .url
        .parse()
        .map_err(|e| format!("invalid --url {}: {e}", args.url))?;
    if uri.scheme_str() != Some("http") {
        return Err("--url must be an http:// URL".into());
    }
    let authority = uri
        .authority()
        .ok_or("--url has no host")?
        .as_str()
        .to_string();
    let host = uri.host().ok_or("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} resolves to nothing"))?;
    let path: Uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e| format!("invalid path: {e}"))?;

    let mut headers = HeaderMap::new();
    headers.insert(
        HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = &args.key {
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|e| format!("invalid --key: {e}"))?,
        );
    }
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header `{h}`: expected NAME: VALUE"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| format!("--header `{h}`: {e}"))?,
            HeaderValue::from_str(value.trim()).map_err(|e| format!("--header `{h}`: {e}"))?,
        );
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let bodies = match (&args.body_file, &args.prompt_lines) {
        (Some(p), _) => vec![Bytes::from(read(p)?)],
        (None, Some(p)) => {
            let lines = prompt::read_lines(&String::from_utf8_lossy(&read(p)?));
            let bodies = prompt::corpus_bodies(
                &lines,
                args.distinct.max(1),
                args.prompt_bytes,
                &args.model,
                args.stream,
            );
            if bodies.is_empty() {
                return Err(format!("{}: no texts in it", p.display()));
            }
            bodies
        }
        (None, None) if args.numbered => prompt::numbered_bodies(
            args.distinct.max(1),
            args.prompt_bytes,
            args.pii,
            &args.model,
            args.stream,
        ),
        (None, None) => vec![prompt::chat_body(
            &args.model,
            args.prompt_bytes,
            args.pii,
            args.stream,
        )],
    };
    let window_start = now + args.warmup();
    let end = window_start + args.duration();
    Ok(Shared {
        addr,
        path,
        headers,
        bodies,
        sent: std::sync::atomic::AtomicUsize::new(0),
        timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        expect: match args.expect.as_deref() {
            Some("") => return Err("--expect needs a text".into()),
            e => e.map(|t| t.as_bytes().to_vec()),
        },
        fresh: args.fresh_connections,
        window_start,
        hard_deadline: end + Duration::from_secs_f64(args.drain_timeout.max(0.0)),
    })
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        // The connection's errors surface on the request that was using it.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request on the kept-alive connection in `conn` (opening one if needed) and reads
/// the whole answer. `opened` counts the TCP connections opened (a failed connect is none).
async fn one_request(
    shared: &Shared,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    opened: &mut u64,
) -> Result<Outcome, ReqError> {
    let budget = shared.timeout.min(
        shared
            .hard_deadline
            .saturating_duration_since(Instant::now()),
    );
    let work = async {
        let mut sender = match conn.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let sender = connect(shared.addr).await.map_err(ReqError::Io)?;
                *opened += 1;
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| ReqError::Io(format!("connection not ready: {e}")))?;
        let turn = shared
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = shared.bodies[turn % shared.bodies.len()].clone();
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = shared.path.clone();
        *req.headers_mut() = shared.headers.clone();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ReqError::Io(format!("send: {e}")))?;
        let status = resp.status().as_u16();
        let overhead_us = resp
            .headers()
            .get(&OVERHEAD)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = resp.into_body();
        let mut first_byte = None;
        let mut bytes = 0u64;
        // Kept only to look for the `--expect` text (at most EXPECT_WITHIN bytes of it).
        let mut kept = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReqError::Io(format!("body: {e}")))?;
            if let Some(d) = frame.data_ref()
                && !d.is_empty()
            {
                if first_byte.is_none() {
                    first_byte = Some(Instant::now());
                }
                bytes += d.len() as u64;
                if shared.expect.is_some() && kept.len() < EXPECT_WITHIN {
                    kept.extend_from_slice(&d[..d.len().min(EXPECT_WITHIN - kept.len())]);
                }
            }
        }
        let unexpected = shared
            .expect
            .as_deref()
            .is_some_and(|t| !kept.windows(t.len()).any(|w| w == t));
        let done = Instant::now();
        if !shared.fresh {
            *conn = Some(sender);
        }
        Ok(Outcome {
            status,
            first_byte,
            done,
            overhead_us,
            bytes,
            unexpected,
        })
    };
    match tokio::time::timeout(budget, work).await {
        Ok(r) => r,
        Err(_) => {
            // The connection may still carry the late answer: never reuse it.
            *conn = None;
            Err(ReqError::Timeout)
        }
    }
}

/// Records a finished request whose latency counts from `origin`.
fn record(stats: &mut Stats, shared: &Shared, origin: Instant, o: &Outcome) {
    *stats.statuses.entry(o.status).or_default() += 1;
    stats.bytes_received += o.bytes;
    if (200..300).contains(&o.status) && o.unexpected {
        stats.unexpected += 1;
        stats.first_unexpected(o.status);
    } else if (200..300).contains(&o.status) {
        stats.ok += 1;
        let total = o.done.saturating_duration_since(origin);
        let first = o
            .first_byte
            .unwrap_or(o.done)
            .saturating_duration_since(origin);
        stats.latency.saturating_record(total.as_micros() as u64);
        stats.ttfb.saturating_record(first.as_micros() as u64);
        if let Some(v) = o.overhead_us {
            stats.overhead_sum_us += v;
            stats.overhead_count += 1;
        }
    } else {
        stats.non_2xx += 1;
    }
    let done_us = o
        .done
        .saturating_duration_since(shared.window_start)
        .as_micros() as u64;
    stats.last_done_us = stats.last_done_us.max(done_us);
}

fn record_error(stats: &mut Stats, e: ReqError) {
    match e {
        ReqError::Timeout => {
            stats.timeouts += 1;
            stats.error(|| "timeout".into());
        }
        ReqError::Io(msg) => stats.error(|| msg),
    }
}

/// Closed loop: send, wait for the whole answer, send again, until `end`.
async fn closed_worker(shared: Arc<Shared>, end: Instant) -> (Stats, u64) {
    let mut stats = Stats::new();
    let mut conn = None;
    let mut opened = 0;
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let measured = start >= shared.window_start;
        match one_request(&shared, &mut conn, &mut opened).await {
            Ok(o) if measured => record(&mut stats, &shared, start, &o),
            Ok(_) => {}
            Err(e) => {
                if measured {
                    record_error(&mut stats, e);
                }
                // A refused connection fails at once; do not spin.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (stats, opened)
}

type Schedule = Arc<Mutex<mpsc::UnboundedReceiver<Instant>>>;

/// Open loop: take the next scheduled send time, send (late if every connection was busy),
/// and charge the whole delay since the schedule to the request.
async fn open_worker(shared: Arc<Shared>, schedule: Schedule) -> (Stats, u64) {
    let mut stats = Stats::new();
    let mut conn = None;
    let mut opened = 0;
    loop {
        let next = schedule.lock().await.recv().await;
        let Some(scheduled) = next else { break };
        let measured = scheduled >= shared.window_start;
        let now = Instant::now();
        if !measured && now >= shared.window_start {
            // A warm-up request still queued when the window opens: an overloaded target
            // would otherwise spend the whole window on warm-up backlog. Not sent, not counted.
            continue;
        }
        if now >= shared.hard_deadline {
            if measured {
                stats.unsent += 1;
            }
            continue;
        }
        if measured {
            stats
                .send_lag
                .saturating_record(now.saturating_duration_since(scheduled).as_micros() as u64);
        }
        match one_request(&shared, &mut conn, &mut opened).await {
            Ok(o) if measured => record(&mut stats, &shared, scheduled, &o),
            Ok(_) => {}
            Err(e) if measured => record_error(&mut stats, e),
            Err(_) => {}
        }
    }
    (stats, opened)
}

/// The pacer: a plain thread with a precise sleep (tokio timers tick in milliseconds, too
/// coarse for 5 000 RPS), handing out one send time per request until `end`.
fn spawn_pacer(
    tx: mpsc::UnboundedSender<Instant>,
    start: Instant,
    end: Instant,
    rate: f64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let interval_ns = 1e9 / rate;
        let mut i: u64 = 0;
        loop {
            let at = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
            if at >= end {
                break;
            }
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if tx.send(at).is_err() {
                break;
            }
            i += 1;
        }
    })
}

/// Process measurements taken at the start of the measured window.
struct Watch {
    pids: Vec<u32>,
    cpu_start: u64,
    rss_start_kib: u64,
}

fn watch_start(pid: u32) -> Result<Watch, String> {
    let pids = procstat::tree_pids(pid);
    let mut cpu_start = 0;
    let mut rss_start_kib = 0;
    for &p in &pids {
        procstat::reset_peak_rss(p)?;
        cpu_start += procstat::cpu_ticks(p)?;
        rss_start_kib += procstat::status_kib(p, "VmRSS")?;
    }
    Ok(Watch {
        pids,
        cpu_start,
        rss_start_kib,
    })
}

fn watch_end(w: &Watch, clk_tck: u64, requests: u64) -> Value {
    let mut cpu_end = 0;
    let mut peak = 0;
    let mut rss = 0;
    for &p in &w.pids {
        cpu_end += procstat::cpu_ticks(p).unwrap_or(0);
        peak += procstat::status_kib(p, "VmHWM").unwrap_or(0);
        rss += procstat::status_kib(p, "VmRSS").unwrap_or(0);
    }
    let cpu_us = cpu_end.saturating_sub(w.cpu_start) * 1_000_000 / clk_tck.max(1);
    json!({
        "pids": w.pids,
        "cpu_ms": cpu_us / 1000,
        "cpu_us_per_request": if requests > 0 { (cpu_us as f64 / requests as f64 * 10.0).round() / 10.0 } else { 0.0 },
        "peak_rss_kib": peak,
        "rss_start_kib": w.rss_start_kib,
        "rss_end_kib": rss,
    })
}

/// Runs the load described by `args` and returns the JSON result.
pub async fn run(args: &LoadArgs) -> Result<Value, String> {
    let t0 = Instant::now();
    let shared = Arc::new(build_shared(args, t0)?);
    let end = shared.window_start + args.duration();
    let me = std::process::id();

    // Process measurements start when the warm-up ends.
    let watch_task = {
        let (pid, at) = (args.watch_pid, shared.window_start);
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let own = procstat::cpu_ticks(me).ok();
            let w = pid.map(watch_start);
            (own, w)
        })
    };

    let mut handles = Vec::with_capacity(args.connections);
    let mut pacer = None;
    match args.rate {
        None => {
            for _ in 0..args.connections {
                handles.push(tokio::spawn(closed_worker(shared.clone(), end)));
            }
        }
        Some(rate) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let schedule: Schedule = Arc::new(Mutex::new(rx));
            for _ in 0..args.connections {
                handles.push(tokio::spawn(open_worker(shared.clone(), schedule.clone())));
            }
            pacer = Some(spawn_pacer(tx, t0, end, rate));
        }
    }
    let mut stats = Stats::new();
    let mut opened = 0;
    for h in handles {
        match h.await {
            Ok((s, o)) => {
                stats.merge(s);
                opened += o;
            }
            Err(e) => return Err(format!("worker failed: {e}")),
        }
    }
    if let Some(p) = pacer
        && p.join().is_err()
    {
        return Err("pacer thread failed".into());
    }
    let (own_start, watch) = watch_task
        .await
        .map_err(|e| format!("watch task failed: {e}"))?;
    let process = match watch {
        Some(Ok(w)) => watch_end(&w, args.clk_tck, stats.completed()),
        Some(Err(e)) => json!({"error": e}),
        None => Value::Null,
    };

    let window_us = stats
        .last_done_us
        .max(args.duration().as_micros() as u64)
        .max(1);
    let window_s = window_us as f64 / 1e6;
    let own_cpu_ms = match (own_start, procstat::cpu_ticks(me).ok()) {
        (Some(a), Some(b)) => b.saturating_sub(a) * 1000 / args.clk_tck.max(1),
        _ => 0,
    };
    let round1 = |v: f64| (v * 10.0).round() / 10.0;
    let statuses: serde_json::Map<String, Value> = stats
        .statuses
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    Ok(json!({
        "scenario": args.scenario,
        "target": args.target,
        "url": args.url,
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate_target": args.rate,
        "connections": args.connections,
        "keep_alive": !args.fresh_connections,
        "stream": args.stream,
        "body_bytes": shared.bodies[0].len(),
        "distinct_bodies": shared.bodies.len(),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "requests": stats.completed(),
        "ok": stats.ok,
        "errors": {
            "non_2xx": stats.non_2xx,
            "unexpected": stats.unexpected,
            "io": stats.io_errors,
            "timeouts": stats.timeouts,
            "unsent": stats.unsent,
        },
        "statuses": statuses,
        "first_error": stats.first_error,
        "rps": round1(stats.completed() as f64 / window_s),
        "latency_us": percentiles(&stats.latency),
        "ttfb_us": percentiles(&stats.ttfb),
        "send_lag_us": percentiles(&stats.send_lag),
        "overhead_us_mean": if stats.overhead_count > 0 {
            json!(round1(stats.overhead_sum_us as f64 / stats.overhead_count as f64))
        } else {
            Value::Null
        },
        "overhead_samples": stats.overhead_count,
        "bytes_received": stats.bytes_received,
        "connections_opened": opened,
        "process": process,
        "generator": {
            "cpu_ms": own_cpu_ms,
            "cpu_pct": round1(own_cpu_ms as f64 / 10.0 / window_s),
        },
    }))
}

#[cfg(test)]
mod tests {
    //! The load loops against an in-process HTTP/1.1 target on 127.0.0.1. Only counts,
    //! orderings and bounds that follow from the order of events are asserted, never speed.

    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::task::{Context, Poll};

    use clap::Parser;
    use http::StatusCode;
    use http::header::CONTENT_LENGTH;
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper::{Response, server};
    use tokio::net::TcpListener;
    use tokio::task::{JoinHandle, JoinSet};

    use super::*;
    use crate::{Cli, Command};

    /// An answer body: chunks handed over through a channel, at once or later by a task.
    struct Chunks(mpsc::UnboundedReceiver<Bytes>);

    impl hyper::body::Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
        }
    }

    /// An answer with a body of known length, sent in one piece.
    fn answer(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: &'static str,
    ) -> Response<Chunks> {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(Bytes::from_static(body.as_bytes()));
        let mut resp = Response::new(Chunks(rx));
        *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
        resp.headers_mut().insert(CONTENT_LENGTH, body.len().into());
        for (name, value) in headers {
            resp.headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        resp
    }

    /// A streamed (chunked) answer: `events` one after the other, `gap` apart.
    fn sse(events: &'static [&'static str], gap: Duration) -> Response<Chunks> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                if tx.send(Bytes::from_static(e.as_bytes())).is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(Chunks(rx));
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        resp
    }

    /// The in-process target; stopped (with every connection it serves) when dropped.
    struct Target {
        url: String,
        /// Requests seen, warm-up included.
        requests: Arc<AtomicU64>,
        /// TCP connections accepted.
        accepted: Arc<AtomicU64>,
        task: JoinHandle<()>,
    }

    impl Drop for Target {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Starts a target on 127.0.0.1 answering each request with `handler(n, body)`, `n` being
    /// the request's rank among all the target has seen (1 for the first).
    async fn serve<F, Fut>(handler: F) -> Target
    where
        F: Fn(u64, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Chunks>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(handler);
        let task = {
            let (requests, accepted) = (requests.clone(), accepted.clone());
            tokio::spawn(async move {
                // Dropping the set (when the task is aborted) aborts every connection.
                let mut conns = JoinSet::new();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    accepted.fetch_add(1, SeqCst);
                    // Each chunk of a streamed answer leaves when written, as from a real
                    // server, not held back by Nagle's algorithm until the last one.
                    let _ = tcp.set_nodelay(true);
                    let (handler, requests) = (handler.clone(), requests.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (handler, requests) = (handler.clone(), requests.clone());
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = requests.fetch_add(1, SeqCst) + 1;
                            Ok::<_, Infallible>(handler(n, body).await)
                        }
                    });
                    conns.spawn(async move {
                        let _ = server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                    while conns.try_join_next().is_some() {}
                }
            })
        };
        Target {
            url: format!("http://{addr}/v1/chat/completions"),
            requests,
            accepted,
            task,
        }
    }

    /// `palisade-bench load --url URL OPTIONS...` as the command line parses it.
    fn load_args(url: &str, options: &[&str]) -> LoadArgs {
        let argv = [
            "palisade-bench",
            "load",
            "--url",
            url,
            "--prompt-bytes",
            "64",
        ]
        .into_iter()
        .chain(options.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(Cli {
                command: Command::Load(args),
            }) => *args,
            Ok(_) => panic!("not a load command"),
            Err(e) => panic!("invalid options {options:?}: {e}"),
        }
    }

    async fn load(url: &str, options: &[&str]) -> Value {
        run(&load_args(url, options)).await.expect("load run")
    }

    /// The count at `path` (keys separated by dots).
    fn count(result: &Value, path: &str) -> u64 {
        path.split('.')
            .fold(result, |v, k| &v[k])
            .as_u64()
            .unwrap_or_else(|| panic!("`{path}` is not a count in {result:#}"))
    }

    /// Non-2xx answers, I/O errors (timeouts included) and unsent requests.
    fn errors(result: &Value) -> u64 {
        count(result, "errors.non_2xx")
            + count(result, "errors.io")
            + count(result, "errors.unsent")
    }

    /// Scheduled requests of an open-loop window: each ends up answered, failed, or unsent.
    fn accounted(result: &Value) -> u64 {
        count(result, "requests") + count(result, "errors.io") + count(result, "errors.unsent")
    }

    fn assert_ordered_percentiles(result: &Value, key: &str) {
        let p = |q: &str| count(result, &format!("{key}.{q}"));
        let (p50, p90, p99, p999, max) = (p("p50"), p("p90"), p("p99"), p("p999"), p("max"));
        assert!(
            0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{key} percentiles out of order: {:#}",
            result[key]
        );
    }

    #[tokio::test]
    async fn closed_loop_counts_answers_and_reads_the_overhead_header() {
        let target = serve(|_, _| async {
            answer(200, &[("x-palisade-overhead-us", "7")], r#"{"ok":true}"#)
        })
        .await;
        let r = load(&target.url, &["-c", "2", "-d", "0.5", "--warmup", "0.1"]).await;

        assert_eq!(r["mode"], "closed");
        assert_eq!(r["keep_alive"], true);
        let requests = count(&r, "requests");
        assert!(requests > 0, "{r:#}");
        assert_eq!(count(&r, "ok"), requests);
        assert_eq!(errors(&r), 0, "{r:#}");
        assert_eq!(count(&r, "errors.timeouts"), 0);
        assert!(r["first_error"].is_null(), "{r:#}");
        assert_eq!(count(&r, "statuses.200"), requests);
        assert_eq!(r["overhead_us_mean"].as_f64(), Some(7.0), "{r:#}");
        assert_eq!(count(&r, "overhead_samples"), requests);
        assert_eq!(count(&r, "bytes_received"), requests * 11);
        assert!(r["rps"].as_f64().is_some_and(|v| v > 0.0), "{r:#}");
        assert_eq!(count(&r, "latency_us.count"), requests);
        assert_eq!(count(&r, "ttfb_us.count"), requests);
        assert_ordered_percentiles(&r, "latency_us");
        assert_ordered_percentiles(&r, "ttfb_us");
        // No schedule in a closed loop.
        assert_eq!(count(&r, "send_lag_us.count"), 0);
        // Kept alive: one connection per worker, for the warm-up and the window alike.
        assert_eq!(count(&r, "connections_opened"), 2);
        assert_eq!(target.accepted.load(SeqCst), 2);
        assert!(target.requests.load(SeqCst) >= requests);
    }

    #[tokio::test]
    async fn open_loop_sends_every_scheduled_request() {
        let target = serve(|_, _| async { answer(200, &[], "{}") }).await;
        let r = load(
            &target.url,
            &["--rate", "200", "-c", "4", "-d", "1.5", "--warmup", "0.2"],
        )
        .await;

        assert_eq!(r["mode"], "open");
        assert_eq!(r["rate_target"].as_f64(), Some(200.0));
        // 1.5 s at 200 RPS: 300 requests scheduled in the window (±1 at its edges).
        let requests = count(&r, "requests");
        assert!((150..=330).contains(&requests), "{r:#}");
        assert!((299..=301).contains(&accounted(&r)), "{r:#}");
        assert_eq!(count(&r, "ok"), requests);
        assert_eq!(errors(&r), 0, "{r:#}");
        assert_eq!(count(&r, "latency_us.count"), requests);
        assert_eq!(count(&r, "send_lag_us.count"), requests);
        assert_ordered_percentiles(&r, "latency_us");
        assert!(target.requests.load(SeqCst) >= requests);
    }

    #[tokio::test]
    async fn open_loop_charges_a_stall_to_every_request_it_delays() {
        // One connection at 100 RPS: while the 50th request (in the window, after 20 warm-up
        // ones) is held 300 ms, the next ones wait in the generator. Request k after the held
        // one was due k × 10 ms after it and cannot finish before it, so its latency is at
        // least 300 − 10k ms whatever the speed of the machine: 21 requests of the ~200 of the
        // window take 100 ms or more, 31 share at least 4.65 s.
        let target = serve(|n, _| async move {
            if n == 50 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            answer(200, &[], "{}")
        })
        .await;
        let r = load(
            &target.url,
            &["--rate", "100", "-c", "1", "-d", "2", "--warmup", "0.2"],
        )
        .await;

        let requests = count(&r, "requests");
        assert!((199..=201).contains(&accounted(&r)), "{r:#}");
        assert_eq!(count(&r, "ok"), requests);
        assert_eq!(errors(&r), 0, "{r:#}");
        assert!(
            target.requests.load(SeqCst) >= 50,
            "the stall never happened"
        );
        let lat = |q: &str| count(&r, &format!("latency_us.{q}"));
        assert!(lat("max") >= 300_000, "{:#}", r["latency_us"]);
        assert!(lat("p99") >= 200_000, "{:#}", r["latency_us"]);
        // Only holds when the requests queued behind the stall are charged their wait: timed
        // from their actual send, they would look as fast as the others.
        assert!(lat("p90") >= 80_000, "{:#}", r["latency_us"]);
        assert!(
            r["latency_us"]["mean"]
                .as_f64()
                .is_some_and(|m| m >= 20_000.0),
            "{:#}",
            r["latency_us"]
        );
        assert!(lat("p50") < lat("p90"), "{:#}", r["latency_us"]);
        // They also left late, and the generator says so.
        assert!(
            count(&r, "send_lag_us.p99") >= 200_000,
            "{:#}",
            r["send_lag_us"]
        );
    }

    #[tokio::test]
    async fn error_answers_are_counted_not_timed() {
        let target = serve(|_, _| async {
            answer(
                500,
                &[("x-palisade-overhead-us", "7")],
                r#"{"error":"boom"}"#,
            )
        })
        .await;
        let r = load(&target.url, &["-c", "2", "-d", "0.3", "--warmup", "0"]).await;

        let requests = count(&r, "requests");
        assert!(requests > 0, "{r:#}");
        assert_eq!(count(&r, "ok"), 0);
        assert_eq!(count(&r, "errors.non_2xx"), requests);
        assert_eq!(count(&r, "statuses.500"), requests);
        assert_eq!(count(&r, "errors.io"), 0);
        assert!(r["first_error"].is_null(), "{r:#}");
        assert_eq!(count(&r, "latency_us.count"), 0);
        assert_eq!(count(&r, "ttfb_us.count"), 0);
        assert_eq!(count(&r, "latency_us.p99"), 0);
        assert_eq!(count(&r, "overhead_samples"), 0);
        assert!(r["overhead_us_mean"].is_null(), "{r:#}");
    }

    #[tokio::test]
    async fn answers_without_the_expected_text_are_counted_not_timed() {
        // Every other answer is a JSON-RPC error sent as HTTP 200, as an MCP refusal is.
        let target = serve(|n, _| async move {
            if n % 2 == 0 {
                answer(
                    200,
                    &[],
                    r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32003}}"#,
                )
            } else {
                answer(200, &[], r#"{"jsonrpc":"2.0","id":1,"result":{}}"#)
            }
        })
        .await;
        let args = [
            "-c",
            "1",
            "-d",
            "0.3",
            "--warmup",
            "0",
            "--expect",
            r#""result""#,
        ];
        let r = load(&target.url, &args).await;

        let requests = count(&r, "requests");
        let unexpected = count(&r, "errors.unexpected");
        assert!(requests >= 2, "{r:#}");
        assert_eq!(count(&r, "ok") + unexpected, requests, "{r:#}");
        assert!(
            unexpected >= requests / 2 - 1 && unexpected <= requests / 2 + 1,
            "{r:#}"
        );
        assert_eq!(count(&r, "latency_us.count"), count(&r, "ok"));
        assert_eq!(count(&r, "statuses.200"), requests);
        assert!(
            r["first_error"].as_str().unwrap().contains("--expect"),
            "{r:#}"
        );
        // Without --expect, the same answers all count as served.
        let r = load(&target.url, &["-c", "1", "-d", "0.2", "--warmup", "0"]).await;
        assert_eq!(count(&r, "errors.unexpected"), 0);
        assert_eq!(count(&r, "ok"), count(&r, "requests"));
    }

    #[tokio::test]
    async fn refused_connections_are_io_errors() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
        // 0.2 s at 50 RPS: 10 scheduled requests, each refused.
        let r = load(
            &url,
            &["--rate", "50", "-c", "2", "-d", "0.2", "--warmup", "0"],
        )
        .await;

        assert_eq!(count(&r, "requests"), 0);
        assert_eq!(count(&r, "errors.io"), 10, "{r:#}");
        assert_eq!(count(&r, "errors.timeouts"), 0);
        assert_eq!(count(&r, "errors.unsent"), 0);
        let first = r["first_error"].as_str().unwrap_or_default();
        assert!(first.contains("connect"), "{r:#}");
        assert_eq!(count(&r, "latency_us.count"), 0);
        assert_eq!(count(&r, "connections_opened"), 0);
    }

    #[tokio::test]
    async fn unanswered_requests_time_out() {
        let target = serve(|_, _| std::future::pending()).await;
        let r = load(
            &target.url,
            &[
                "-c",
                "1",
                "-d",
                "1",
                "--warmup",
                "0",
                "--timeout",
                "0.2",
                "--drain-timeout",
                "0.5",
            ],
        )
        .await;

        // Each try lasts the 0.2 s timeout: at most 5 start in the 1 s window.
        let timeouts = count(&r, "errors.timeouts");
        assert!((1..=5).contains(&timeouts), "{r:#}");
        // Timeouts are among the I/O errors, and the only ones here.
        assert_eq!(count(&r, "errors.io"), timeouts);
        assert_eq!(r["first_error"], "timeout");
        assert_eq!(count(&r, "requests"), 0);
        assert_eq!(count(&r, "latency_us.count"), 0);
        // A connection that timed out may still carry the late answer: never reused.
        assert_eq!(count(&r, "connections_opened"), timeouts);
        assert_eq!(target.accepted.load(SeqCst), timeouts);
    }

    #[tokio::test]
    async fn fresh_connections_carry_one_request_each() {
        let target = serve(|_, _| async { answer(200, &[], "{}") }).await;
        let r = load(
            &target.url,
            &[
                "-c",
                "2",
                "-d",
                "0.4",
                "--warmup",
                "0.1",
                "--fresh-connections",
            ],
        )
        .await;

        assert_eq!(r["keep_alive"], false);
        let requests = count(&r, "requests");
        assert!(requests > 0, "{r:#}");
        assert_eq!(count(&r, "ok"), requests);
        assert_eq!(errors(&r), 0, "{r:#}");
        // Warm-up requests open connections too.
        let opened = count(&r, "connections_opened");
        assert!(opened >= requests, "{r:#}");
        assert_eq!(target.accepted.load(SeqCst), opened);
        assert_eq!(target.requests.load(SeqCst), opened);
    }

    #[tokio::test]
    async fn streamed_answers_report_time_to_first_byte() {
        const EVENTS: &[&str] = &[
            "data: {\"n\":1}\n\n",
            "data: {\"n\":2}\n\n",
            "data: [DONE]\n\n",
        ];
        let target = serve(|_, body: Bytes| async move {
            let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
            if asked["stream"] == true {
                sse(EVENTS, Duration::from_millis(20))
            } else {
                answer(400, &[], "not a stream request")
            }
        })
        .await;
        let r = load(
            &target.url,
            &["-c", "2", "-d", "0.5", "--warmup", "0.1", "--stream"],
        )
        .await;

        assert_eq!(r["stream"], true);
        let requests = count(&r, "requests");
        assert!(requests > 0, "{r:#}");
        assert_eq!(count(&r, "ok"), requests);
        assert_eq!(errors(&r), 0, "{r:#}");
        let event_bytes: usize = EVENTS.iter().map(|e| e.len()).sum();
        assert_eq!(count(&r, "bytes_received"), requests * event_bytes as u64);
        assert_eq!(count(&r, "ttfb_us.count"), requests);
        assert_ordered_percentiles(&r, "ttfb_us");
        assert_ordered_percentiles(&r, "latency_us");
        // The last event leaves 40 ms after the first.
        assert!(
            count(&r, "latency_us.p50") >= 40_000,
            "{:#}",
            r["latency_us"]
        );
        assert!(
            count(&r, "ttfb_us.p50") < count(&r, "latency_us.p50"),
            "ttfb {:#} latency {:#}",
            r["ttfb_us"],
            r["latency_us"]
        );
    }

    #[tokio::test]
    async fn open_loop_counts_requests_left_unsent_at_the_drain_deadline() {
        // Each answer takes 100 ms on the one connection, requests are due every 10 ms: by the
        // drain deadline (0.5 s window + 0.3 s) at most 8 have gone out, of 50 scheduled.
        let target = serve(|_, _| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer(200, &[], "{}")
        })
        .await;
        let r = load(
            &target.url,
            &[
                "--rate",
                "100",
                "-c",
                "1",
                "-d",
                "0.5",
                "--warmup",
                "0",
                "--drain-timeout",
                "0.3",
            ],
        )
        .await;

        assert_eq!(accounted(&r), 50, "{r:#}");
        assert!(count(&r, "requests") <= 8, "{r:#}");
        assert!(count(&r, "errors.unsent") >= 42, "{r:#}");
        // Only the request in flight at the deadline is cut off.
        assert!(count(&r, "errors.timeouts") <= 1, "{r:#}");
        assert_eq!(count(&r, "errors.io"), count(&r, "errors.timeouts"));
        assert!(target.requests.load(SeqCst) <= 8);
    }
}
