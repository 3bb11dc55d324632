//! Request-level resilience of the route rule a request matched (Gateway API HTTPRoute
//! `timeouts` and `retry`): a deadline for the whole request, one per attempt, and retries of
//! the statuses the rule names, each after its backoff.
//!
//! Retries are held in check by one budget per waypoint (tower's `TpsBudget`): retries may add
//! at most a fifth of the requests of the last ten seconds, plus a small floor, so a failing
//! backend sees at most 1.2x its load, never attempts-times-load (a retry storm).
//!
//! The first attempt streams the request body as it comes; a copy of up to 64 KiB is kept
//! meanwhile ([`tee`]) and sent again (what the attempt left unread, e.g. when the endpoint could
//! not be reached, is read into the copy first). A larger body and an upgrade get one attempt.
//!
//! gRPC: a call's status is in `grpc-status`, in the headers of a trailers-only response or in
//! the trailers. A rule with a retry retries UNAVAILABLE, and the statuses its HTTP codes map to
//! ([`GrpcCode::from_http`]; 504 also DEADLINE_EXCEEDED, what an attempt timeout answers). The
//! response is held until its first frame: trailers first (no message) can be retried, a first
//! message commits the attempt, so nothing reached the client before a retry. The client's
//! `grpc-timeout` bounds the whole request (with the rule's `timeouts.request`, the shorter
//! wins), and each attempt goes upstream with the time left as its `grpc-timeout`.

use super::body::{Kept, prepend, tee};
use super::{Body, GrpcCode, Inner, Request, Response, ResponseFuture, is_grpc, local_response};
use crate::http::forward::grpc_timeout;
use crate::metrics::Metrics;
use http::header::HeaderValue;
use http::{HeaderMap, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service, ServiceExt};

/// The largest request body kept for a retry.
const MAX_REPLAY_BYTES: usize = 64 * 1024;

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

impl RetryRule {
    /// Whether an attempt that ended with HTTP `status` (and, for gRPC, `grpc_status`) is
    /// worth another.
    fn retries(&self, status: StatusCode, grpc_status: Option<u32>) -> bool {
        if self.codes.contains(&status.as_u16()) {
            return true;
        }
        let Some(grpc_status) = grpc_status else {
            return false;
        };
        grpc_status == GrpcCode::Unavailable as u32
            || self.codes.iter().any(|&code| {
                GrpcCode::from_http(code) as u32 == grpc_status
                    || (code == 504 && grpc_status == GrpcCode::DeadlineExceeded as u32)
            })
    }
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
        let client_deadline = grpc.then(|| grpc_timeout(request.headers())).flatten();
        let deadline = [policy.request_timeout, client_deadline]
            .into_iter()
            .flatten()
            .min()
            .map(|limit| Instant::now() + limit);
        let attempts = Attempts {
            inner: self.inner.clone(),
            budget: self.budget.clone(),
            metrics: self.metrics.clone(),
            policy,
            grpc,
            deadline,
        };
        Box::pin(async move {
            let run = attempts.run(request);
            let response = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, run)
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
    /// The whole request's, if it has one.
    deadline: Option<Instant>,
}

impl<S: Inner> Attempts<S> {
    async fn run(self, request: Request) -> Response {
        self.budget.deposit();
        let retry = self
            .policy
            .retry
            .as_ref()
            .filter(|r| r.attempts > 0 && may_retry(&request));
        let Some(retry) = retry else {
            return self.attempt(request).await;
        };
        let (parts, body) = request.into_parts();
        let (body, kept) = tee(body, MAX_REPLAY_BYTES);
        let mut kept = Pending::Waiting(kept);
        let mut response = self.attempt(copy(&parts, body)).await;
        let mut left = retry.attempts;
        loop {
            if left == 0 {
                return response;
            }
            let (answer, grpc_status) = if self.grpc {
                grpc_status(response).await
            } else {
                (response, None)
            };
            if !retry.retries(answer.status(), grpc_status) {
                return answer;
            }
            let Some(body) = kept.whole().await else {
                return answer;
            };
            if !self.budget.withdraw() {
                self.metrics.retry(RetryOutcome::BudgetExhausted);
                return answer;
            }
            self.metrics.retry(RetryOutcome::Retried);
            left -= 1;
            drop(answer);
            tokio::time::sleep(retry.backoff).await;
            response = self.attempt(copy(&parts, body)).await;
        }
    }

    /// One attempt under the per-attempt deadline. Borrows nothing: the inner service need not
    /// be `Sync`.
    fn attempt(&self, mut request: Request) -> impl Future<Output = Response> + Send + 'static {
        if let (true, Some(deadline)) = (self.grpc, self.deadline) {
            let left = deadline.saturating_duration_since(Instant::now());
            request
                .headers_mut()
                .insert("grpc-timeout", encode_grpc_timeout(left));
        }
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

/// The kept request body: awaited once, when a retry first needs it.
enum Pending {
    Waiting(super::body::KeptBody),
    Done(Option<Kept>),
}

impl Pending {
    /// A fresh copy of the whole body, if it was kept.
    async fn whole(&mut self) -> Option<Body> {
        if let Self::Waiting(_) = self {
            let Self::Waiting(kept) = std::mem::replace(self, Self::Done(None)) else {
                return None;
            };
            *self = Self::Done(kept.whole().await);
        }
        match self {
            Self::Done(kept) => kept.as_ref().map(Kept::body),
            Self::Waiting(_) => None,
        }
    }
}

/// Whether the request may be sent again: not an upgrade, and no body known to be too large.
fn may_retry(request: &Request) -> bool {
    let too_large = request.body().size_hint().lower() > MAX_REPLAY_BYTES as u64;
    !too_large && !request.headers().contains_key(http::header::UPGRADE)
}

/// The gRPC status of an attempt, when it is known before any message: in the headers (a
/// trailers-only response) or in trailers that come first. The response is given back whole,
/// its first frame (if read) put back in front.
async fn grpc_status(response: Response) -> (Response, Option<u32>) {
    fn status_in(headers: &HeaderMap) -> Option<u32> {
        headers.get("grpc-status")?.to_str().ok()?.parse().ok()
    }
    if response.status() != StatusCode::OK {
        return (response, None);
    }
    if let Some(status) = status_in(response.headers()) {
        return (response, Some(status));
    }
    let (parts, mut body) = response.into_parts();
    let Some(first) = body.frame().await else {
        return (Response::from_parts(parts, super::empty()), None);
    };
    let status = first
        .as_ref()
        .ok()
        .and_then(|frame| frame.trailers_ref())
        .and_then(status_in);
    (Response::from_parts(parts, prepend(first, body)), status)
}

/// `grpc-timeout` for `left`, in milliseconds (whole seconds past 8 digits), at least 1 ms.
fn encode_grpc_timeout(left: Duration) -> HeaderValue {
    let millis = left.as_millis().max(1);
    let value = if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("1m"))
}

/// A fresh request from the kept head, for one attempt.
fn copy(parts: &http::request::Parts, body: Body) -> Request {
    let mut request = http::Request::new(body);
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
    use crate::http::{empty, full};
    use bytes::Bytes;
    use http_body::Frame;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// How the test backend answers attempt `n` (from 0).
    type Answer = fn(u32) -> Response;

    /// Each attempt's body and `grpc-timeout`.
    type Received = Arc<Mutex<Vec<(Bytes, Option<String>)>>>;

    /// Answers each attempt with `answer`; keeps each attempt's body and `grpc-timeout`.
    #[derive(Clone)]
    struct Backend {
        answer: Answer,
        seen: Arc<AtomicU32>,
        bodies: Received,
        delay: Duration,
    }

    impl Service<Request> for Backend {
        type Response = Response;
        type Error = Infallible;
        type Future = ResponseFuture;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: Request) -> Self::Future {
            let n = self.seen.fetch_add(1, Ordering::SeqCst);
            let (answer, delay, bodies) = (self.answer, self.delay, self.bodies.clone());
            Box::pin(async move {
                let timeout = request
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = request.into_body().collect().await.unwrap().to_bytes();
                bodies.lock().unwrap().push((body, timeout));
                tokio::time::sleep(delay).await;
                Ok(answer(n))
            })
        }
    }

    fn status(code: StatusCode) -> Response {
        let mut response = http::Response::new(empty());
        *response.status_mut() = code;
        response
    }

    fn backend(answer: Answer, delay: Duration) -> Backend {
        Backend {
            answer,
            seen: Arc::default(),
            bodies: Arc::default(),
            delay,
        }
    }

    /// 503 for the first `N` attempts, then 200.
    fn flaky<const N: u32>(n: u32) -> Response {
        status(if n < N {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        })
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

    impl Backend {
        fn attempts(&self) -> u32 {
            self.seen.load(Ordering::SeqCst)
        }
        fn bodies(&self) -> Vec<Bytes> {
            self.bodies
                .lock()
                .unwrap()
                .iter()
                .map(|b| b.0.clone())
                .collect()
        }
    }

    #[tokio::test]
    async fn retries_listed_statuses_with_the_whole_body_up_to_the_attempts() {
        let service = backend(flaky::<2>, Duration::ZERO);
        let response = layer()
            .layer(service.clone())
            .call(request(retrying(2)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(service.bodies(), vec![Bytes::from_static(b"payload"); 3]);

        let service = backend(flaky::<5>, Duration::ZERO);
        let response = layer()
            .layer(service.clone())
            .call(request(retrying(2)))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(service.attempts(), 3, "1 attempt + 2 retries");
    }

    #[tokio::test]
    async fn the_budget_stops_a_retry_storm() {
        // A backend that always fails, 1,000 requests each allowed 3 retries: without a budget
        // that is 4,000 attempts; the budget allows about a fifth more than the requests
        // (plus its floor of 10/s over 10 s).
        let service = backend(flaky::<{ u32::MAX }>, Duration::ZERO);
        let mut retry = layer().layer(service.clone());
        for _ in 0..1000 {
            let response = retry.call(request(retrying(3))).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        let attempts = service.attempts();
        assert!(
            (1000..=1000 + 200 + 100 + 10).contains(&attempts),
            "{attempts} attempts for 1,000 requests"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_answer_504_for_the_attempt_and_for_the_request() {
        let service = backend(flaky::<0>, Duration::from_secs(5));
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
        assert_eq!(service.attempts(), 1 + 3);
    }

    fn streaming(chunks: Vec<Bytes>) -> Body {
        let frames = chunks.into_iter().map(|c| Ok(Frame::data(c)));
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn a_streamed_body_is_retried_only_if_it_fits_the_copy() {
        // Of unknown length, small: retried whole.
        let service = backend(flaky::<1>, Duration::ZERO);
        let mut request = http::Request::new(streaming(vec![
            Bytes::from_static(b"pay"),
            Bytes::from_static(b"load"),
        ]));
        request.extensions_mut().insert(Arc::new(retrying(3)));
        let response = layer().layer(service.clone()).call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(service.bodies(), vec![Bytes::from_static(b"payload"); 2]);

        // Larger than the copy: one attempt, the body passed on whole.
        let service = backend(flaky::<1>, Duration::ZERO);
        let chunk = Bytes::from(vec![b'x'; 40 * 1024]);
        let mut request = http::Request::new(streaming(vec![chunk.clone(), chunk]));
        request.extensions_mut().insert(Arc::new(retrying(3)));
        let response = layer().layer(service.clone()).call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(service.attempts(), 1);
        assert_eq!(service.bodies()[0].len(), 80 * 1024);
    }

    #[tokio::test]
    async fn a_body_the_failed_attempt_never_read_is_sent_whole_on_the_retry() {
        // The first attempt fails without reading the body (an endpoint that cannot be
        // reached); the second reads it.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorded = seen.clone();
        let service = tower::service_fn(move |request: Request| {
            let seen = recorded.clone();
            async move {
                let first = seen.lock().unwrap().is_empty();
                let body = if first {
                    Bytes::new()
                } else {
                    request.into_body().collect().await.unwrap().to_bytes()
                };
                seen.lock().unwrap().push(body);
                Ok::<_, Infallible>(flaky::<1>(if first { 0 } else { 1 }))
            }
        });
        let mut request = http::Request::new(streaming(vec![
            Bytes::from_static(b"pay"),
            Bytes::from_static(b"load"),
        ]));
        request.extensions_mut().insert(Arc::new(retrying(1)));
        let response = layer().layer(service).call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            *seen.lock().unwrap(),
            [Bytes::new(), Bytes::from_static(b"payload")]
        );
    }

    fn grpc_request(policy: Resilience, timeout: &str) -> Request {
        let mut request = request(policy);
        let headers = request.headers_mut();
        headers.insert("content-type", "application/grpc".parse().unwrap());
        headers.insert("grpc-timeout", timeout.parse().unwrap());
        request
    }

    /// A gRPC response: headers, then `message` if any, then trailers with `status`.
    fn grpc_answer(status: u32, message: Option<&'static str>) -> Response {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.into());
        let frames = message
            .map(|m| Frame::data(Bytes::from_static(m.as_bytes())))
            .into_iter()
            .chain([Frame::trailers(trailers)])
            .map(Ok);
        let mut response = http::Response::new(
            http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed(),
        );
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    }

    #[tokio::test]
    async fn grpc_statuses_in_trailers_are_retried_until_a_message_commits() {
        // UNAVAILABLE in trailers (no message), then a trailers-only DEADLINE_EXCEEDED, then OK.
        fn answer(n: u32) -> Response {
            match n {
                0 => grpc_answer(14, None),
                1 => {
                    let mut r = status(StatusCode::OK);
                    r.headers_mut().insert("grpc-status", "4".parse().unwrap());
                    r
                }
                _ => grpc_answer(0, Some("reply")),
            }
        }
        let service = backend(answer, Duration::ZERO);
        let mut policy = retrying(3);
        policy.retry.as_mut().unwrap().codes = vec![503];
        let response = layer()
            .layer(service.clone())
            .call(grpc_request(policy.clone(), "10S"))
            .await
            .unwrap();
        // UNAVAILABLE is always retried; DEADLINE_EXCEEDED only when the rule lists 504.
        assert_eq!(response.headers()["grpc-status"], "4");
        assert_eq!(service.attempts(), 2);

        let service = backend(answer, Duration::ZERO);
        policy.retry.as_mut().unwrap().codes = vec![504];
        let response = layer()
            .layer(service.clone())
            .call(grpc_request(policy.clone(), "10S"))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"reply");
        assert_eq!(service.attempts(), 3);

        // A message before an UNAVAILABLE: the client has it, never retried.
        let service = backend(|_| grpc_answer(14, Some("partial")), Duration::ZERO);
        let response = layer()
            .layer(service.clone())
            .call(grpc_request(policy, "10S"))
            .await
            .unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
        assert_eq!(&collected.to_bytes()[..], b"partial");
        assert_eq!(service.attempts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_deadlines_bound_the_request_and_go_upstream_as_the_time_left() {
        // The client allows 300 ms, the rule 1 s: the backend (5 s) is cut at 300 ms with
        // DEADLINE_EXCEEDED, and was told 300 ms.
        let service = backend(|_| grpc_answer(0, None), Duration::from_secs(5));
        let policy = Resilience {
            request_timeout: Some(Duration::from_secs(1)),
            ..Resilience::default()
        };
        let started = tokio::time::Instant::now();
        let response = layer()
            .layer(service.clone())
            .call(grpc_request(policy.clone(), "300m"))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "4");
        let told = service.bodies.lock().unwrap()[0].1.clone();
        assert_eq!(told.as_deref(), Some("300m"));

        // The client allows an hour: the rule's second wins, upstream and here.
        let service = backend(|_| grpc_answer(0, None), Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let response = layer()
            .layer(service.clone())
            .call(grpc_request(policy, "1H"))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(response.headers()["grpc-status"], "4");
        let told = service.bodies.lock().unwrap()[0].1.clone();
        assert_eq!(told.as_deref(), Some("1000m"));
    }

    #[test]
    fn grpc_timeouts_encode_within_eight_digits() {
        assert_eq!(encode_grpc_timeout(Duration::ZERO), "1m");
        assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(encode_grpc_timeout(Duration::from_secs(200_000)), "200000S");
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(u64::MAX / 2)),
            "99999999S"
        );
    }
}
