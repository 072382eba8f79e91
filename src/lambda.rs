//! The native Lambda handler: one event in, one reply out, on `lambda_runtime`.
//!
//! `src/bin/lambdatorch-handler.rs` only sets up logging, the service and the runtime loop; the
//! per-event function lives here so that tests call it directly with a `Context`. Each event runs
//! through the same core as the Python handler ([`events::handle`], which logs it) on a blocking
//! thread, so inference never stalls the runtime's async tasks.

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::Value;

use crate::events::{self, Reply};
use crate::service::Service;
use crate::ErrorKind;

/// Serves one event: a proxy response for HTTP-style events, the response for direct invokes,
/// or a function error whose `errorType` is the lambdatorch error type.
pub async fn handle(
    service: &'static Service,
    event: LambdaEvent<Value>,
) -> Result<Reply, Diagnostic> {
    let (payload, context) = event.into_parts();
    let request_id = context.request_id.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        events::handle(service, payload, &request_id)
    })
    .await
    .map_err(|err| {
        // Unreachable in practice: `events::handle` contains panics itself.
        tracing::error!(request_id = %context.request_id, error = %err, "request task failed");
        Diagnostic {
            error_type: ErrorKind::InternalError.name().into(),
            error_message: "internal error in lambdatorch; the function's logs have the details"
                .into(),
        }
    })?;
    outcome.into_reply().map_err(|err| Diagnostic {
        error_type: err.kind().name().into(),
        error_message: err.to_string(),
    })
}
