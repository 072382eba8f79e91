//! `bootstrap`: what Lambda's `provided.al2023` runtime executes.
//!
//! A small crate of its own that links neither libtorch nor the engine. It checks the libtorch
//! directory (`LAMBDATORCH_LIBTORCH`, default `/mnt/efs/python/torch/lib`) and torch's version,
//! then replaces itself with `lambdatorch-handler` (beside it in the zip) with that directory on
//! the library path. If libtorch is missing or of the wrong version, it reports an init error to
//! the Runtime API that names the path searched and the version wanted, instead of the dynamic
//! loader's bare "cannot open shared object file", and exits.
//!
//! On EFS, where every file-system call is a round trip, it also starts the handler so that the
//! dynamic loader searches for nothing there ([`plan`]), and starts prefetching what the cold
//! start will read, in large parallel reads ([`prefetch`]).

mod elf;
mod libtorch;
mod plan;
mod prefetch;
mod runtime_api;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;

use libtorch::LibTorchError;

fn main() -> ExitCode {
    let lib_dir = libtorch::configured_dir();
    let err = match libtorch::check(&lib_dir) {
        Ok(_) => {
            let handler = handler_path();
            let record = prefetch::Record::read(&lib_dir);
            let plan = plan::load_plan(&lib_dir, record.as_ref());
            prefetch::start_detached(prefetch::steps(&lib_dir, plan.as_ref(), record.as_ref()));
            // exec only returns on failure.
            let failure = plan::handler_command(&handler, &lib_dir, plan.as_ref()).exec();
            LibTorchError(format!("cannot start {}: {failure}", handler.display()))
        }
        Err(err) => err,
    };
    report_init_error(&err);
    ExitCode::FAILURE
}

/// `lambdatorch-handler` beside this executable (both sit at the zip's root, `/var/task`).
fn handler_path() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("lambdatorch-handler")))
        .unwrap_or_else(|| "lambdatorch-handler".into())
}

/// Logs the error as one JSON line on stderr and posts it to the Runtime API's `/init/error`.
fn report_init_error(err: &LibTorchError) {
    let body =
        serde_json::json!({"errorType": LibTorchError::TYPE, "errorMessage": err.to_string()})
            .to_string();
    eprintln!("{body}");
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let sent = runtime_api::Endpoint::parse(&api)
        .and_then(|endpoint| endpoint.post_init_error(LibTorchError::TYPE, &body));
    if let Err(failure) = sent {
        eprintln!("could not report the init error to the Runtime API: {failure}");
    }
}
