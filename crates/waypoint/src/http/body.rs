//! Bodies that watch what streams through them:
//!
//! - [`Observed`]: a response body that tells when it is over, at its last frame or when it is
//!   dropped unfinished (the client went away). Layers use it to hold per-request state (an
//!   outstanding request's slot, the telemetry record) exactly as long as the response streams.
//! - [`tee`]: a request body that streams on unchanged while a bounded copy is kept, for a
//!   retry or a mirror once the body has ended.

use super::Body;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::sync::oneshot;

/// Called once with the trailers, if the body ended with some, and whether it ended cleanly.
pub type OnEnd = Box<dyn FnOnce(Option<&HeaderMap>, bool) + Send + Sync>;

pub struct Observed {
    inner: Body,
    on_end: Option<OnEnd>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("ended", &self.on_end.is_none())
            .finish()
    }
}

impl Observed {
    pub fn new(inner: Body, on_end: OnEnd) -> Self {
        let mut observed = Self {
            inner,
            on_end: Some(on_end),
        };
        // A body that is empty from the start is never polled by some servers.
        if observed.inner.is_end_stream() {
            observed.end(None, true);
        }
        observed
    }

    fn end(&mut self, trailers: Option<&HeaderMap>, clean: bool) {
        if let Some(on_end) = self.on_end.take() {
            on_end(trailers, clean);
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.end(None, true),
            Some(Ok(f)) if f.is_trailers() => {
                let trailers = f.trailers_ref();
                if let Some(on_end) = self.on_end.take() {
                    on_end(trailers, true);
                }
            }
            Some(Ok(_)) => {
                if self.inner.is_end_stream() {
                    self.end(None, true);
                }
            }
            Some(Err(_)) => self.end(None, false),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.end(None, false);
    }
}

/// A whole request body, kept to be sent again.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Kept {
    /// A fresh body with the same data and trailers.
    pub fn body(&self) -> Body {
        let data = super::full(self.data.clone());
        match self.trailers.clone() {
            Some(trailers) => data
                .with_trailers(std::future::ready(Some(Ok(trailers))))
                .boxed(),
            None => data,
        }
    }
}

/// The copy of a teed body, to be awaited once the body's first reader is done with it.
#[derive(Debug)]
pub struct KeptBody {
    outcome: oneshot::Receiver<Outcome>,
}

impl KeptBody {
    /// The whole body, if it is at most the limit: at once if the first reader read it to its
    /// end; if that reader stopped early (an upstream that failed before reading it all),
    /// reading the rest here. `None` if it is larger, or failed.
    pub async fn whole(self) -> Option<Kept> {
        match self.outcome.await.ok()? {
            Outcome::Whole(kept) => Some(kept),
            Outcome::Lost => None,
            Outcome::Unfinished { mut tee } => {
                // The tee keeps its copy of each frame read, and `kept` once the body ends.
                while tee.kept.is_none() {
                    tee.data.as_ref()?;
                    if tee.frame().await.is_none() && tee.kept.is_none() {
                        return None;
                    }
                }
                tee.kept.take()
            }
        }
    }
}

/// What the tee hands over when its first reader is done with it.
enum Outcome {
    Whole(Kept),
    /// Dropped before the end: the tee itself, with what it kept so far and the rest unread.
    Unfinished {
        tee: Box<Tee>,
    },
    Lost,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Whole(_) => "Whole",
            Self::Unfinished { .. } => "Unfinished",
            Self::Lost => "Lost",
        })
    }
}

/// `body`, unchanged, and its copy if it ends within `limit` bytes. Nothing waits for the copy:
/// the body streams at its own pace, and the copy stops (freeing what it held) at the limit.
pub fn tee(body: Body, limit: usize) -> (Body, KeptBody) {
    let (done, outcome) = oneshot::channel();
    let mut tee = Tee {
        inner: body,
        data: Some(BytesMut::new()),
        trailers: None,
        limit,
        done: Some(done),
        kept: None,
    };
    if tee.inner.is_end_stream() {
        tee.finish();
    }
    (tee.boxed(), KeptBody { outcome })
}

struct Tee {
    inner: Body,
    /// `None` once over the limit.
    data: Option<BytesMut>,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// Where the outcome goes; `None` once it went.
    done: Option<oneshot::Sender<Outcome>>,
    /// The whole body, once a tee handed over unfinished has been read to its end.
    kept: Option<Kept>,
}

impl Tee {
    /// The body has ended: the copy is whole, unless it went over the limit.
    fn finish(&mut self) {
        let Some(data) = self.data.take() else {
            return self.give_up();
        };
        let kept = Kept {
            data: data.freeze(),
            trailers: self.trailers.take(),
        };
        match self.done.take() {
            Some(done) => {
                let _ = done.send(Outcome::Whole(kept));
            }
            None => self.kept = Some(kept),
        }
    }

    fn give_up(&mut self) {
        self.data = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(Outcome::Lost);
        }
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.finish(),
            Some(Err(_)) => self.give_up(),
            Some(Ok(f)) => {
                if let Some(chunk) = f.data_ref() {
                    let limit = self.limit;
                    let fits = self
                        .data
                        .as_mut()
                        .filter(|data| data.len() + chunk.len() <= limit)
                        .map(|data| data.extend_from_slice(chunk))
                        .is_some();
                    if !fits {
                        self.give_up();
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    self.trailers = Some(trailers.clone());
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        if self.data.is_none() {
            let _ = done.send(Outcome::Lost);
            return;
        }
        // Dropped unfinished, within the limit so far: whoever awaits the copy reads the rest.
        let tee = Tee {
            inner: std::mem::replace(&mut self.inner, super::empty()),
            data: self.data.take(),
            trailers: self.trailers.take(),
            limit: self.limit,
            done: None,
            kept: None,
        };
        let _ = done.send(Outcome::Unfinished { tee: Box::new(tee) });
    }
}

/// `rest` with `first`, a frame already read from it, put back in front.
pub fn prepend(first: Result<Frame<Bytes>, hyper::Error>, rest: Body) -> Body {
    Prepended {
        first: Some(first),
        rest,
    }
    .boxed()
}

struct Prepended {
    first: Option<Result<Frame<Bytes>, hyper::Error>>,
    rest: Body,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    /// Each end: the grpc-status trailer, if any, and whether the body ended cleanly.
    type Ends = Arc<Mutex<Vec<(Option<String>, bool)>>>;

    fn recorder() -> (Ends, OnEnd) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let on_end: OnEnd = Box::new(move |trailers, clean| {
            let status = trailers
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned());
            s.lock().unwrap().push((status, clean));
        });
        (seen, on_end)
    }

    #[tokio::test]
    async fn ends_once_with_trailers_or_on_drop() {
        let (seen, on_end) = recorder();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let inner = http_body_util::StreamBody::new(futures_stream(vec![
            Frame::data(Bytes::from_static(b"x")),
            Frame::trailers(trailers),
        ]));
        let body = Observed::new(inner.boxed(), on_end);
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(*seen.lock().unwrap(), [(Some("0".to_owned()), true)]);

        let (seen, on_end) = recorder();
        let body = Observed::new(super::super::full("partial"), on_end);
        drop(body);
        // A full body that was never read is dropped unfinished.
        assert_eq!(*seen.lock().unwrap(), [(None, false)]);

        let (seen, on_end) = recorder();
        let _body = Observed::new(super::super::empty(), on_end);
        assert_eq!(*seen.lock().unwrap(), [(None, true)]);
    }

    fn futures_stream(
        frames: Vec<Frame<Bytes>>,
    ) -> impl futures::Stream<Item = Result<Frame<Bytes>, hyper::Error>> {
        futures::stream::iter(frames.into_iter().map(Ok))
    }

    #[tokio::test]
    async fn a_tee_passes_the_body_on_and_keeps_it_whole_only_within_its_limit() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "7".parse().unwrap());
        let frames = || {
            http_body_util::StreamBody::new(futures_stream(vec![
                Frame::data(Bytes::from_static(b"abc")),
                Frame::data(Bytes::from_static(b"def")),
                Frame::trailers(trailers.clone()),
            ]))
            .boxed()
        };
        let (body, kept) = tee(frames(), 6);
        let passed = body.collect().await.unwrap();
        assert_eq!(passed.trailers().unwrap()["x-sum"], "7");
        assert_eq!(&passed.to_bytes()[..], b"abcdef");
        let again = kept.whole().await.unwrap().body().collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-sum"], "7");
        assert_eq!(&again.to_bytes()[..], b"abcdef");

        // One byte over: passed on whole, not kept.
        let (body, kept) = tee(frames(), 5);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdef");
        assert!(kept.whole().await.is_none());

        // Dropped after one frame: the rest is read into the copy.
        let (mut body, kept) = tee(frames(), 6);
        body.frame().await.unwrap().unwrap();
        drop(body);
        let again = kept.whole().await.unwrap().body().collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-sum"], "7");
        assert_eq!(&again.to_bytes()[..], b"abcdef");
        // ... but not past the limit.
        let (body, kept) = tee(frames(), 5);
        drop(body);
        assert!(kept.whole().await.is_none());
        // An empty body is kept at once.
        let (_body, kept) = tee(super::super::empty(), 0);
        assert!(kept.whole().await.is_some());
    }
}
