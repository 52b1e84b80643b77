//! Incremental server-sent-events framing: forward whole events only, hold just the partial tail.

use bytes::{Bytes, BytesMut};

/// Splits a byte stream into runs of complete SSE events. A chunk that ends on an event
/// boundary is passed through without copying; only an incomplete trailing event is held.
#[derive(Debug)]
pub struct SseSplitter {
    buf: BytesMut,
    max_pending: usize,
}

/// An event grew beyond the allowed size without terminating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

/// Index just past the last event terminator (`\n\n`, `\r\n\r\n` or `\r\r`) in `b`.
fn last_boundary(b: &[u8]) -> Option<usize> {
    let mut i = b.len();
    while i >= 2 {
        let (p, c) = (b[i - 2], b[i - 1]);
        if (c == b'\n' && (p == b'\n' || (p == b'\r' && i >= 3 && b[i - 3] == b'\n')))
            || (c == b'\r' && p == b'\r')
        {
            return Some(i);
        }
        i -= 1;
    }
    None
}

impl SseSplitter {
    /// A splitter that refuses to hold more than `max_pending` bytes of one unfinished event.
    pub fn new(max_pending: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_pending,
        }
    }

    /// Feeds a chunk; returns the bytes that end on an event boundary (possibly empty).
    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, EventTooLarge> {
        if self.buf.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => return Ok(chunk),
                Some(end) => {
                    let mut head = chunk;
                    let tail = head.split_off(end);
                    self.buf.extend_from_slice(&tail);
                    return self.check(head);
                }
                None => {
                    self.buf.extend_from_slice(&chunk);
                    return self.check(Bytes::new());
                }
            }
        }
        self.buf.extend_from_slice(&chunk);
        let out = match last_boundary(&self.buf) {
            Some(end) => self.buf.split_to(end).freeze(),
            None => Bytes::new(),
        };
        self.check(out)
    }

    fn check(&self, out: Bytes) -> Result<Bytes, EventTooLarge> {
        if self.buf.len() > self.max_pending {
            Err(EventTooLarge)
        } else {
            Ok(out)
        }
    }

    /// Bytes of an unfinished event currently held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes whatever is held (the stream ended without a final terminator).
    pub fn take_rest(&mut self) -> Bytes {
        self.buf.split().freeze()
    }
}

/// The raw events of a run, each with its terminator.
pub fn raw_events(run: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < run.len() {
        let rest = &run[i..];
        let term = if rest.starts_with(b"\r\n\r\n") {
            4
        } else if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            2
        } else {
            0
        };
        if term > 0 {
            out.push(&run[start..i + term]);
            i += term;
            start = i;
        } else {
            i += 1;
        }
    }
    if start < run.len() {
        out.push(&run[start..]);
    }
    out
}

/// Calls `f(event_name, data)` for each event in a run of complete events. Multi-line data is
/// joined with `\n` as the SSE specification says.
pub fn for_each_event(run: &[u8], mut f: impl FnMut(&str, &[u8])) {
    let mut name = String::new();
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    for line in run.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if has_data {
                f(&name, &data);
            }
            name.clear();
            data.clear();
            has_data = false;
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"data:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            if has_data {
                data.push(b'\n');
            }
            data.extend_from_slice(rest);
            has_data = true;
        } else if let Some(rest) = line.strip_prefix(b"event:") {
            let rest = rest.strip_prefix(b" ").unwrap_or(rest);
            name = String::from_utf8_lossy(rest).into_owned();
        }
    }
    if has_data {
        f(&name, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_events_pass_without_holding() {
        let mut s = SseSplitter::new(1024);
        let c = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        assert_eq!(s.push(c.clone()).unwrap(), c);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn split_event_is_held_until_complete() {
        let mut s = SseSplitter::new(1024);
        assert_eq!(
            &s.push(Bytes::from_static(b"data: a\n\ndata: {\"x\""))
                .unwrap()[..],
            b"data: a\n\n"
        );
        assert_eq!(s.pending(), 10);
        assert_eq!(&s.push(Bytes::from_static(b":1}\n")).unwrap()[..], b"");
        assert_eq!(
            &s.push(Bytes::from_static(b"\nevent: e")).unwrap()[..],
            b"data: {\"x\":1}\n\n"
        );
        assert_eq!(&s.take_rest()[..], b"event: e");
    }

    #[test]
    fn crlf_boundaries_and_overflow() {
        let mut s = SseSplitter::new(8);
        assert_eq!(
            &s.push(Bytes::from_static(b"data: a\r\n\r\n")).unwrap()[..],
            b"data: a\r\n\r\n"
        );
        assert!(s.push(Bytes::from_static(b"data: 0123456789")).is_err());
    }

    #[test]
    fn raw_events_keep_terminators() {
        let ev = raw_events(b"data: a\n\ndata: b\r\n\r\ntail");
        assert_eq!(
            ev,
            vec![&b"data: a\n\n"[..], &b"data: b\r\n\r\n"[..], &b"tail"[..]]
        );
    }

    #[test]
    fn events_are_parsed_with_names_and_multiline_data() {
        let mut got = Vec::new();
        for_each_event(
            b"event: message_start\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\n: comment\n\n",
            |n, d| got.push((n.to_string(), String::from_utf8(d.to_vec()).unwrap())),
        );
        assert_eq!(
            got,
            vec![
                ("message_start".into(), "{\"a\":1}".into()),
                (String::new(), "x\ny".into())
            ]
        );
    }
}
