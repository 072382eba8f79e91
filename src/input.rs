//! What a model takes: the manifest's `input` section made executable.
//!
//! The one place that knows the input's shape and dtype: it checks callers' tensors against
//! them, builds the warmup input, and owns the image [`Preprocessor`] for image models and the
//! tokenizer ([`TextPipeline`]) for text models.

use crate::error::{Error, Result};
use crate::image::Preprocessor;
use crate::limits::Limits;
use crate::manifest::{resolve_inside, Input, Kind, ModelDir, Padding};
use crate::tensor::{element_count, DType, TensorData};
use crate::text::TextPipeline;

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
    /// Texts, tokenized into int64 `[batch, tokens]` tensors.
    Text(Box<TextPipeline>),
}

impl InputPipeline {
    /// The pipeline for a model directory's `input` (a text model's tokenizer is read here).
    pub fn load(dir: &ModelDir, limits: &Limits) -> Result<InputPipeline> {
        Ok(match &dir.manifest.input {
            Input::Image(spec) => {
                InputPipeline::Image(Preprocessor::new(spec, limits.max_image_pixels))
            }
            Input::Tensor(spec) => InputPipeline::Tensor {
                shape: spec.shape.clone(),
                dtype: spec.dtype,
            },
            Input::Text(spec) => {
                let path = resolve_inside(
                    &dir.dir,
                    &spec.tokenizer,
                    &dir.manifest_path,
                    "input.tokenizer",
                    Kind::File,
                )?;
                InputPipeline::Text(Box::new(TextPipeline::load(
                    &path,
                    spec,
                    &dir.manifest_path,
                )?))
            }
        })
    }

    /// The input shape, batch first, `-1` where any size goes.
    pub fn shape(&self) -> Vec<i64> {
        match self {
            InputPipeline::Image(pre) => {
                let [c, h, w] = pre.chw();
                vec![-1, c as i64, h as i64, w as i64]
            }
            InputPipeline::Tensor { shape, .. } => shape.clone(),
            InputPipeline::Text(text) => {
                let spec = text.spec();
                let tokens = match spec.padding {
                    Padding::MaxLength => spec.max_length as i64,
                    Padding::Longest => -1,
                };
                vec![-1, tokens]
            }
        }
    }

    /// The largest size of each dimension where [`InputPipeline::shape`] says `-1` (`None`:
    /// any): a text model's tokens are at most its `max_length`.
    pub fn most(&self) -> Vec<Option<usize>> {
        match self {
            InputPipeline::Text(text) => vec![None, Some(text.spec().max_length)],
            InputPipeline::Image(_) | InputPipeline::Tensor { .. } => Vec::new(),
        }
    }

    /// The input's element type (image models take float32).
    pub fn dtype(&self) -> DType {
        match self {
            InputPipeline::Image(_) => DType::Float32,
            InputPipeline::Tensor { dtype, .. } => *dtype,
            InputPipeline::Text(_) => DType::Int64,
        }
    }

    /// The image preprocessing, when the model takes images.
    pub fn preprocessor(&self) -> Option<&Preprocessor> {
        match self {
            InputPipeline::Image(pre) => Some(pre),
            InputPipeline::Tensor { .. } | InputPipeline::Text(_) => None,
        }
    }

    /// The tokenizer, when the model takes text.
    pub fn text(&self) -> Option<&TextPipeline> {
        match self {
            InputPipeline::Text(text) => Some(text.as_ref()),
            InputPipeline::Image(_) | InputPipeline::Tensor { .. } => None,
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
        if self.text().is_some() {
            // Token ids from a caller could index past the model's vocabulary (a libtorch
            // error blamed on the model) and would skip the tokenizer the model was trained with.
            return Err(Error::invalid_input(
                "the model takes text (its manifest's input.type is \"text\"): send \"text\" or \
                 \"texts\", or call predict, embed or tokenize",
            ));
        }
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
