//! A small Redis client: the RESP2 wire protocol over one TCP connection (or TLS over it),
//! commands sent as a pipeline. Only what the shared counters need (`cluster.rs`): connect,
//! authenticate, select a database, run a batch of commands and read their replies, every
//! read bounded.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Largest reply read (the counters' replies are a few bytes per bucket or group; a reply is
/// parsed again from its start as it arrives, so the bound also bounds that work).
const MAX_REPLY: usize = 1 << 20;
/// Deepest nesting of arrays accepted in a reply.
const MAX_DEPTH: usize = 4;

/// Where the Redis server is: `redis://[[user]:password@]host[:port][/db]`, or `rediss://`
/// for TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Over TLS (`rediss://`).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never reaches a log line.
        write!(f, "{self}")
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the user nor the password is shown.
        let auth = if self.user.is_some() || self.password.is_some() {
            "***@"
        } else {
            ""
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        write!(f, "{scheme}://{auth}{host}:{}/{}", self.port, self.db)
    }
}

/// `%XX` escapes in a URL's user or password.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a `%` in the user or password is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user or password is not UTF-8".to_string())
}

impl RedisUrl {
    /// Parses a `redis://` URL; anything else (`rediss://`, a path that is not a database
    /// number, a query) is refused with the reason.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("redis", rest)) => (false, rest),
            Some(("rediss", rest)) => (true, rest),
            _ => {
                return Err(
                    "expected `redis://[[user]:password@]host[:port][/db]` (or `rediss://`)".into(),
                );
            }
        };
        // The user and password end at the last `@` (a password may hold `/` or `@`); no part of
        // them is ever repeated in an error.
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        if rest.contains(['?', '#']) {
            return Err(
                "query parameters are not supported; put the database after the `/`".into(),
            );
        }
        let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => {
                let (u, p) = match a.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (a, None),
                };
                let user = (!u.is_empty()).then(|| percent_decode(u)).transpose()?;
                let password = p.map(percent_decode).transpose()?;
                // `redis://secret@host` is the password alone (as redis-cli reads it).
                match (user, password) {
                    (Some(u), None) => (None, Some(u)),
                    other => other,
                }
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 address lacks its `]`")?;
            (h.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err("the URL names no host".into());
        }
        let port = match port {
            None | Some("") => 6379,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port is not a number from 1 to 65535")?,
        };
        let db = match path {
            "" => 0,
            p => p
                .parse::<u32>()
                .map_err(|_| "what follows the host's `/` is not a database number")?,
        };
        Ok(RedisUrl {
            tls,
            host,
            port,
            user,
            password,
            db,
        })
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// A number however Redis wrote it (an integer, or a bulk string such as `INCRBYFLOAT`'s).
    pub fn number(&self) -> Option<f64> {
        match self {
            Reply::Int(i) => Some(*i as f64),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((&buf[at..at + end], at + end + 2))
}

fn int(text: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| "a length or integer in the reply is not a number".to_string())
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buf, at + 1) else {
        return Ok(None);
    };
    let utf8 = |t: &[u8]| String::from_utf8_lossy(t).into_owned();
    match kind {
        b'+' => Ok(Some((Reply::Status(utf8(text)), next))),
        b'-' => Ok(Some((Reply::Error(utf8(text)), next))),
        b':' => Ok(Some((Reply::Int(int(text)?), next))),
        b'$' => {
            let len = int(text)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            if len > MAX_REPLY {
                return Err(format!("a {len}-byte string in the reply is too large"));
            }
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err("a string in the reply is not followed by CRLF".into());
            }
            Ok(Some((
                Reply::Bulk(Some(buf[next..next + len].to_vec())),
                next + len + 2,
            )))
        }
        b'*' => {
            let len = int(text)?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            if depth >= MAX_DEPTH {
                return Err("the reply nests arrays too deeply".into());
            }
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            // Each element takes at least three bytes: a count beyond that is a lie.
            if len > MAX_REPLY / 3 {
                return Err(format!(
                    "an array of {len} elements in the reply is too large"
                ));
            }
            let mut items = Vec::with_capacity(len.min(1024));
            let mut pos = next;
            for _ in 0..len {
                match parse_at(buf, pos, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        other => Err(format!(
            "unexpected reply type byte 0x{other:02x}: is this a Redis server?"
        )),
    }
}

/// A command's arguments in the protocol's form.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The connection's byte stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }
}

/// A connection to one Redis server.
pub struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    timeout: Duration,
}

/// Why a command batch failed: the connection (dropped afterwards) or Redis's own error.
pub type RespResult<T> = Result<T, String>;

impl Conn {
    /// Connects (over TLS with `tls`'s roots for a `rediss://` URL), authenticates and selects
    /// the database, each step within `timeout`.
    pub async fn connect(
        url: &RedisUrl,
        timeout: Duration,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> RespResult<Conn> {
        let addr = (url.host.as_str(), url.port);
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("no connection to {url} within {timeout:?}"))?
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = if url.tls {
            let config = tls.ok_or("a `rediss://` URL needs TLS settings")?;
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|_| format!("`{}` cannot be checked against a certificate", url.host))?;
            let tls = tokio::time::timeout(
                timeout,
                tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| format!("no TLS session with {url} within {timeout:?}"))?
            .map_err(|e| {
                format!(
                    "TLS with {url} failed: {}",
                    crate::upstream::delivery_error(&e)
                )
            })?;
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(4096),
            timeout,
        };
        let mut hello: Vec<Vec<Vec<u8>>> = Vec::new();
        match (&url.user, &url.password) {
            (Some(u), Some(p)) => {
                hello.push(vec![b"AUTH".to_vec(), u.clone().into(), p.clone().into()])
            }
            (None, Some(p)) => hello.push(vec![b"AUTH".to_vec(), p.clone().into()]),
            _ => {}
        }
        if url.db != 0 {
            hello.push(vec![b"SELECT".to_vec(), url.db.to_string().into()]);
        }
        hello.push(vec![b"PING".to_vec()]);
        for reply in conn.run(&hello).await? {
            if let Reply::Error(e) = reply {
                return Err(format!("{url} refused the connection: {e}"));
            }
        }
        Ok(conn)
    }

    /// Sends `cmds` in one write and reads one reply each (Redis's errors are replies too).
    pub async fn run(&mut self, cmds: &[Vec<Vec<u8>>]) -> RespResult<Vec<Reply>> {
        let mut out = Vec::new();
        for c in cmds {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut out, &args);
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| format!("write to Redis: {e}"))?;
            let mut replies = Vec::with_capacity(cmds.len());
            while replies.len() < cmds.len() {
                match parse(&self.buf)? {
                    Some((reply, used)) => {
                        self.buf.drain(..used);
                        replies.push(reply);
                    }
                    None => {
                        if self.buf.len() > MAX_REPLY {
                            return Err("Redis's reply is too large".to_string());
                        }
                        let mut chunk = vec![0u8; 64 * 1024];
                        let n = self.stream.read(&mut chunk).await.map_err(|e| {
                            format!("read from Redis: {}", crate::upstream::delivery_error(&e))
                        })?;
                        if n == 0 {
                            return Err("Redis closed the connection".to_string());
                        }
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            Ok(replies)
        })
        .await
        .map_err(|_| format!("Redis did not answer within {timeout:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("127.0.0.1", 6390, 2));
        assert_eq!((u.user, u.password), (None, None));
        let u = RedisUrl::parse("redis://app:p%40ss@cache.internal").unwrap();
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss"));
        assert_eq!((u.port, u.db), (6379, 0));
        assert_eq!(u.to_string(), "redis://***@cache.internal:6379/0");
        assert!(!format!("{u:?}").contains("app"));
        assert!(!format!("{u:?}").contains("p@ss"));
        let u = RedisUrl::parse("redis://:secret@[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!((u.user, u.password.as_deref()), (None, Some("secret")));
        let u = RedisUrl::parse("redis://secret@localhost/").unwrap();
        assert_eq!(u.password.as_deref(), Some("secret"));
        // A password with `/` and `@` in it, never repeated in an error.
        let u = RedisUrl::parse("redis://app:Sup3r/S3cr@t@127.0.0.1:7000/2").unwrap();
        assert_eq!(u.password.as_deref(), Some("Sup3r/S3cr@t"));
        assert_eq!((u.port, u.db), (7000, 2));
        for bad in ["redis://app:Sup3r/x@h:nope/0", "redis://app:Sup3r/x@h/db"] {
            let e = RedisUrl::parse(bad).unwrap_err();
            assert!(!e.contains("Sup3r") && !e.contains("nope"), "{e}");
        }
        let u = RedisUrl::parse("rediss://:pw@cache.example.com:6380").unwrap();
        assert!(u.tls);
        assert_eq!(u.to_string(), "rediss://***@cache.example.com:6380/0");
        for bad in [
            "http://h",
            "h:6379",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://h?db=1",
            "redis://a:%zz@h",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(
            parse(b"+OK\r\n").unwrap(),
            Some((Reply::Status("OK".into()), 5))
        );
        assert_eq!(parse(b":-12\r\n").unwrap(), Some((Reply::Int(-12), 6)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(
            parse(b"-ERR wrong\r\n").unwrap(),
            Some((Reply::Error("ERR wrong".into()), 12))
        );
        let arr = b"*3\r\n$3\r\n1.5\r\n:7\r\n*1\r\n+x\r\n";
        let (r, used) = parse(arr).unwrap().unwrap();
        assert_eq!(used, arr.len());
        let Reply::Array(Some(items)) = r else {
            panic!("{r:?}")
        };
        assert_eq!(items[0].number(), Some(1.5));
        assert_eq!(items[1].number(), Some(7.0));
        // Every prefix of a reply is incomplete, not an error.
        for n in 0..arr.len() {
            assert_eq!(parse(&arr[..n]).unwrap(), None, "{n}");
        }
        assert!(parse(b"$3\r\nabcd\r\n").is_err());
        assert!(parse(b"*99999999999\r\n").is_err());
        assert!(parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n").is_err());
        assert!(parse(b"HTTP/1.1 400\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
