//! The OpenTelemetry settings a waypoint reads, without the exporter: what the controller
//! needs to check the chart's values and hand them on, so it links no OpenTelemetry SDK.

pub const ENV_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// An `http://` or `https://` URL with a host: what the gRPC exporter can dial.
pub fn valid_endpoint(endpoint: &str) -> bool {
    endpoint
        .parse::<http::Uri>()
        .is_ok_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some())
}

/// A sampling ratio: 0..=1 (not NaN).
pub fn valid_ratio(ratio: f64) -> bool {
    (0.0..=1.0).contains(&ratio)
}
