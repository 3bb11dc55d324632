//! OpenTelemetry span export over OTLP/gRPC, configured the OpenTelemetry way
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_TRACES_SAMPLER_ARG`, `OTEL_SERVICE_NAME`) or by flags,
//! and off when no endpoint is given.
//!
//! The provider is the caller's, not a global one: spans are made where the request is at
//! hand (see the waypoint's telemetry layer), and tests run several exporters in one process.

use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample};
use std::time::Duration;

pub use opentelemetry_sdk::propagation::TraceContextPropagator;
pub use opentelemetry_sdk::trace::{SdkTracer as Tracer, Span};

pub use crate::otlp_settings::{
    ENV_ENDPOINT, ENV_SAMPLER_ARG, ENV_SERVICE_NAME, ENV_URL_PATH, UrlPath,
};
use crate::otlp_settings::{valid_endpoint, valid_ratio};

/// How long one export may take: a collector that does not answer costs dropped spans, never
/// requests (the batch queue is bounded and export runs off the data path).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags, to `#[command(flatten)]` into a binary's.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtlpArgs {
    /// OTLP/gRPC collector to export spans to (`http://HOST:4317`, or `https://` for TLS
    /// verified against the system roots). None: no spans are made.
    #[arg(long = "otlp-endpoint", env = ENV_ENDPOINT, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Fraction of requests sampled, 0..=1, drawn by this process: a caller's `traceparent`
    /// flag and trace id do not move it (see [`RatioSampler`]).
    #[arg(long = "otlp-sampling", env = ENV_SAMPLER_ARG, value_name = "RATIO", default_value_t = 1.0)]
    pub sampling: f64,
    /// The spans' `service.name` (default: the binary's name).
    #[arg(long = "otlp-service-name", env = ENV_SERVICE_NAME, value_name = "NAME")]
    pub service_name: Option<String>,
    /// What of the request's path the spans carry: `full` (`url.path`), `route` (the route
    /// matched, `ambit.route`) or `none`.
    #[arg(long = "otlp-url-path", env = ENV_URL_PATH, value_name = "WHAT", value_enum, default_value_t)]
    pub url_path: UrlPath,
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("{ENV_ENDPOINT}={0:?}: want an http:// or https:// URL with a host")]
    Endpoint(String),
    #[error("{ENV_SAMPLER_ARG}={0}: want a ratio from 0 to 1")]
    Sampling(f64),
    #[error("the OTLP exporter for {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Validated settings: there is an endpoint, and the ratio is a ratio.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub sampling: f64,
    pub service_name: String,
    pub url_path: UrlPath,
}

impl OtlpArgs {
    /// `None` when no endpoint is set (tracing off); `default_service` names the spans' service
    /// unless the flags do.
    pub fn config(self, default_service: &str) -> Result<Option<OtlpConfig>, OtlpError> {
        let Some(endpoint) = self.endpoint.filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        if !valid_endpoint(&endpoint) {
            return Err(OtlpError::Endpoint(endpoint));
        }
        if !valid_ratio(self.sampling) {
            return Err(OtlpError::Sampling(self.sampling));
        }
        Ok(Some(OtlpConfig {
            endpoint,
            sampling: self.sampling,
            service_name: self
                .service_name
                .unwrap_or_else(|| default_service.to_owned()),
            url_path: self.url_path,
        }))
    }
}

/// A running exporter: spans from [`Otlp::tracer`] are batched and sent on a thread of its
/// own. [`Otlp::shutdown`] sends what is left.
#[derive(Debug, Clone)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

impl Otlp {
    /// Builds the exporter. On a tokio runtime: the gRPC channel's connection task runs on it
    /// (it connects lazily, so a collector that is not up yet is no error).
    pub fn start(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&config.endpoint)
            .with_timeout(EXPORT_TIMEOUT);
        if config.endpoint.starts_with("https://") {
            builder = builder.with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_native_roots(),
            );
        }
        let exporter = builder.build().map_err(|source| OtlpError::Exporter {
            endpoint: config.endpoint.clone(),
            source,
        })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(RatioSampler(config.sampling))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        Ok(Self { provider })
    }

    pub fn tracer(&self, scope: &'static str) -> Tracer {
        use opentelemetry::trace::TracerProvider as _;
        self.provider.tracer(scope)
    }

    /// Exports the spans still queued and stops. Blocks (the batch thread sends them): call
    /// it off the runtime, e.g. in `spawn_blocking`.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "OTLP exporter shutdown");
        }
    }
}

/// Samples each span with probability `.0`, by a draw of its own: neither the parent's sampled
/// flag nor the trace id counts, as both come from the caller. With OpenTelemetry's
/// `parentbased_traceidratio` any caller could have every request it sends sampled (flag `01`,
/// or a trace id under the ratio's threshold), crowding other requests' spans out of the
/// bounded export queue, or have none sampled (flag `00`) to keep its requests out of the
/// traces. The cost: a trace a caller sampled is sampled here only at the ratio (the default,
/// 1, samples all); the decision goes upstream in the flag, so the spans below follow it.
#[derive(Debug, Clone, Copy)]
pub struct RatioSampler(pub f64);

impl ShouldSample for RatioSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        _trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        // `f64()` is in [0, 1): a ratio of 1 samples all, 0 none.
        let decision = if fastrand::f64() < self.0 {
            SamplingDecision::RecordAndSample
        } else {
            SamplingDecision::Drop
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            // The caller's vendor entries go on upstream (W3C `tracestate`).
            trace_state: parent_context
                .map(|c| c.span().span_context().trace_state().clone())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceState};

    fn args(endpoint: &str, sampling: f64) -> OtlpArgs {
        OtlpArgs {
            endpoint: Some(endpoint.to_owned()),
            sampling,
            service_name: None,
            url_path: UrlPath::default(),
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        assert_eq!(OtlpArgs::default().config("w").unwrap(), None);
        assert_eq!(args("", 1.0).config("w").unwrap(), None);
    }

    #[test]
    fn the_endpoint_and_ratio_are_checked() {
        let c = args("http://collector.observability:4317", 0.25)
            .config("ambit-waypoint")
            .unwrap()
            .unwrap();
        assert_eq!(c.service_name, "ambit-waypoint");
        assert_eq!(c.sampling, 0.25);
        assert!(args("https://c:4317", 0.0).config("w").unwrap().is_some());
        for bad in ["collector:4317", "grpc://c:4317", "http://", "not a url"] {
            let e = args(bad, 1.0).config("w").unwrap_err().to_string();
            assert!(e.contains(ENV_ENDPOINT) && e.contains(bad), "{e}");
        }
        for bad in [-0.1, 1.5, f64::NAN] {
            let e = args("http://c:4317", bad).config("w").unwrap_err();
            assert!(e.to_string().contains(ENV_SAMPLER_ARG), "{e}");
        }
    }

    /// How many of `n` spans under a remote parent with `flags` the sampler keeps.
    fn sampled(ratio: f64, flags: TraceFlags, n: usize) -> usize {
        let parent = Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
            SpanId::from(0x00f0_67aa_0ba9_02b7),
            flags,
            true,
            TraceState::from_key_value([("vendor", "v")]).unwrap(),
        ));
        (0..n)
            .filter(|_| {
                let r = RatioSampler(ratio).should_sample(
                    Some(&parent),
                    // The caller's trace id: one the ratio's threshold would always keep.
                    TraceId::from(1),
                    "GET",
                    &SpanKind::Server,
                    &[],
                    &[],
                );
                assert_eq!(r.trace_state.get("vendor"), Some("v"));
                r.decision == SamplingDecision::RecordAndSample
            })
            .count()
    }

    #[test]
    fn the_caller_neither_forces_nor_refuses_sampling() {
        // 10,000 draws at 0.1: 1,000 expected, sd 30; the bounds are 10 sd away.
        for flags in [TraceFlags::SAMPLED, TraceFlags::NOT_SAMPLED] {
            let n = sampled(0.1, flags, 10_000);
            assert!((700..1300).contains(&n), "{n} of 10,000 sampled at 0.1");
        }
        assert_eq!(sampled(0.0, TraceFlags::SAMPLED, 1000), 0);
        assert_eq!(sampled(1.0, TraceFlags::NOT_SAMPLED, 1000), 1000);
    }
}
