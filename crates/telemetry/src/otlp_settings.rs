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

/// What a request span's `url.path` holds (the chart's `tracing.otlp.path`).
pub const ENV_URL_PATH: &str = "AMBIT_OTLP_URL_PATH";

/// What of the request's path a span carries. Paths can hold secrets and personal data
/// (`/reset/<token>`, `/users/<email>`), and spans leave the mesh for a collector that keeps
/// them: the default, [`UrlPath::Route`], exports the route the request matched instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "otlp", derive(clap::ValueEnum))]
pub enum UrlPath {
    /// `url.path`, the request's path as sent (without the query).
    Full,
    /// `ambit.route`, `namespace/name` of the HTTPRoute or GRPCRoute matched (none when no
    /// route did); no path.
    #[default]
    Route,
    /// Neither.
    None,
}

impl UrlPath {
    pub const ALL: [Self; 3] = [Self::Full, Self::Route, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Route => "route",
            Self::None => "none",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == value)
    }
}
