//! `lambdatorch-handler`: the native Lambda handler, started by `bootstrap` once libtorch checks
//! out.
//!
//! Configuration comes from the environment (`LAMBDATORCH_MODELS`, `LAMBDATORCH_DEFAULT_MODEL`,
//! `LAMBDATORCH_PRELOAD`, ...); preloading and warmup happen during Lambda's init phase, and a
//! bad configuration or a failed preload fails init. Each event is [`lambdatorch::lambda::handle`];
//! with `AWS_LAMBDA_MAX_CONCURRENCY` above 1 (Lambda Managed Instances), that many at once.

use std::time::Instant;

use lambda_runtime::service_fn;
use lambdatorch::service::Service;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambdatorch::logging::init();
    let started = Instant::now();
    let service = Service::global().inspect_err(|err| {
        tracing::error!(error_type = err.kind().name(), error = %err, "bad configuration");
    })?;
    service.preload().inspect_err(|err| {
        tracing::error!(error_type = err.kind().name(), error = %err, "preload failed");
    })?;
    tracing::info!(
        models_root = %service.config().models_root.display(),
        preloaded = ?service.config().preload,
        init_ms = started.elapsed().as_secs_f64() * 1e3,
        "ready"
    );
    // One request at a time, or `AWS_LAMBDA_MAX_CONCURRENCY` at once on Lambda Managed Instances
    // (each on a blocking thread; concurrent requests for a model share forward passes).
    lambda_runtime::run_concurrent(service_fn(move |event| {
        lambdatorch::lambda::handle(service, event)
    }))
    .await
}
