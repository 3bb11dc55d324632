//! A response body that tells when it is over: at its last frame, or when it is dropped
//! unfinished (the client went away). Layers use it to hold per-request state (an outstanding
//! request's slot, the telemetry record) exactly as long as the response streams.

use super::Body;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

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
}
