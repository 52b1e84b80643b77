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

/// The raw events of a run, each with its terminator: an event ends with an empty line, any
/// two line ends in a row (`\n`, `\r\n` or a lone `\r`, in any mix).
pub fn raw_events(run: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut line_start = false;
    while i < run.len() {
        let b = run[i];
        if b == b'\n' || b == b'\r' {
            let end = if b == b'\r' && run.get(i + 1) == Some(&b'\n') {
                i + 2
            } else {
                i + 1
            };
            if line_start {
                out.push(&run[start..end]);
                start = end;
                line_start = false;
            } else {
                line_start = true;
            }
            i = end;
        } else {
            line_start = false;
            i += 1;
        }
    }
    if start < run.len() {
        out.push(&run[start..]);
    }
    out
}

/// The lines of `run` as the SSE specification reads them: a line ends at `\r\n`, `\n` or a
/// lone `\r` (a client reads a bare `\r` as a line end, so the gateway must too). Like
/// splitting on the line ends, a run that ends with one yields a last, empty line.
pub(crate) fn lines(run: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(run);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(p) => {
                let skip = if r[p] == b'\r' && r.get(p + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = Some(&r[p + skip..]);
                Some(&r[..p])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Calls `f(event_name, data)` for each event in a run of complete events. Multi-line data is
/// joined with `\n` as the SSE specification says; lines end at `\r\n`, `\n` or `\r`, and a
/// byte-order mark opening the run is skipped.
pub fn for_each_event(run: &[u8], mut f: impl FnMut(&str, &[u8])) {
    let mut name = String::new();
    let mut data: Vec<u8> = Vec::new();
    let mut has_data = false;
    let run = run.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(run);
    for line in lines(run) {
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
    fn events_end_at_any_two_line_ends() {
        let run = b"data: 1\n\ndata: 2\r\n\r\ndata: 3\r\rdata: 4\n\r\ndata: 5\r\n\ndata: 6";
        let events: Vec<&[u8]> = raw_events(run);
        assert_eq!(
            events,
            [
                &b"data: 1\n\n"[..],
                b"data: 2\r\n\r\n",
                b"data: 3\r\r",
                b"data: 4\n\r\n",
                b"data: 5\r\n\n",
                b"data: 6"
            ]
        );
    }

    #[test]
    fn every_line_end_the_specification_allows_is_read() {
        let mut got = Vec::new();
        let run =
            b"\xEF\xBB\xBFevent: a\rdata: 1\r\rdata: 2\r\n\r\ndata: 3\n\r\ndata: 4\ndata: 5\n\n";
        for_each_event(run, |n, d| got.push((n.to_string(), d.to_vec())));
        let want: Vec<(String, Vec<u8>)> = vec![
            ("a".into(), b"1".to_vec()),
            (String::new(), b"2".to_vec()),
            (String::new(), b"3".to_vec()),
            (String::new(), b"4\n5".to_vec()),
        ];
        assert_eq!(got, want);
    }

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
