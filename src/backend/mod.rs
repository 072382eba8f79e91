//! Backends: what runs a model's forward pass, chosen by the manifest's `format`.
//!
//! A backend knows one serialisation format and nothing else: it loads the model file and maps
//! input tensors to output tensors. Preprocessing, batching, dtypes of the API and output handling
//! live in [`crate::model`], so every format serves the same requests with the same answers.

pub mod aoti;
mod torchscript;

use std::path::Path;

use crate::manifest::Format;

/// A loaded model, ready to run. Shared by every thread that serves the model.
pub trait Backend: Send + Sync {
    /// Runs the model on `inputs` (one tensor per model input, batch first) without autograd,
    /// returning its outputs in order (a single output is a one-element vector).
    ///
    /// Errors are the model's own failures, as libtorch words them (first line only).
    fn forward(&self, inputs: &[tch::Tensor]) -> std::result::Result<Vec<tch::Tensor>, String>;

    /// The batch sizes the model itself accepts (an AOTInductor package exported with a static
    /// batch dimension takes that size only).
    fn batch_sizes(&self) -> BatchSizes {
        BatchSizes::Any
    }
}

/// Batch sizes a loaded model accepts, whatever its manifest says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSizes {
    /// Any size.
    Any,
    /// 1 to this many.
    UpTo(usize),
    /// This size and no other.
    Exactly(usize),
}

/// Loads the model at `path` (already verified by the caller: for a file, `path` may be a
/// `/proc/self/fd` link to it; an AOTInductor package is its unpacked directory) with the
/// backend for `format`. The error message says why it is not a loadable model of that format.
pub fn load(format: Format, path: &Path) -> std::result::Result<Box<dyn Backend>, String> {
    match format {
        Format::Torchscript => Ok(Box::new(torchscript::TorchScript::load(path)?)),
        Format::Aoti => Ok(Box::new(aoti::Aoti::load(path)?)),
    }
}

/// Sets libtorch's intra-op thread count (process-wide in libtorch).
pub fn set_threads(threads: usize) {
    tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
}
