//! What a model takes: the manifest's `input` section made executable.
//!
//! The one place that knows the input's shape and dtype: it checks callers' tensors against
//! them, builds the warmup input, and owns the image [`Preprocessor`] for image models.

use crate::error::{Error, Result};
use crate::image::Preprocessor;
use crate::limits::Limits;
use crate::manifest::Input;
use crate::tensor::{element_count, DType, TensorData};

/// A model's input pipeline.
#[derive(Debug)]
pub enum InputPipeline {
    /// Encoded images or pixel arrays, preprocessed to NCHW float32.
    Image(Preprocessor),
    /// Tensors given directly, batch first, in the manifest's dtype.
    Tensor {
        /// Batch first; `-1` accepts any size.
        shape: Vec<i64>,
        /// Element type.
        dtype: DType,
    },
}

impl InputPipeline {
    /// The pipeline for a manifest's `input`.
    pub fn new(input: &Input, limits: &Limits) -> InputPipeline {
        match input {
            Input::Image(spec) => {
                InputPipeline::Image(Preprocessor::new(spec, limits.max_image_pixels))
            }
            Input::Tensor(spec) => InputPipeline::Tensor {
                shape: spec.shape.clone(),
                dtype: spec.dtype,
            },
        }
    }

    /// The input shape, batch first, `-1` where any size goes.
    pub fn shape(&self) -> Vec<i64> {
        match self {
            InputPipeline::Image(pre) => {
                let [c, h, w] = pre.chw();
                vec![-1, c as i64, h as i64, w as i64]
            }
            InputPipeline::Tensor { shape, .. } => shape.clone(),
        }
    }

    /// The input's element type (image models take float32).
    pub fn dtype(&self) -> DType {
        match self {
            InputPipeline::Image(_) => DType::Float32,
            InputPipeline::Tensor { dtype, .. } => *dtype,
        }
    }

    /// The image preprocessing, when the model takes images.
    pub fn preprocessor(&self) -> Option<&Preprocessor> {
        match self {
            InputPipeline::Image(pre) => Some(pre),
            InputPipeline::Tensor { .. } => None,
        }
    }

    /// Zeros of batch 1 (and 1 wherever the shape says any), to warm the model up with.
    pub fn warmup_input(&self) -> Result<TensorData> {
        let shape = self.shape().iter().map(|&d| d.max(1) as usize).collect();
        TensorData::zeros(shape, self.dtype())
    }

    /// Checks a caller's tensor shape and element count against the input and the limits,
    /// before anything is copied: callers that copy (the Python `forward`) call it first.
    /// The batch size is the model's to check.
    pub fn check_shape(&self, shape: &[usize], limits: &Limits) -> Result<()> {
        limits.check_tensor_elements(element_count(shape).unwrap_or(usize::MAX))?;
        let want = self.shape();
        let fits = shape.len() == want.len()
            && shape
                .iter()
                .zip(&want)
                .enumerate()
                .all(|(i, (&got, &w))| w == -1 || got as i64 == w || (i == 0 && got >= 1));
        if !fits {
            return Err(Error::invalid_input(format!(
                "the model takes tensors of shape {want:?} (batch first, -1 for any), got \
                 {shape:?}"
            )));
        }
        Ok(())
    }

    /// Checks a caller's tensor against the input: shape, dtype, finite values.
    pub fn check(&self, tensor: &TensorData, limits: &Limits) -> Result<()> {
        self.check_shape(&tensor.shape, limits)?;
        if tensor.dtype() != self.dtype() {
            return Err(Error::invalid_input(format!(
                "the model takes {} tensors, got {}",
                self.dtype().name(),
                tensor.dtype().name()
            )));
        }
        if let Some((i, value)) = tensor.elements.first_non_finite() {
            return Err(Error::invalid_input(format!(
                "the tensor holds {value} at element {i}: inputs must be finite numbers"
            )));
        }
        Ok(())
    }
}
