//! A bound on what a form may send while its parser looks for the end of a part's headers (or
//! for the first part). The parser looks for that end by searching everything it holds again
//! each time more arrives, so headers sent in small pieces cost time that grows with the square
//! of their length: one request whose part headers grew to 12 MiB in 64-byte pieces kept a core
//! busy for 49 s, and the body limit would have allowed 25 minutes. The form's reader opens the
//! window before it asks for the next part and closes it once the part is there; while it is
//! open, each read counts what the parser will search then (what arrived since the window
//! opened), and the body fails with `HeadersTooLong` once one window has brought more than
//! `MAX_BYTES` or the searches of the whole request add up to more than `MAX_SEARCH` (so many
//! parts cannot each spend a window's worth). A part's data is read with the window closed,
//! however large.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Bytes that may arrive while one window is open: well above a part's headers (a few hundred
/// bytes) with the rest of the read that brings them (the server reads up to about 400 KiB at
/// once).
pub(crate) const MAX_BYTES: usize = 1 << 20;
/// What the parser's searches for headers may cover in all, over a whole request: a form's
/// windows take a read or two each, most of them none (one read brings many small parts).
pub(crate) const MAX_SEARCH: usize = 256 << 20;

/// The error of a form whose window ran out.
#[derive(Debug, thiserror::Error)]
#[error(
    "a form part's headers (or what comes before the first part) did not end within {MAX_BYTES} \
     bytes, or came in too many pieces"
)]
pub(crate) struct HeadersTooLong;

/// The window a form's reader opens and closes, shared with its body.
#[derive(Debug, Clone, Default)]
pub(crate) struct Window(Arc<State>);

#[derive(Debug, Default)]
struct State {
    open: AtomicBool,
    /// What arrived since the window opened, and the read before it (which the parser may
    /// still hold, the next part's headers begun at its end).
    bytes: AtomicUsize,
    /// The last read while the window was closed.
    last_closed: AtomicUsize,
    /// What the searches covered, over the whole request.
    searched: AtomicUsize,
}

impl Window {
    /// From now until `close`, what arrives counts.
    pub(crate) fn open(&self) {
        let held = self.0.last_closed.swap(0, Ordering::Relaxed);
        self.0.bytes.store(held, Ordering::Relaxed);
        self.0.open.store(true, Ordering::Relaxed);
    }

    pub(crate) fn close(&self) {
        self.0.open.store(false, Ordering::Relaxed);
    }

    /// `body`, failing once what arrives while the window is open passes its bounds.
    pub(crate) fn guard<B>(&self, body: B) -> Guarded<B> {
        Guarded {
            inner: Box::pin(body),
            window: self.clone(),
        }
    }

    /// Counts one read of `len` bytes; `false` once the bounds are passed.
    fn admit(&self, len: usize) -> bool {
        if !self.0.open.load(Ordering::Relaxed) {
            self.0.last_closed.store(len, Ordering::Relaxed);
            return true;
        }
        let bytes = self.0.bytes.fetch_add(len, Ordering::Relaxed) + len;
        // The parser searches all that arrived in this window again.
        let searched = self.0.searched.fetch_add(bytes, Ordering::Relaxed) + bytes;
        bytes <= MAX_BYTES && searched <= MAX_SEARCH
    }
}

/// A request body under a `Window`.
pub(crate) struct Guarded<B> {
    inner: Pin<Box<B>>,
    window: Window,
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, Bytes::len);
                if self.window.admit(len) {
                    Poll::Ready(Some(Ok(frame)))
                } else {
                    Poll::Ready(Some(Err(HeadersTooLong.into())))
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
