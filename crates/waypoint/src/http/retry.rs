//! Request-level resilience of the route rule a request matched (Gateway API HTTPRoute
//! `timeouts` and `retry`): a deadline for the whole request, one per attempt, and retries of
//! the statuses the rule names, each after its backoff.
//!
//! Retries are held in check by one budget per waypoint (tower's `TpsBudget`): retries may add
//! at most a fifth of the requests of the last ten seconds, plus a small floor, so a failing
//! backend sees at most 1.2x its load, never attempts-times-load (a retry storm).
//!
//! Only requests whose body is known to be small are retried: the body is kept to be sent
//! again. A streaming or large body, an upgrade and gRPC (whose status is in the trailers)
//! get one attempt.

use super::{GrpcCode, Inner, Request, Response, ResponseFuture, full, is_grpc, local_response};
use crate::metrics::Metrics;
use bytes::Bytes;
use http::StatusCode;
use http_body::Body as _;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

/// The largest request body kept for a retry.
const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// What a route rule asks of its requests; in the request's extensions when a rule applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resilience {
    /// `timeouts.request`: the whole request, retries and backoffs included.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: each attempt.
    pub attempt_timeout: Option<Duration>,
    pub retry: Option<RetryRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    /// Statuses worth another attempt.
    pub codes: Vec<u16>,
    /// Attempts after the first.
    pub attempts: u32,
    pub backoff: Duration,
}

#[derive(Clone)]
pub struct RetryLayer {
    budget: Arc<TpsBudget>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer").finish_non_exhaustive()
    }
}

impl RetryLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            metrics,
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    budget: Arc<TpsBudget>,
    metrics: Arc<Metrics>,
}

impl<S> std::fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry").finish_non_exhaustive()
    }
}

impl<S: Inner> Service<Request> for Retry<S> {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(policy) = request.extensions().get::<Arc<Resilience>>().cloned() else {
            return Box::pin(self.inner.call(request));
        };
        let grpc = is_grpc(request.headers());
        let attempts = Attempts {
            inner: self.inner.clone(),
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
            policy: policy.clone(),
            grpc,
        };
        Box::pin(async move {
            let run = attempts.run(request);
            let response = match policy.request_timeout {
                Some(limit) => tokio::time::timeout(limit, run)
                    .await
                    .unwrap_or_else(|_| timed_out(grpc, "request timeout")),
                None => run.await,
            };
            Ok(response)
        })
    }
}

fn timed_out(grpc: bool, what: &str) -> Response {
    local_response(
        grpc,
        StatusCode::GATEWAY_TIMEOUT,
        GrpcCode::DeadlineExceeded,
        &format!("{what} exceeded"),
    )
}

struct Attempts<S> {
    inner: S,
    budget: Arc<TpsBudget>,
    metrics: Arc<Metrics>,
    policy: Arc<Resilience>,
    grpc: bool,
}

impl<S: Inner> Attempts<S> {
    async fn run(self, request: Request) -> Response {
        self.budget.deposit();
        let retry = self
            .policy
            .retry
            .as_ref()
            .filter(|r| r.attempts > 0 && !self.grpc && replayable(&request));
        let Some(retry) = retry else {
            return self.attempt(request).await;
        };
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                return local_response(
                    false,
                    StatusCode::BAD_REQUEST,
                    GrpcCode::Unavailable,
                    &format!("reading the request body: {error}"),
                );
            }
        };
        let mut left = retry.attempts;
        loop {
            let response = self.attempt(copy(&parts, &body)).await;
            let status = response.status().as_u16();
            if left == 0 || !retry.codes.contains(&status) {
                return response;
            }
            if !self.budget.withdraw() {
                self.metrics.retry(RetryOutcome::BudgetExhausted);
                return response;
            }
            self.metrics.retry(RetryOutcome::Retried);
            left -= 1;
            drop(response);
            tokio::time::sleep(retry.backoff).await;
        }
    }

    /// One attempt under the per-attempt deadline. Borrows nothing: the inner service need not
    /// be `Sync`.
    fn attempt(&self, request: Request) -> impl Future<Output = Response> + Send + 'static {
        let call = self.inner.clone().oneshot(request);
        let (limit, grpc) = (self.policy.attempt_timeout, self.grpc);
        async move {
            let result = match limit {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(result) => result,
                    Err(_) => return timed_out(grpc, "backend request timeout"),
                },
                None => call.await,
            };
            match result {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

/// Whether the body is known to be small enough to keep (and the request is no upgrade).
fn replayable(request: &Request) -> bool {
    let small = request
        .body()
        .size_hint()
        .upper()
        .is_some_and(|upper| upper <= MAX_REPLAY_BYTES);
    small && !request.headers().contains_key(http::header::UPGRADE)
}

/// A fresh request from the kept head and body, for one attempt.
fn copy(parts: &http::request::Parts, body: &Bytes) -> Request {
    let mut request = http::Request::new(full(body.clone()));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOutcome {
    Retried,
    BudgetExhausted,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::empty;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Answers `failures` 503s, then 200s; counts the attempts it saw and checks each carries
    /// the whole body.
    #[derive(Clone)]
    struct Flaky {
        failures: u32,
        seen: Arc<AtomicU32>,
        delay: Duration,
    }

    impl Service<Request> for Flaky {
        type Response = Response;
        type Error = Infallible;
        type Future = ResponseFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: Request) -> Self::Future {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            let (failures, delay) = (self.failures, self.delay);
            Box::pin(async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"payload");
                tokio::time::sleep(delay).await;
                let mut response = http::Response::new(empty());
                if n < failures {
                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                Ok(response)
            })
        }
    }

    fn flaky(failures: u32, delay: Duration) -> (Flaky, Arc<AtomicU32>) {
        let seen = Arc::new(AtomicU32::new(0));
        let service = Flaky {
            failures,
            seen: seen.clone(),
            delay,
        };
        (service, seen)
    }

    fn request(policy: Resilience) -> Request {
        let mut request = http::Request::new(full("payload"));
        request.extensions_mut().insert(Arc::new(policy));
        request
    }

    fn retrying(attempts: u32) -> Resilience {
        Resilience {
            retry: Some(RetryRule {
                codes: vec![503],
                attempts,
                backoff: Duration::ZERO,
            }),
            ..Resilience::default()
        }
    }

    fn layer() -> RetryLayer {
        RetryLayer::new(Arc::new(Metrics::default()))
    }

    #[tokio::test]
    async fn retries_listed_statuses_with_the_whole_body_up_to_the_attempts() {
        let (service, seen) = flaky(2, Duration::ZERO);
        let mut retry = layer().layer(service);
        let response = retry.call(request(retrying(2))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(seen.load(Ordering::SeqCst), 3);

        let (service, seen) = flaky(5, Duration::ZERO);
        let mut retry = layer().layer(service);
        let response = retry.call(request(retrying(2))).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.load(Ordering::SeqCst), 3, "1 attempt + 2 retries");
    }

    #[tokio::test]
    async fn the_budget_stops_a_retry_storm() {
        // A backend that always fails, 1,000 requests each allowed 3 retries: without a budget
        // that is 4,000 attempts; the budget allows about a fifth more than the requests
        // (plus its floor of 10/s over 10 s).
        let (service, seen) = flaky(u32::MAX, Duration::ZERO);
        let mut retry = layer().layer(service);
        for _ in 0..1000 {
            let response = retry.call(request(retrying(3))).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let attempts = seen.load(Ordering::SeqCst);
        assert!(
            (1000..=1000 + 200 + 100 + 10).contains(&attempts),
            "{attempts} attempts for 1,000 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_answer_504_for_the_attempt_and_for_the_request() {
        let (service, seen) = flaky(0, Duration::from_secs(5));
        let mut retry = layer().layer(service.clone());
        let policy = Resilience {
            attempt_timeout: Some(Duration::from_secs(1)),
            ..retrying(0)
        };
        let started = tokio::time::Instant::now();
        let response = retry.call(request(policy)).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        // Each attempt times out after 1 s and is retried; the request gives up at 2.5 s.
        let policy = Resilience {
            request_timeout: Some(Duration::from_millis(2500)),
            attempt_timeout: Some(Duration::from_secs(1)),
            retry: Some(RetryRule {
                codes: vec![504],
                attempts: 10,
                backoff: Duration::ZERO,
            }),
        };
        let started = tokio::time::Instant::now();
        let response = retry.call(request(policy)).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        // Attempts at 0, 1 and 2 s, after the first request's one.
        assert_eq!(seen.load(Ordering::SeqCst), 1 + 3);
    }

    #[tokio::test]
    async fn a_streaming_body_gets_one_attempt() {
        let (service, seen) = flaky(1, Duration::ZERO);
        let mut retry = layer().layer(service);
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, hyper::Error>>(1);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"payload"))))
            .await
            .unwrap();
        drop(tx);
        let body = http_body_util::StreamBody::new(tokio_stream_of(rx)).boxed();
        let mut request = http::Request::new(body);
        request.extensions_mut().insert(Arc::new(retrying(3)));
        let response = retry.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
