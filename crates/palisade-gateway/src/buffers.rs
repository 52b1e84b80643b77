//! One bound on the bytes the gateway holds in buffered bodies at once.
//!
//! Each buffered body has its own limit (a request's `max_body_bytes`, 64 MiB for an upstream's
//! answer), but a burst of large ones would multiply it: twelve 60 MB answers at once took
//! 1.26 GB. Every buffered body takes its bytes from one budget, [`MAX_BUFFERED`] in all, as they
//! arrive, and gives them back when its request is done; a body that does not fit is refused
//! (503: the gateway is busy), and the requests already holding bytes go on.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;

/// Bytes all buffered bodies may hold at once.
pub(crate) const MAX_BUFFERED: usize = 512 << 20;

static HELD: AtomicUsize = AtomicUsize::new(0);

/// Bytes of the budget held by one request; given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Held(usize);

impl Held {
    /// Takes `n` more bytes, if they fit.
    fn take(&mut self, n: usize, max: usize) -> bool {
        let mut now = HELD.load(Ordering::Relaxed);
        loop {
            let Some(after) = now.checked_add(n).filter(|&a| a <= max) else {
                return false;
            };
            match HELD.compare_exchange_weak(now, after, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.0 += n;
                    return true;
                }
                Err(seen) => now = seen,
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub(crate) enum BufferError<E> {
    /// It is longer than its own limit.
    TooLarge,
    /// The gateway holds too many bytes of other bodies.
    Busy,
    /// Reading it failed.
    Body(E),
}

/// Working memory a body the gateway parses takes besides its bytes, per byte: its JSON tree,
/// the texts the policies read from it, a rewritten copy (an estimate: measured with policies,
/// bodies at the budget took about half as much again).
const PARSE_COST: usize = 2;

/// Reads `body` whole, at most `limit` bytes, taking its bytes from the shared budget; the
/// returned [`Held`] gives them back when dropped (keep it while the bytes are in use). With
/// `parsed`, the body will be parsed and rewritten, and its working memory is taken too.
pub(crate) async fn collect<B: Body<Data = Bytes>>(
    body: B,
    limit: usize,
    parsed: bool,
) -> Result<(Bytes, Held), BufferError<B::Error>> {
    let per_byte = if parsed { 1 + PARSE_COST } else { 1 };
    collect_within(body, limit, MAX_BUFFERED, per_byte).await
}

async fn collect_within<B: Body<Data = Bytes>>(
    body: B,
    limit: usize,
    max: usize,
    per_byte: usize,
) -> Result<(Bytes, Held), BufferError<B::Error>> {
    let mut held = Held::default();
    let mut out = BytesMut::new();
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BufferError::Body)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if out.len() + data.len() > limit {
            return Err(BufferError::TooLarge);
        }
        if !held.take(data.len().saturating_mul(per_byte), max) {
            return Err(BufferError::Busy);
        }
        out.extend_from_slice(&data);
    }
    Ok((out.freeze(), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// `left` chunks of `size` bytes.
    struct Chunks {
        left: usize,
        size: usize,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            let chunk = Bytes::from(vec![b'x'; self.size]);
            Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
        }
    }

    fn body(chunks: usize, size: usize) -> Chunks {
        Chunks { left: chunks, size }
    }

    #[tokio::test]
    async fn bodies_share_one_budget_and_give_it_back() {
        let base = HELD.load(Ordering::SeqCst);
        let max = base + 1000;
        let (a, held_a) = collect_within(body(6, 100), 10_000, max, 1).await.unwrap();
        assert_eq!(a.len(), 600);
        // The second does not fit beside the first.
        assert!(matches!(
            collect_within(body(6, 100), 10_000, max, 1).await,
            Err(BufferError::Busy)
        ));
        // Its own limit still applies first.
        assert!(matches!(
            collect_within(Full::new(Bytes::from(vec![0u8; 50])), 10, max, 1).await,
            Err(BufferError::TooLarge)
        ));
        drop(held_a);
        let (b, held_b) = collect_within(body(6, 100), 10_000, max, 1).await.unwrap();
        assert_eq!(b.len(), 600);
        drop(held_b);
        // A body that will be parsed takes its working memory too.
        let (c, _held_c) = collect_within(body(3, 100), 10_000, max, 3).await.unwrap();
        assert_eq!(c.len(), 300);
        assert!(matches!(
            collect_within(body(2, 100), 10_000, max, 1).await,
            Err(BufferError::Busy)
        ));
    }
}
