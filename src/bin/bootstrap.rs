//! `bootstrap`: what Lambda's `provided.al2023` runtime executes.
//!
//! It links no libtorch. It checks the libtorch directory (`LAMBDATORCH_LIBTORCH`, default
//! `/mnt/efs/python/torch/lib`) and torch's version, then replaces itself with
//! `lambdatorch-handler` (beside it in the zip) with that directory on the library path. If
//! libtorch is missing or of the wrong version, it reports an init error to the Runtime API that
//! names the path searched and the version wanted, instead of the dynamic loader's bare "cannot
//! open shared object file", and exits.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use lambdatorch::libtorch;
use lambdatorch::Error;

fn main() -> ExitCode {
    let lib_dir = libtorch::configured_dir();
    let err = match libtorch::check(&lib_dir) {
        Ok(_) => {
            let handler = std::env::current_exe()
                .ok()
                .and_then(|exe| Some(exe.parent()?.join("lambdatorch-handler")))
                .unwrap_or_else(|| "lambdatorch-handler".into());
            let mut library_path = lib_dir.clone().into_os_string();
            if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
                library_path.push(":");
                library_path.push(existing);
            }
            // exec only returns on failure.
            let failure = Command::new(&handler)
                .env("LD_LIBRARY_PATH", library_path)
                .env("LAMBDATORCH_LIBTORCH", &lib_dir)
                .exec();
            Error::LibTorch(format!("cannot start {}: {failure}", handler.display()))
        }
        Err(err) => err,
    };
    report_init_error(&err);
    ExitCode::FAILURE
}

/// Logs the error and posts it to the Runtime API's `/init/error`, so the invoke that started
/// this environment fails with our `errorType` and message.
fn report_init_error(err: &Error) {
    let error_type = err.kind().name();
    let body = serde_json::json!({"errorType": error_type, "errorMessage": err.to_string()});
    eprintln!("{body}");
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let endpoint = if api.contains("://") {
        api
    } else {
        format!("http://{api}")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    let sent = runtime.block_on(async move {
        let uri: aws_lambda_events::http::Uri = endpoint.parse()?;
        let client = lambda_runtime_api_client::Client::builder()
            .with_endpoint(uri)
            .build()?;
        let request = lambda_runtime_api_client::build_request()
            .method("POST")
            .uri("/2018-06-01/runtime/init/error")
            .header("lambda-runtime-function-error-type", error_type)
            .header("content-type", "application/json")
            .body(body.to_string().into())?;
        client.call(request).await?;
        Ok::<(), lambda_runtime_api_client::BoxError>(())
    });
    if let Err(failure) = sent {
        eprintln!("could not report the init error to the Runtime API: {failure}");
    }
}
