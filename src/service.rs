//! The service core: one request in, one response out, whatever the event source.
//!
//! Both handlers (the Python `lambdatorch.handle` and the native `bootstrap`) run this code, so
//! the same request gives the same response byte for byte. It resolves the model (request, then
//! `LAMBDATORCH_DEFAULT_MODEL`, then the only model under the root), loads it once per process
//! through the [`Registry`], and runs images, batches, tensors or texts. Turning Lambda events into
//! [`Request`]s and responses into proxy responses is [`crate::events`]' job.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::ImageSource;
use crate::limits::Limits;
use crate::manifest::MANIFEST_FILE;
use crate::model::{Model, TextAnswer, Timings};
use crate::output::Prediction;
use crate::registry::{self, Registry};
use crate::tensor::{short_f64, DType, Elements, Scalar, TensorData};
use crate::text::TextSource;

/// Where models live unless `LAMBDATORCH_MODELS` says otherwise.
pub const DEFAULT_MODELS_ROOT: &str = "/mnt/efs/models";

/// Service configuration, from the environment (see the README's "Lambda handlers").
#[derive(Debug, Clone)]
pub struct Config {
    /// `LAMBDATORCH_MODELS`: the models root.
    pub models_root: PathBuf,
    /// `LAMBDATORCH_DEFAULT_MODEL`: used when a request names no model.
    pub default_model: Option<String>,
    /// `LAMBDATORCH_PRELOAD`: models loaded during init.
    pub preload: Vec<String>,
    /// The limits requests are held to (`LAMBDATORCH_MAX_*`).
    pub limits: Limits,
}

impl Config {
    /// Reads the configuration from the environment; bad values are errors, not defaults.
    pub fn from_env() -> Result<Config> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Ok(Config {
            models_root: PathBuf::from(
                var("LAMBDATORCH_MODELS").unwrap_or_else(|| DEFAULT_MODELS_ROOT.to_owned()),
            ),
            default_model: var("LAMBDATORCH_DEFAULT_MODEL"),
            preload: var("LAMBDATORCH_PRELOAD")
                .map(|list| {
                    list.split(',')
                        .map(|name| name.trim().to_owned())
                        .filter(|name| !name.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            limits: {
                // Checked here so that a bad value fails init, not the first model load.
                registry::cache_budget()?;
                crate::model::batching_delay()?;
                Limits::from_env()?
            },
        })
    }
}

/// What a request asks the model to run on.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// One encoded image: answered with `predictions`.
    Image(Vec<u8>),
    /// A batch of encoded images, run in one forward pass: answered with `results`.
    Images(Vec<Vec<u8>>),
    /// A tensor, batch first, as JSON scalars until the model's dtype is known: answered with
    /// `results`, one per row.
    Tensor {
        /// Dimensions, batch first.
        shape: Vec<usize>,
        /// Elements, row-major.
        data: Vec<Scalar>,
    },
    /// One text (or pair of texts): answered with `predictions` (or `embeddings`).
    Text(TextSource),
    /// A batch of texts, run in one forward pass: answered with `results` (or `embeddings`).
    Texts(Vec<TextSource>),
}

impl Payload {
    /// Whether the request carried one input by a singular field (`image`, `text`), which is
    /// answered with `predictions`; every other form (`images`, `tensor`, `texts`) is answered
    /// with `results`.
    pub fn is_single(&self) -> bool {
        matches!(self, Payload::Image(_) | Payload::Text(_))
    }
}

/// A request, however it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The model name; `None` means the default model.
    pub model: Option<String>,
    /// The input.
    pub payload: Payload,
    /// Predictions per input; `None` means the manifest's `top_k`.
    pub top_k: Option<i64>,
}

/// A response body (the design's JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Response {
    /// The model that answered.
    pub model: String,
    /// Predictions, batch results or raw output.
    #[serde(flatten)]
    pub body: Body,
    /// Milliseconds per stage.
    #[serde(rename = "timings_ms", serialize_with = "rounded_timings")]
    pub timings: Timings,
    /// Rows in the forward pass this request shared, when the model batches concurrent requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
}

/// The part of a response that depends on the request and the model's output.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    /// A classification of the one input of a singular request (`image`).
    Predictions {
        /// Best first.
        predictions: Vec<Prediction>,
    },
    /// Classifications of every input of a batch request (`images`, `tensor`), in order.
    Batch {
        /// One entry per input, in order.
        results: Vec<BatchResult>,
    },
    /// Raw output, whatever the request's form.
    Raw {
        /// The output tensor.
        output: RawTensor,
    },
    /// An embedding model's vectors, one per text, whatever the request's form.
    Embeddings {
        /// One vector per text, in order.
        #[serde(serialize_with = "short_vectors")]
        embeddings: Vec<Vec<f32>>,
        /// Length of each vector.
        dims: usize,
    },
}

/// float32 values as the shortest decimals that round-trip them, as predictions' scores are: the
/// same digits in the native handler's JSON and in Python's floats.
fn short_vectors<S: serde::Serializer>(vectors: &[Vec<f32>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(
        vectors
            .iter()
            .map(|v| v.iter().map(|&x| short_f64(x)).collect::<Vec<_>>()),
    )
}

/// One input's predictions in a batch response.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    /// Best first.
    pub predictions: Vec<Prediction>,
}

/// A raw output tensor in a response.
#[derive(Debug, Clone, Serialize)]
pub struct RawTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Element type: the model's output dtype.
    pub dtype: DType,
    /// Elements, row-major: integers exactly, bools as `true`/`false`, floats as the shortest
    /// decimals that round-trip their own precision.
    pub data: Elements,
}

fn rounded_timings<S: serde::Serializer>(t: &Timings, s: S) -> Result<S::Ok, S::Error> {
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    Timings {
        queue: t.queue.map(round),
        batch_size: None,
        decode: round(t.decode),
        preprocess: round(t.preprocess),
        inference: round(t.inference),
        total: round(t.total),
    }
    .serialize(s)
}

/// The service: configuration plus the process's model registry.
#[derive(Debug)]
pub struct Service {
    config: Config,
    only_model: OnceLock<Option<String>>,
}

static GLOBAL: OnceLock<Service> = OnceLock::new();

impl Service {
    /// A service for `config`, sharing the process-wide [`Registry`].
    pub fn new(config: Config) -> Service {
        Service {
            config,
            only_model: OnceLock::new(),
        }
    }

    /// The process-wide service, configured from the environment on first use.
    pub fn global() -> Result<&'static Service> {
        if let Some(service) = GLOBAL.get() {
            return Ok(service);
        }
        let service = Service::new(Config::from_env()?);
        Ok(GLOBAL.get_or_init(|| service))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Loads every model of `LAMBDATORCH_PRELOAD` (during Lambda's init phase).
    pub fn preload(&self) -> Result<()> {
        for name in &self.config.preload {
            self.model(Some(name))?;
        }
        Ok(())
    }

    /// The model a request names, or the default one.
    pub fn model(&self, name: Option<&str>) -> Result<std::sync::Arc<Model>> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => self.default_model()?,
        };
        Registry::global().load_named(&self.config.models_root, &name)
    }

    fn default_model(&self) -> Result<String> {
        if let Some(name) = &self.config.default_model {
            return Ok(name.clone());
        }
        let only = self
            .only_model
            .get_or_init(|| only_model(&self.config.models_root));
        only.clone().ok_or_else(|| {
            Error::ModelNotFound(
                "the request names no model and there is no default: send \"model\", or set \
                 LAMBDATORCH_DEFAULT_MODEL"
                    .to_owned(),
            )
        })
    }

    /// Runs one request.
    pub fn handle(&self, request: Request) -> Result<Response> {
        let started = Instant::now();
        let top_k = self.config.limits.check_top_k(request.top_k)?;
        match &request.payload {
            Payload::Images(images) if images.is_empty() => {
                return Err(Error::invalid_input("\"images\" is empty"));
            }
            Payload::Texts(texts) if texts.is_empty() => {
                return Err(Error::invalid_input("\"texts\" is empty"));
            }
            _ => {}
        }
        let model = self.model(request.model.as_deref())?;
        let single = request.payload.is_single();
        let (body, mut timings) = match request.payload {
            Payload::Text(text) => answer_texts(&model, &[text], top_k, single)?,
            Payload::Texts(texts) => answer_texts(&model, &texts, top_k, single)?,
            payload => answer_tensors(&model, payload, top_k, single, started)?,
        };
        timings.total = ms_since(started);
        Ok(Response {
            model: model.name().to_owned(),
            body,
            batch_size: timings.batch_size,
            timings,
        })
    }
}

/// The body and timings of a request for texts.
fn answer_texts(
    model: &Model,
    texts: &[TextSource],
    top_k: Option<usize>,
    single: bool,
) -> Result<(Body, Timings)> {
    let (answer, timings) = model.run_texts(texts, top_k)?;
    let body = match answer {
        TextAnswer::Predictions(rows) => predictions_body(rows, single),
        TextAnswer::Embeddings(embeddings) => Body::Embeddings {
            dims: embeddings.dims,
            embeddings: embeddings.rows().map(<[f32]>::to_vec).collect(),
        },
        TextAnswer::Raw(output) => raw_body(model, output)?,
    };
    Ok((body, timings))
}

/// The body and timings of a request for images or a tensor.
fn answer_tensors(
    model: &Model,
    payload: Payload,
    top_k: Option<usize>,
    single: bool,
    started: Instant,
) -> Result<(Body, Timings)> {
    let (output, mut timings) = match payload {
        Payload::Image(bytes) => model.infer(&[ImageSource::Encoded(&bytes)])?,
        Payload::Images(images) => {
            let sources: Vec<_> = images.iter().map(|b| ImageSource::Encoded(b)).collect();
            model.infer(&sources)?
        }
        Payload::Tensor { shape, data } => {
            model.check_shape(&shape)?;
            let converted = TensorData::from_json(shape, &data, model.input().dtype())?;
            let preprocess = ms_since(started);
            let (output, mut timings) = model.forward_timed(&converted)?;
            timings.preprocess = preprocess;
            (output, timings)
        }
        Payload::Text(_) | Payload::Texts(_) => {
            return Err(Error::internal("handle", "texts reached the tensor path"))
        }
    };
    let before = Instant::now();
    let body = answer(model, output, top_k, single)?;
    timings.inference += ms_since(before);
    Ok((body, timings))
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// The response body for a model's output: predictions of a classifier (of the one input of a
/// singular request, else of every input), or the raw tensor.
fn answer(model: &Model, output: TensorData, top_k: Option<usize>, single: bool) -> Result<Body> {
    if model.output().is_classification() {
        let rows = model.classify(&output, top_k)?;
        return Ok(predictions_body(rows, single));
    }
    raw_body(model, output)
}

/// Predictions of the one input of a singular request, else of every input.
fn predictions_body(mut rows: Vec<Vec<Prediction>>, single: bool) -> Body {
    if single && rows.len() == 1 {
        Body::Predictions {
            predictions: rows.pop().unwrap_or_default(),
        }
    } else {
        Body::Batch {
            results: rows
                .into_iter()
                .map(|predictions| BatchResult { predictions })
                .collect(),
        }
    }
}

/// The raw output tensor, when JSON can carry it.
fn raw_body(model: &Model, output: TensorData) -> Result<Body> {
    // JSON has no NaN or infinity (serde would write `null`), so such outputs are errors.
    if let Some((i, bad)) = output.elements.first_non_finite() {
        return Err(Error::inference(
            model.name(),
            format!("the model returned {bad} at element {i}, which a JSON response cannot carry"),
        ));
    }
    Ok(Body::Raw {
        output: RawTensor {
            shape: output.shape,
            dtype: output.elements.dtype(),
            data: output.elements,
        },
    })
}

/// The name of the only model under `root`, if there is exactly one.
fn only_model(root: &Path) -> Option<String> {
    let entries = std::fs::read_dir(root).ok()?;
    let mut models = entries.filter_map(|entry| {
        let entry = entry.ok()?;
        let name = entry.file_name().into_string().ok()?;
        (registry::is_valid_name(&name) && entry.path().join(MANIFEST_FILE).is_file())
            .then_some(name)
    });
    let first = models.next()?;
    models.next().is_none().then_some(first)
}
