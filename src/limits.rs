//! The resource limits that stand between a request and the work it asks for.
//!
//! Every limit has a safe default and an environment variable to change it; each is checked
//! before the work it guards (decoding, copying, allocating a tensor, running the model), so a
//! hostile request costs a header read or a length check, not memory. Bad values in the
//! environment are configuration errors, never silently replaced by defaults.

use crate::error::{Error, Limit, Result};
use crate::image::DEFAULT_MAX_IMAGE_PIXELS;

/// Lambda's limit for synchronous invocation payloads.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 6 * 1024 * 1024;

/// 16 Mi float32 elements (64 MB): a batch of 64 ImageNet images, far more than one 6 MB
/// request can carry as JSON.
pub const DEFAULT_MAX_TENSOR_ELEMENTS: u64 = 16 * 1024 * 1024;

/// A process-wide ceiling on batch sizes, above each manifest's own `max_batch`.
pub const DEFAULT_MAX_BATCH: usize = 64;

/// Predictions per input a caller may ask for (more classes than this are rare; the response
/// must fit Lambda's 6 MB).
pub const DEFAULT_MAX_TOP_K: usize = 1000;

/// Bytes of one text: far more than any model's context (512 tokens are a few KB), small enough
/// that tokenizing a hostile text costs milliseconds.
pub const DEFAULT_MAX_TEXT_BYTES: u64 = 64 * 1024;

/// The limits in force, read once from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `LAMBDATORCH_MAX_IMAGE_PIXELS`: width x height, checked from the image header.
    pub max_image_pixels: u64,
    /// `LAMBDATORCH_MAX_PAYLOAD_BYTES`: request bodies and base64 images, encoded.
    pub max_payload_bytes: u64,
    /// `LAMBDATORCH_MAX_TENSOR_ELEMENTS`: elements of a tensor request or `forward` input.
    pub max_tensor_elements: u64,
    /// `LAMBDATORCH_MAX_BATCH`: inputs per request, whatever a manifest's `max_batch` says.
    pub max_batch: usize,
    /// `LAMBDATORCH_MAX_TOP_K`: predictions per input a request may ask for.
    pub max_top_k: usize,
    /// `LAMBDATORCH_MAX_TEXT_BYTES`: UTF-8 bytes of each text, checked before tokenizing.
    pub max_text_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_tensor_elements: DEFAULT_MAX_TENSOR_ELEMENTS,
            max_batch: DEFAULT_MAX_BATCH,
            max_top_k: DEFAULT_MAX_TOP_K,
            max_text_bytes: DEFAULT_MAX_TEXT_BYTES,
        }
    }
}

impl Limits {
    /// The limits from the environment, defaults for variables that are unset or empty.
    pub fn from_env() -> Result<Limits> {
        let defaults = Limits::default();
        Ok(Limits {
            max_image_pixels: env_limit("LAMBDATORCH_MAX_IMAGE_PIXELS", defaults.max_image_pixels)?,
            max_payload_bytes: env_limit(
                "LAMBDATORCH_MAX_PAYLOAD_BYTES",
                defaults.max_payload_bytes,
            )?,
            max_tensor_elements: env_limit(
                "LAMBDATORCH_MAX_TENSOR_ELEMENTS",
                defaults.max_tensor_elements,
            )?,
            max_batch: env_limit("LAMBDATORCH_MAX_BATCH", defaults.max_batch as u64)? as usize,
            max_top_k: env_limit("LAMBDATORCH_MAX_TOP_K", defaults.max_top_k as u64)? as usize,
            max_text_bytes: env_limit("LAMBDATORCH_MAX_TEXT_BYTES", defaults.max_text_bytes)?,
        })
    }

    /// Refuses a tensor of `elements` elements before it is copied or allocated.
    pub fn check_tensor_elements(&self, elements: usize) -> Result<()> {
        if elements as u64 > self.max_tensor_elements {
            return Err(Error::TooLarge {
                limit: Limit::TensorElements,
                actual: elements as u64,
                max: self.max_tensor_elements,
            });
        }
        Ok(())
    }

    /// Refuses a request body or encoded image of `len` bytes before it is decoded.
    pub fn check_payload(&self, len: usize) -> Result<()> {
        if len as u64 > self.max_payload_bytes {
            return Err(Error::TooLarge {
                limit: Limit::PayloadBytes,
                actual: len as u64,
                max: self.max_payload_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a text of `len` UTF-8 bytes before it is tokenized.
    pub fn check_text_bytes(&self, len: usize) -> Result<()> {
        if len as u64 > self.max_text_bytes {
            return Err(Error::TooLarge {
                limit: Limit::TextBytes,
                actual: len as u64,
                max: self.max_text_bytes,
            });
        }
        Ok(())
    }

    /// Refuses a request of `count` texts (over `LAMBDATORCH_MAX_BATCH`) before any is read.
    pub fn check_text_count(&self, count: usize) -> Result<()> {
        if count > self.max_batch {
            return Err(Error::TooLarge {
                limit: Limit::Texts,
                actual: count as u64,
                max: self.max_batch as u64,
            });
        }
        Ok(())
    }

    /// Validates a caller's `top_k`: at least 1 and at most `max_top_k`. Larger than a model's
    /// class count (but within the limit) means all classes.
    pub fn check_top_k(&self, value: Option<i64>) -> Result<Option<usize>> {
        match value {
            None => Ok(None),
            Some(k) if k < 1 => Err(Error::invalid_input(format!(
                "top_k must be at least 1, got {k}"
            ))),
            Some(k) if k as u64 > self.max_top_k as u64 => Err(Error::invalid_input(format!(
                "top_k is {k}, over the limit of {} (LAMBDATORCH_MAX_TOP_K)",
                self.max_top_k
            ))),
            Some(k) => Ok(Some(k as usize)),
        }
    }
}

/// A positive integer from `name`, or `default` when it is unset or blank.
fn env_limit(name: &str, default: u64) -> Result<u64> {
    let Ok(value) = std::env::var(name) else {
        return Ok(default);
    };
    if value.trim().is_empty() {
        return Ok(default);
    }
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|&n| n > 0 && usize::try_from(n).is_ok())
        .ok_or_else(|| {
            Error::invalid_input(format!("{name} must be a positive integer, got {value:?}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_bounded_both_ways() {
        let limits = Limits::default();
        assert_eq!(limits.check_top_k(None).ok(), Some(None));
        assert_eq!(limits.check_top_k(Some(1000)).ok(), Some(Some(1000)));
        for bad in [0, -1, i64::MIN, 1001, i64::MAX] {
            assert!(
                matches!(limits.check_top_k(Some(bad)), Err(Error::InvalidInput(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn sizes_over_the_limits_are_too_large() {
        let limits = Limits {
            max_tensor_elements: 10,
            max_payload_bytes: 100,
            ..Limits::default()
        };
        assert!(limits.check_tensor_elements(10).is_ok());
        assert!(matches!(
            limits.check_tensor_elements(11),
            Err(Error::TooLarge { max: 10, .. })
        ));
        assert!(limits.check_payload(100).is_ok());
        assert!(matches!(
            limits.check_payload(101),
            Err(Error::TooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn env_values_must_be_positive_integers() {
        // A variable no other test reads, so tests running in parallel do not interfere.
        let name = "LAMBDATORCH_TEST_LIMIT_PARSING";
        for (value, expected) in [("", Some(7)), (" 12 ", Some(12)), ("0", None), ("-1", None)] {
            std::env::set_var(name, value);
            assert_eq!(env_limit(name, 7).ok(), expected, "{value:?}");
        }
        std::env::set_var(name, "lots");
        assert!(env_limit(name, 7)
            .unwrap_err()
            .to_string()
            .contains("must be a positive integer"));
        std::env::remove_var(name);
        assert_eq!(env_limit(name, 7).ok(), Some(7));
    }
}
