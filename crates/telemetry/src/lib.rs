//! Process telemetry the data-plane binaries set up alike: [`init_logs`], the JSON log on
//! stderr, and (feature `otlp`) [`otlp`], OpenTelemetry span export over OTLP/gRPC.

#[cfg(feature = "otlp")]
pub mod otlp;
pub mod otlp_settings;

/// The variable holding the log filter (`tracing` EnvFilter syntax); `RUST_LOG` is read when
/// it is unset, and `info` when both are.
pub const ENV_LOG: &str = "AMBIT_LOG";

/// JSON lines on stderr, filtered by [`ENV_LOG`]. Call once, first thing in `main` (after the
/// flags are parsed, so `--help` and usage errors print as clap prints them).
pub fn init_logs() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            EnvFilter::try_from_env(ENV_LOG)
                .or_else(|_| EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
