//! `lambdatorch-handler`: the native Lambda handler, started by `bootstrap` once libtorch checks
//! out.
//!
//! Configuration comes from the environment (`LAMBDATORCH_MODELS`, `LAMBDATORCH_DEFAULT_MODEL`,
//! `LAMBDATORCH_PRELOAD`, ...); preloading and warmup happen during Lambda's init phase. Each
//! event runs through the same service core as the Python handler on a blocking thread, and one
//! JSON log line per request carries the request id, the event source, the model and the stage
//! timings. A panic anywhere in a request becomes an `InferenceError` for that request only:
//! `events::handle` catches it (so HTTP callers still get a proxy response), and a panic outside
//! it would still only fail its own blocking task.

use std::time::Instant;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use lambdatorch::events::{self, Outcome};
use lambdatorch::service::Service;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAMBDATORCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_current_span(false)
        .flatten_event(true)
        .init();
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
    lambda_runtime::run(service_fn(move |event| handle(service, event))).await
}

async fn handle(service: &'static Service, event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    let outcome = tokio::task::spawn_blocking(move || events::handle(service, payload))
        .await
        .map_err(|err| {
            tracing::error!(request_id = %context.request_id, error = %err, "request panicked");
            Diagnostic {
                error_type: "InferenceError".into(),
                error_message:
                    "the request failed unexpectedly; the function's logs have the details".into(),
            }
        })?;
    log(&context.request_id, &outcome);
    outcome.reply().map_err(|err| Diagnostic {
        error_type: err.kind().name().into(),
        error_message: err.to_string(),
    })
}

fn log(request_id: &str, outcome: &Outcome) {
    let source = outcome.source.name();
    match &outcome.result {
        Ok(response) => tracing::info!(
            request_id,
            source,
            model = %response.model,
            decode_ms = response.timings.decode,
            preprocess_ms = response.timings.preprocess,
            inference_ms = response.timings.inference,
            total_ms = response.timings.total,
            "request"
        ),
        Err(err) => tracing::warn!(
            request_id,
            source,
            error_type = err.kind().name(),
            error = %err,
            "request failed"
        ),
    }
}
