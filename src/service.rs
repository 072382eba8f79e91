//! The service core: one request in, one response out, whatever the event source.
//!
//! Both handlers (the Python `lambdatorch.handle` and the native `bootstrap`) run this code, so
//! the same request gives the same response byte for byte. It resolves the model (request, then
//! `LAMBDATORCH_DEFAULT_MODEL`, then the only model under the root), loads it once per process
//! through the [`Registry`], and runs images, batches or tensors. Turning Lambda events into
//! [`Request`]s and responses into proxy responses is [`crate::events`]' job.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::ImageSource;
use crate::limits::Limits;
use crate::manifest::{Output, MANIFEST_FILE};
use crate::model::{Model, Prediction, TensorData, Timings};
use crate::registry::{self, Registry};

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
            limits: Limits::from_env()?,
        })
    }
}

/// What a request asks the model to run on.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// One encoded image.
    Image(Vec<u8>),
    /// A batch of encoded images, run in one forward pass.
    Images(Vec<Vec<u8>>),
    /// A tensor, batch first.
    Tensor(TensorData<f32>),
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
}

/// The part of a response that depends on the request and the model's output.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Body {
    /// One input, classification output.
    Predictions {
        /// Best first.
        predictions: Vec<Prediction>,
    },
    /// Several inputs, classification output.
    Batch {
        /// One entry per input, in order.
        results: Vec<BatchResult>,
    },
    /// Raw output.
    Raw {
        /// The output tensor.
        output: RawTensor,
    },
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
    /// Elements, row-major, as the shortest decimals that round-trip their float32 values.
    #[serde(serialize_with = "short_floats")]
    pub data: Vec<f32>,
}

fn rounded_timings<S: serde::Serializer>(t: &Timings, s: S) -> Result<S::Ok, S::Error> {
    let round = |ms: f64| (ms * 1000.0).round() / 1000.0;
    Timings {
        decode: round(t.decode),
        preprocess: round(t.preprocess),
        inference: round(t.inference),
        total: round(t.total),
    }
    .serialize(s)
}

fn short_floats<S: serde::Serializer>(data: &[f32], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(data.iter().map(|&v| crate::model::short_f64(v)))
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
        if let Payload::Images(images) = &request.payload {
            if images.is_empty() {
                return Err(Error::invalid_input("\"images\" is empty"));
            }
        }
        let model = self.model(request.model.as_deref())?;
        let classification = matches!(model.manifest().output, Output::Classification(_));
        let (body, mut timings) = match &request.payload {
            Payload::Image(bytes) => {
                let sources = [ImageSource::Encoded(bytes)];
                if classification {
                    let (mut predictions, timings) = model.predict(&sources, top_k)?;
                    let predictions = predictions.pop().unwrap_or_default();
                    (Body::Predictions { predictions }, timings)
                } else {
                    let (output, timings) = model.infer(&sources)?;
                    (raw(output)?, timings)
                }
            }
            Payload::Images(images) => {
                let sources: Vec<_> = images.iter().map(|b| ImageSource::Encoded(b)).collect();
                if classification {
                    let (predictions, timings) = model.predict(&sources, top_k)?;
                    (batch(predictions), timings)
                } else {
                    let (output, timings) = model.infer(&sources)?;
                    (raw(output)?, timings)
                }
            }
            Payload::Tensor(tensor) => {
                let output = model.forward(tensor)?;
                let timings = Timings::default();
                if classification {
                    let mut predictions = model.classify(&output, top_k)?;
                    if predictions.len() == 1 {
                        let predictions = predictions.pop().unwrap_or_default();
                        (Body::Predictions { predictions }, timings)
                    } else {
                        (batch(predictions), timings)
                    }
                } else {
                    (raw(output)?, timings)
                }
            }
        };
        timings.total = started.elapsed().as_secs_f64() * 1e3;
        if let Payload::Tensor(_) = request.payload {
            timings.inference = timings.total;
        }
        Ok(Response {
            model: model.name().to_owned(),
            body,
            timings,
        })
    }
}

/// JSON has no NaN or infinity (serde would write `null`), so such outputs are errors.
fn raw(output: TensorData<f32>) -> Result<Body> {
    if let Some(bad) = output.data.iter().find(|v| !v.is_finite()) {
        return Err(Error::Inference(format!(
            "the model returned {bad}, which a JSON response cannot carry"
        )));
    }
    Ok(Body::Raw {
        output: RawTensor {
            shape: output.shape,
            data: output.data,
        },
    })
}

fn batch(predictions: Vec<Vec<Prediction>>) -> Body {
    Body::Batch {
        results: predictions
            .into_iter()
            .map(|predictions| BatchResult { predictions })
            .collect(),
    }
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
