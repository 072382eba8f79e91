//! The one error type of lambdatorch.
//!
//! Every failure a user can cause or meet is a variant here, carrying what a caller needs to act
//! on it: the limit and the value that broke it, the manifest file and field, the model that
//! failed. The Python binding maps each [`ErrorKind`] to its own exception class, the handlers map
//! it to a Lambda `errorType` and an HTTP status; neither adds error logic of its own.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, from bad input to a missing libtorch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request or argument is malformed (wrong type, shape, dtype, value); the message names
    /// the field.
    #[error("{0}")]
    InvalidInput(String),

    /// Bytes that do not decode to a supported image.
    #[error("{0}")]
    InvalidImage(String),

    /// An image with more pixels than `LAMBDATORCH_MAX_IMAGE_PIXELS`, refused from its header.
    #[error(
        "the image is {width}x{height} = {} pixels, over the limit of {max} \
         (LAMBDATORCH_MAX_IMAGE_PIXELS raises it)",
        u64::from(*.width) * u64::from(*.height)
    )]
    ImageTooLarge {
        /// Width in pixels, from the header.
        width: u32,
        /// Height in pixels, from the header.
        height: u32,
        /// The pixel limit in force.
        max: u64,
    },

    /// An input over a configured limit, refused before the work it guards.
    #[error("{}", too_large_message(*.limit, *.actual, *.max))]
    TooLarge {
        /// Which limit.
        limit: Limit,
        /// The measured value, in the limit's unit.
        actual: u64,
        /// The limit in force.
        max: u64,
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

    /// The model failed to run (or returned something unusable) on input that passed validation.
    #[error("model {model:?}: {message}")]
    Inference {
        /// The model's name.
        model: String,
        /// What libtorch or the output check said.
        message: String,
    },

    /// A bug in lambdatorch (a panic, a broken invariant): never the caller's or the model's fault.
    #[error("internal error in lambdatorch ({context}), please report it: {message}")]
    Internal {
        /// Where it happened.
        context: &'static str,
        /// What happened.
        message: String,
    },
}

/// The limits a request can run into; each has its environment variable (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Memory an image decoder asked for beyond its pixels (metadata, chunks, frames).
    ImageDecoderBytes,
    /// Encoded bytes of a request body or image (`LAMBDATORCH_MAX_PAYLOAD_BYTES`).
    PayloadBytes,
    /// Elements of a tensor request or `forward` input (`LAMBDATORCH_MAX_TENSOR_ELEMENTS`).
    TensorElements,
    /// UTF-8 bytes of one text (`LAMBDATORCH_MAX_TEXT_BYTES`).
    TextBytes,
    /// Tokens of one text when the manifest turns truncation off (its `input.max_length`).
    TextTokens,
    /// Texts in one request (`LAMBDATORCH_MAX_BATCH`).
    Texts,
}

impl Limit {
    /// What is measured, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Limit::ImageDecoderBytes => "the memory the image decoder needs in bytes",
            Limit::PayloadBytes => "the request payload in bytes",
            Limit::TensorElements => "the tensor's element count",
            Limit::TextBytes => "the text's length in UTF-8 bytes",
            Limit::TextTokens => "the text's token count (the manifest has \"truncation\": false)",
            Limit::Texts => "the number of texts in the request",
        }
    }

    /// The environment variable that sets this limit, if one does.
    pub fn variable(self) -> Option<&'static str> {
        match self {
            Limit::ImageDecoderBytes => None,
            Limit::PayloadBytes => Some("LAMBDATORCH_MAX_PAYLOAD_BYTES"),
            Limit::TensorElements => Some("LAMBDATORCH_MAX_TENSOR_ELEMENTS"),
            Limit::TextBytes => Some("LAMBDATORCH_MAX_TEXT_BYTES"),
            Limit::TextTokens => None,
            Limit::Texts => Some("LAMBDATORCH_MAX_BATCH"),
        }
    }

    /// Whether the limit is about images (`ImageTooLarge`) or other payloads (`PayloadTooLarge`).
    pub fn is_image(self) -> bool {
        matches!(self, Limit::ImageDecoderBytes)
    }
}

fn too_large_message(limit: Limit, actual: u64, max: u64) -> String {
    let how = limit
        .variable()
        .map(|var| format!(" ({var} raises it)"))
        .unwrap_or_default();
    if actual > max {
        format!("{} is {actual}, over the limit of {max}{how}", limit.what())
    } else {
        // Decoders report that they would need more than they may have, not how much.
        format!("{} would exceed the limit of {max}{how}", limit.what())
    }
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
    /// `PayloadTooLarge` (413): bodies, tensors and texts over their limits.
    PayloadTooLarge,
    /// `ModelNotFound` (404).
    ModelNotFound,
    /// `ManifestError` (500).
    ManifestError,
    /// `LibTorchError` (500).
    LibTorchError,
    /// `InferenceError` (500): the model failed on valid input.
    InferenceError,
    /// `InternalError` (500): a bug in lambdatorch.
    InternalError,
}

impl ErrorKind {
    /// Every kind, for tests and bindings that must cover them all.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidInput,
        ErrorKind::InvalidImage,
        ErrorKind::ImageTooLarge,
        ErrorKind::PayloadTooLarge,
        ErrorKind::ModelNotFound,
        ErrorKind::ManifestError,
        ErrorKind::LibTorchError,
        ErrorKind::InferenceError,
        ErrorKind::InternalError,
    ];

    /// The type name users see: the Python exception class and the Lambda `errorType`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "InvalidInput",
            ErrorKind::InvalidImage => "InvalidImage",
            ErrorKind::ImageTooLarge => "ImageTooLarge",
            ErrorKind::PayloadTooLarge => "PayloadTooLarge",
            ErrorKind::ModelNotFound => "ModelNotFound",
            ErrorKind::ManifestError => "ManifestError",
            ErrorKind::LibTorchError => "LibTorchError",
            ErrorKind::InferenceError => "InferenceError",
            ErrorKind::InternalError => "InternalError",
        }
    }

    /// The HTTP status of a proxy response carrying this error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput | ErrorKind::InvalidImage => 400,
            ErrorKind::ImageTooLarge | ErrorKind::PayloadTooLarge => 413,
            ErrorKind::ModelNotFound => 404,
            ErrorKind::ManifestError
            | ErrorKind::LibTorchError
            | ErrorKind::InferenceError
            | ErrorKind::InternalError => 500,
        }
    }

    /// Whether the caller caused it (4xx) rather than the function (5xx).
    pub fn is_client_error(self) -> bool {
        self.http_status() < 500
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

    /// Shorthand for [`Error::Inference`].
    pub fn inference(model: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Inference {
            model: model.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(context: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Internal {
            context,
            message: message.to_string(),
        }
    }

    /// Which public error type this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::InvalidImage(_) => ErrorKind::InvalidImage,
            Error::ImageTooLarge { .. } => ErrorKind::ImageTooLarge,
            Error::TooLarge { limit, .. } if limit.is_image() => ErrorKind::ImageTooLarge,
            Error::TooLarge { .. } => ErrorKind::PayloadTooLarge,
            Error::ModelNotFound(_) => ErrorKind::ModelNotFound,
            Error::Manifest { .. } => ErrorKind::ManifestError,
            Error::LibTorch(_) => ErrorKind::LibTorchError,
            Error::Inference { .. } => ErrorKind::InferenceError,
            Error::Internal { .. } => ErrorKind::InternalError,
        }
    }

    /// The message for callers outside the function (HTTP clients): client errors in full,
    /// server-side ones without file-system paths or internals, which stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Manifest { field, .. } => format!(
                "the model is misconfigured (manifest field `{field}`); the function's logs have the details"
            ),
            Error::LibTorch(_) => {
                "libtorch could not be loaded; the function's logs have the details".to_owned()
            }
            Error::Inference { model, .. } => format!(
                "model {model:?} failed to run on this input; the function's logs have the details"
            ),
            Error::Internal { .. } => {
                "internal error in lambdatorch; the function's logs have the details".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Runs `work` and turns a panic inside it into an [`Error::Internal`], so that no panic
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
        Err(Error::internal("panic", message))
    })
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
    fn panics_become_internal_errors() {
        let caught = contain(|| -> Result<()> { panic!("boom {}", 42) });
        assert!(
            matches!(&caught, Err(Error::Internal { message, .. }) if message.contains("boom 42"))
        );
        let caught = contain(|| -> Result<()> { std::panic::panic_any(7u8) });
        assert!(
            matches!(&caught, Err(Error::Internal { message, .. }) if message.contains("no message"))
        );
        // A panic on a rayon worker reaches the caller's thread, where it is caught too.
        let caught = contain(|| -> Result<()> {
            rayon::scope(|s| s.spawn(|_| panic!("in a worker")));
            Ok(())
        });
        assert!(matches!(&caught, Err(e) if e.kind() == ErrorKind::InternalError));
        assert_eq!(contain(|| Ok(3)).ok(), Some(3));
    }

    #[test]
    fn too_large_says_what_and_how() {
        let image = Error::ImageTooLarge {
            width: 10,
            height: 5,
            max: 40,
        };
        assert_eq!(image.kind(), ErrorKind::ImageTooLarge);
        assert_eq!(
            image.to_string(),
            "the image is 10x5 = 50 pixels, over the limit of 40 \
             (LAMBDATORCH_MAX_IMAGE_PIXELS raises it)"
        );
        let tensor = Error::TooLarge {
            limit: Limit::TensorElements,
            actual: 11,
            max: 10,
        };
        assert_eq!(tensor.kind(), ErrorKind::PayloadTooLarge);
        assert_eq!(tensor.kind().http_status(), 413);
        let decoder = Error::TooLarge {
            limit: Limit::ImageDecoderBytes,
            actual: 0,
            max: 1024,
        };
        assert!(decoder
            .to_string()
            .contains("would exceed the limit of 1024"));
    }

    #[test]
    fn server_errors_hide_details_from_callers() {
        let err = Error::internal("resize", "/secret/path broke");
        assert_eq!(err.kind().http_status(), 500);
        assert!(!err.public_message().contains("/secret"));
        let err = Error::inference("tiny", "shape mismatch at /opt/x");
        assert!(err.public_message().contains("\"tiny\""));
        assert!(!err.public_message().contains("/opt"));
        for kind in ErrorKind::ALL {
            assert_eq!(kind.is_client_error(), kind.http_status() < 500);
        }
    }
}
