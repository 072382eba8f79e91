//! One log format for both handlers: JSON lines on stderr, one per request, written by
//! [`crate::events::handle`] through `tracing`. The native handler and the Python extension each
//! install this subscriber once, so the same request logs the same fields at the same level
//! whichever handler served it. `LAMBDATORCH_LOG` sets the filter (default `info`).

/// Installs the JSON subscriber, unless the process already has one (then that one is used).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAMBDATORCH_LOG")
        .unwrap_or_else(|_| "info".into());
    let _already_installed = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_current_span(false)
        .flatten_event(true)
        .try_init();
}
