//! The one error type of lambdatorch.
//!
//! Every failure a user can cause or meet is a variant here, carrying the path, field or limit
//! involved. The Python binding maps each [`ErrorKind`] to its own exception class, the handlers
//! map it to a Lambda `errorType` and an HTTP status; neither adds error logic of its own.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, from bad input to a missing libtorch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or argument is malformed (wrong type, shape, dtype, value).
    #[error("{0}")]
    InvalidInput(String),

    /// Bytes that do not decode to a supported image.
    #[error("{0}")]
    InvalidImage(String),

    /// An image, payload or batch over a configured limit, refused before the work it guards.
    #[error("{what} is {actual}, over the limit of {limit}{hint}")]
    TooLarge {
        /// What was measured, e.g. "image size in pixels".
        what: &'static str,
        /// The measured value, formatted for people.
        actual: String,
        /// The limit.
        limit: u64,
        /// How to raise the limit, if it can be raised.
        hint: &'static str,
    },

    /// A model name that is not valid or does not exist under the models root.
    #[error("{0}")]
    ModelNotFound(String),

    /// A model directory whose manifest or files are wrong.
    #[error("{}: {field}: {message}", path.display())]
    Manifest {
        /// The manifest (or model file) at fault.
        path: PathBuf,
        /// The manifest field at fault, dotted (`input.mean`).
        field: String,
        /// What is wrong and, where possible, how to fix it.
        message: String,
    },

    /// libtorch is missing, of the wrong version, or failed to load.
    #[error("{0}")]
    LibTorch(String),

    /// The model failed to run on input that passed validation.
    #[error("{0}")]
    Inference(String),
}

/// The public error types of the design contract, one per Python exception class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `InvalidInput` (400).
    InvalidInput,
    /// `InvalidImage` (400).
    InvalidImage,
    /// `ImageTooLarge` (413).
    ImageTooLarge,
    /// `ModelNotFound` (404).
    ModelNotFound,
    /// `ManifestError` (500).
    ManifestError,
    /// `LibTorchError` (500).
    LibTorchError,
    /// `InferenceError` (500).
    InferenceError,
}

impl ErrorKind {
    /// The type name users see: the Python exception class and the Lambda `errorType`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::InvalidImage => "InvalidImage",
            ErrorKind::ImageTooLarge => "ImageTooLarge",
            ErrorKind::ModelNotFound => "ModelNotFound",
            ErrorKind::ManifestError => "ManifestError",
            ErrorKind::LibTorchError => "LibTorchError",
            ErrorKind::InferenceError => "InferenceError",
        }
    }

    /// The HTTP status of a proxy response carrying this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::InvalidImage => 400,
            ErrorKind::ImageTooLarge => 413,
            ErrorKind::ModelNotFound => 404,
            _ => 500,
        }
    }
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Shorthand for [`Error::Manifest`].
    pub fn manifest(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Manifest {
            path: path.into(),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Which public error type this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::InvalidImage(_) => ErrorKind::InvalidImage,
            Error::TooLarge { .. } => ErrorKind::ImageTooLarge,
            Error::ModelNotFound(_) => ErrorKind::ModelNotFound,
            Error::Manifest { .. } => ErrorKind::ManifestError,
            Error::LibTorch(_) => ErrorKind::LibTorchError,
            Error::Inference(_) => ErrorKind::InferenceError,
        }
    }

    /// The message for callers outside the function (HTTP clients): client errors in full,
    /// server-side ones without file-system paths, which stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Manifest { field, .. } => format!(
                "the model is misconfigured (manifest field `{field}`); the function's logs have the details"
            ),
            Error::LibTorch(_) => {
                "libtorch could not be loaded; the function's logs have the details".to_owned()
            }
            Error::Inference(_) => {
                "the model failed to run on this input; the function's logs have the details"
                    .to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Runs `work` and turns a panic inside it into an [`Error::Inference`], so that no panic
/// reaches Python or the Lambda runtime loop. Both bindings call the core through this.
///
/// Asserting unwind safety is sound here: what a request shares with later requests is either
/// immutable once built (a loaded `Model`) or recovers from poisoning (the `Registry` lock).
pub fn contain<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        Err(Error::Inference(format!(
            "internal error (a bug in lambdatorch, please report it): {message}"
        )))
    })
}

impl From<tch::TchError> for Error {
    fn from(err: tch::TchError) -> Self {
        Error::Inference(first_line(&err.to_string()))
    }
}

/// libtorch messages carry a C++ backtrace after the first line or two; users need the message.
pub(crate) fn first_line(message: &str) -> String {
    let message = message.trim();
    let cut = message
        .find("\nException raised from")
        .or_else(|| message.find("\nframe #"))
        .unwrap_or(message.len());
    message[..cut].trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_inference_errors() {
        let caught = contain(|| -> Result<()> { panic!("boom {}", 42) });
        assert!(matches!(&caught, Err(Error::Inference(m)) if m.contains("boom 42")));
        let caught = contain(|| -> Result<()> { std::panic::panic_any(7u8) });
        assert!(matches!(&caught, Err(Error::Inference(m)) if m.contains("no message")));
        // A panic on a rayon worker reaches the caller's thread, where it is caught too.
        let caught = contain(|| -> Result<()> {
            rayon::scope(|s| s.spawn(|_| panic!("in a worker")));
            Ok(())
        });
        assert!(matches!(&caught, Err(Error::Inference(m)) if m.contains("in a worker")));
        assert_eq!(contain(|| Ok(3)).ok(), Some(3));
    }
}
