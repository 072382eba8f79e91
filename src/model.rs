//! A loaded model: TorchScript through libtorch on CPU, plus its preprocessing and output handling.
//!
//! Loading verifies the file's sha256 (when the manifest gives one), puts the module in eval mode,
//! sizes libtorch's thread pool to the CPUs this process may really use, and warms the model up.
//! Inference runs without autograd. A `Model` is `Send + Sync`: one instance serves every thread.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::{CModule, Device, Kind, Tensor};

use crate::error::{first_line, Error, Result};
use crate::image::{ImageSource, Preprocessor};
use crate::limits::Limits;
use crate::manifest::{ClassificationOutput, DType, Input, Manifest, ModelDir, Output, Threads};

/// The libtorch version this build links against (tch 0.26).
pub const LIBTORCH_VERSION: &str = "2.13.0";

/// Lambda gives one vCPU per this many MB of configured memory.
const LAMBDA_MB_PER_VCPU: u64 = 1769;

/// The CPUs this process may really use: the affinity mask and cgroup quota (which
/// [`std::thread::available_parallelism`] reads), and on Lambda the share that the configured
/// memory buys, rounded up.
pub fn usable_cpus() -> usize {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lambda_share = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        .ok()
        .and_then(|mb| mb.trim().parse::<u64>().ok())
        .map(|mb| mb.div_ceil(LAMBDA_MB_PER_VCPU).max(1) as usize);
    match lambda_share {
        Some(share) => available.min(share),
        None => available,
    }
}

/// One prediction of a classification model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// Class index in the model's output.
    pub index: usize,
    /// Class label, when the manifest gives labels.
    pub label: Option<String>,
    /// Score: a probability when the manifest asks for softmax, else the raw output.
    #[serde(serialize_with = "short_score")]
    pub score: f32,
}

/// `value` as the f64 nearest to its shortest round-tripping decimal (0.8731f32 becomes 0.8731,
/// not 0.873100042...): JSON responses then read as the float32 values they are.
pub fn short_f64(value: f32) -> f64 {
    if !value.is_finite() {
        return f64::from(value);
    }
    value.to_string().parse().unwrap_or(f64::from(value))
}

fn short_score<S: serde::Serializer>(score: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short_f64(*score))
}

/// A dense tensor crossing the API boundary: shape and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData<T> {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major; `shape.iter().product()` of them.
    pub data: Vec<T>,
}

impl<T> TensorData<T> {
    /// Checks that `data` fills `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self> {
        let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(Error::invalid_input(format!(
                "tensor shape {shape:?} needs {} elements, got {}",
                expected.map_or_else(|| "too many".to_owned(), |n| n.to_string()),
                data.len()
            )));
        }
        Ok(TensorData { shape, data })
    }
}

/// Milliseconds spent in each stage of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Decoding images to pixels.
    pub decode: f64,
    /// Resizing, cropping and normalizing to the input tensor.
    pub preprocess: f64,
    /// The forward pass and output handling.
    pub inference: f64,
    /// Everything, end to end.
    pub total: f64,
}

fn ms_between(start: Instant, end: Instant) -> f64 {
    (end - start).as_secs_f64() * 1e3
}

/// A model loaded and ready to serve.
pub struct Model {
    dir: ModelDir,
    module: CModule,
    preprocessor: Option<Preprocessor>,
    limits: Limits,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the model a [`ModelDir`] describes; `limits` bound what its requests may ask for.
    pub fn load(dir: ModelDir, limits: Limits) -> Result<Model> {
        // libtorch reads the file itself, through `/proc/self/fd`: the file hashed is the file
        // loaded (a replacement renamed into place meanwhile is not picked up), and the model's
        // bytes are never held in memory beside the loaded module (ResNet-18: 45 MB less at peak
        // than loading from a buffer, which libtorch copies once more).
        let unreadable = |err: std::io::Error| {
            Error::manifest(
                &dir.manifest_path,
                "file",
                format!("cannot read {}: {err}", dir.model_file.display()),
            )
        };
        let mut file = std::fs::File::open(&dir.model_file).map_err(unreadable)?;
        if let Some(expected) = &dir.manifest.sha256 {
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
            let actual = format!("{:x}", hasher.finalize());
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::manifest(
                    &dir.manifest_path,
                    "sha256",
                    format!(
                        "{} has sha256 {actual}, the manifest says {expected}: the file is \
                         corrupt, truncated or replaced; copy it again or update the digest",
                        dir.model_file.display()
                    ),
                ));
            }
        }
        let threads = match dir.manifest.threads {
            Threads::Auto => usable_cpus(),
            Threads::Count(n) => n,
        };
        tch::set_num_threads(threads as i32);
        let opened = format!("/proc/self/fd/{}", file.as_raw_fd());
        let mut module = CModule::load_on_device(&opened, Device::Cpu).map_err(|err| {
            Error::manifest(
                &dir.manifest_path,
                "file",
                format!(
                    "{} is not a loadable TorchScript model: {}",
                    dir.model_file.display(),
                    first_line(&err.to_string())
                ),
            )
        })?;
        module.set_eval();
        let preprocessor = dir
            .manifest
            .image_input()
            .map(|spec| Preprocessor::new(spec, limits.max_image_pixels));
        let model = Model {
            dir,
            module,
            preprocessor,
            limits,
        };
        if model.manifest().warmup {
            model.warmup()?;
        }
        Ok(model)
    }

    /// The model's name (its directory name).
    pub fn name(&self) -> &str {
        &self.dir.name
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.dir.manifest
    }

    /// The limits this model's requests are held to.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Image preprocessing, or `InvalidInput` when the model takes tensors.
    pub fn preprocessor(&self) -> Result<&Preprocessor> {
        self.preprocessor.as_ref().ok_or_else(|| {
            Error::invalid_input(format!(
                "model {:?} takes tensors, not images (its manifest's input.type is \"tensor\")",
                self.name()
            ))
        })
    }

    /// Runs images through the model: decode, preprocess into one batch, one forward pass. The
    /// images are preprocessed straight into the buffer of the tensor libtorch then runs on.
    pub fn infer(&self, images: &[ImageSource<'_>]) -> Result<(TensorData<f32>, Timings)> {
        let started = Instant::now();
        let [c, h, w] = self.preprocessor()?.chw();
        self.check_batch(images.len())?;
        let shape = [images.len(), c, h, w].map(|d| d as i64);
        let batch = Tensor::f_empty(shape, (Kind::Float, tch::Device::Cpu))?;
        // SAFETY: `batch` is a new contiguous float32 CPU tensor of `numel` elements; the slice
        // borrows it mutably and ends before the tensor is used again.
        let floats = unsafe {
            std::slice::from_raw_parts_mut(batch.data_ptr().cast::<f32>(), batch.numel())
        };
        let [decode, preprocess] = self.preprocess_into(images, floats)?;
        let preprocessed = Instant::now();
        let output = self.run(batch)?;
        let done = Instant::now();
        let timings = Timings {
            decode,
            preprocess,
            inference: ms_between(preprocessed, done),
            total: ms_between(started, done),
        };
        Ok((output, timings))
    }

    /// Classifies images: [`Model::infer`], then the best `top_k` per image.
    pub fn predict(
        &self,
        images: &[ImageSource<'_>],
        top_k: Option<usize>,
    ) -> Result<(Vec<Vec<Prediction>>, Timings)> {
        let started = Instant::now();
        self.classification()?;
        let (output, mut timings) = self.infer(images)?;
        let before = Instant::now();
        let predictions = self.classify(&output, top_k)?;
        let done = Instant::now();
        timings.inference += ms_between(before, done);
        timings.total = ms_between(started, done);
        Ok((predictions, timings))
    }

    fn classification(&self) -> Result<&ClassificationOutput> {
        match &self.manifest().output {
            Output::Classification(spec) => Ok(spec),
            Output::Raw(_) => Err(Error::invalid_input(format!(
                "model {:?} has raw output (its manifest's output.type is \"raw\"): use forward, \
                 or send a request without predictions",
                self.name()
            ))),
        }
    }

    /// Decodes and preprocesses images into one NCHW float32 batch. Each image goes from bytes to
    /// its slice of the batch on one worker thread, in parallel across images. Also returns the
    /// wall time split between the `decode` and `preprocess` stages (in proportion to the time
    /// the images spent in each).
    pub fn preprocess(&self, images: &[ImageSource<'_>]) -> Result<(TensorData<f32>, [f64; 2])> {
        let [c, h, w] = self.preprocessor()?.chw();
        self.check_batch(images.len())?;
        let mut data = vec![0f32; images.len() * c * h * w];
        let stages = self.preprocess_into(images, &mut data)?;
        Ok((TensorData::new(vec![images.len(), c, h, w], data)?, stages))
    }

    /// [`Model::preprocess`] into `out`, which holds the whole batch.
    fn preprocess_into(&self, images: &[ImageSource<'_>], out: &mut [f32]) -> Result<[f64; 2]> {
        let started = Instant::now();
        let pre = self.preprocessor()?;
        let mut slots: Vec<_> = out.chunks_exact_mut(pre.tensor_len()).enumerate().collect();
        let work = |(i, out): &mut (usize, &mut [f32])| {
            pre.tensor_of(images[*i], out)
                .map_err(|err| in_batch(err, *i, images.len()))
        };
        let stages: Vec<(f64, f64)> = match worker_pool() {
            Some(pool) if images.len() > 1 => {
                pool.install(|| slots.par_iter_mut().map(work).collect::<Result<_>>())?
            }
            _ => slots.iter_mut().map(work).collect::<Result<_>>()?,
        };
        let wall = ms_between(started, Instant::now());
        let (decode, preprocess) = stages
            .iter()
            .fold((0.0, 0.0), |(d, p), (di, pi)| (d + di, p + pi));
        let share = if decode + preprocess > 0.0 {
            decode / (decode + preprocess)
        } else {
            0.0
        };
        Ok([wall * share, wall * (1.0 - share)])
    }

    /// Refuses empty batches and batches larger than the manifest's `max_batch` or
    /// `LAMBDATORCH_MAX_BATCH`.
    pub fn check_batch(&self, n: usize) -> Result<()> {
        let max = self.manifest().max_batch;
        if n == 0 {
            return Err(Error::invalid_input("the batch is empty"));
        }
        if n > max {
            return Err(Error::invalid_input(format!(
                "a batch of {n} inputs is over this model's max_batch of {max}"
            )));
        }
        if n > self.limits.max_batch {
            return Err(Error::invalid_input(format!(
                "a batch of {n} inputs is over the limit of {} (LAMBDATORCH_MAX_BATCH)",
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    /// Runs the model on a caller's float32 batch (NCHW for image models, the manifest's shape
    /// for tensor models), after checking it; returns its output as float32.
    pub fn forward(&self, input: &TensorData<f32>) -> Result<TensorData<f32>> {
        self.check_tensor(&input.shape)?;
        if let Some(i) = input.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid_input(format!(
                "the tensor holds {} at element {i}: inputs must be finite numbers",
                input.data[i]
            )));
        }
        self.run_input(input)
    }

    /// Runs the model on a tensor this crate built (a preprocessed batch, warmup zeros), whose
    /// shape and values are right by construction and whose size `max_batch` bounds.
    fn run_input(&self, input: &TensorData<f32>) -> Result<TensorData<f32>> {
        let shape: Vec<i64> = input.shape.iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_slice(&input.data)?.f_reshape(&shape)?;
        let tensor = match &self.dir.manifest.input {
            Input::Tensor(spec) => tensor.f_to_kind(kind_of(spec.dtype))?,
            Input::Image(_) => tensor,
        };
        self.run(tensor)
    }

    /// Checks a caller's tensor shape against the model's input and the limits, before anything
    /// is copied or run: callers that copy a tensor (the Python `forward`) call it first.
    pub fn check_tensor(&self, shape: &[usize]) -> Result<()> {
        let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        self.limits
            .check_tensor_elements(elements.unwrap_or(usize::MAX))?;
        let want: Vec<i64> = match (&self.dir.manifest.input, &self.preprocessor) {
            (Input::Tensor(spec), _) => spec.shape.clone(),
            (Input::Image(_), Some(pre)) => {
                let [c, h, w] = pre.chw();
                vec![-1, c as i64, h as i64, w as i64]
            }
            (Input::Image(_), None) => return Ok(()),
        };
        let fits = shape.len() == want.len()
            && shape
                .iter()
                .zip(&want)
                .enumerate()
                .all(|(i, (&g, &w))| w == -1 || g as i64 == w || (i == 0 && g >= 1));
        if !fits {
            return Err(Error::invalid_input(format!(
                "model {:?} takes tensors of shape {want:?} (batch first, -1 for any), got \
                 {shape:?}",
                self.name()
            )));
        }
        self.check_batch(shape.first().copied().unwrap_or(0))
    }

    fn run(&self, input: Tensor) -> Result<TensorData<f32>> {
        let output = tch::no_grad(|| self.module.forward_ts(&[input])).map_err(|err| {
            Error::Inference(format!(
                "the model failed: {}",
                first_line(&err.to_string())
            ))
        })?;
        let output = output.f_to_kind(Kind::Float)?.f_contiguous()?;
        let shape: Vec<usize> = output.size().iter().map(|&d| d as usize).collect();
        let data = Vec::<f32>::try_from(&output.f_reshape([-1])?)?;
        TensorData::new(shape, data)
    }

    /// Turns a classification output `[batch, classes]` into the best `top_k` predictions per row
    /// (the manifest's `top_k` when `None`).
    pub fn classify(
        &self,
        output: &TensorData<f32>,
        top_k: Option<usize>,
    ) -> Result<Vec<Vec<Prediction>>> {
        let spec = self.classification()?;
        let [batch, classes] = output.shape[..] else {
            return Err(Error::Inference(format!(
                "a classification model must return [batch, classes] scores, model {:?} returned \
                 shape {:?}",
                self.name(),
                output.shape
            )));
        };
        let top_k = top_k.unwrap_or(spec.top_k).min(classes);
        let scores = if spec.softmax {
            let logits =
                Tensor::f_from_slice(&output.data)?.f_reshape([batch as i64, classes as i64])?;
            Vec::<f32>::try_from(&logits.f_softmax(1, Kind::Float)?.f_reshape([-1])?)?
        } else {
            output.data.clone()
        };
        if let Some(bad) = scores.iter().find(|v| !v.is_finite()) {
            return Err(Error::Inference(format!(
                "model {:?} returned a score of {bad}; its predictions would be meaningless",
                self.name()
            )));
        }
        let labels = self.dir.labels.as_deref();
        Ok(scores
            .chunks_exact(classes.max(1))
            .map(|row| {
                let mut order: Vec<usize> = (0..row.len()).collect();
                // Highest score first; ties keep class order, so answers are stable.
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order
                    .into_iter()
                    .take(top_k)
                    .map(|index| Prediction {
                        index,
                        label: labels.and_then(|l| l.get(index)).cloned(),
                        score: row[index],
                    })
                    .collect()
            })
            .collect())
    }

    /// One inference on zeros of the input's shape, so libtorch's lazy initialisation (kernel
    /// selection, allocator pools) happens at load, not on the first request.
    fn warmup(&self) -> Result<()> {
        let shape: Vec<usize> = match (&self.dir.manifest.input, &self.preprocessor) {
            (Input::Image(_), Some(pre)) => {
                let [c, h, w] = pre.chw();
                vec![1, c, h, w]
            }
            (Input::Tensor(spec), _) => spec.shape.iter().map(|&d| d.max(1) as usize).collect(),
            (Input::Image(_), None) => return Ok(()),
        };
        let zeros = TensorData::new(shape.clone(), vec![0f32; shape.iter().product()])?;
        self.run_input(&zeros).map_err(|err| {
            Error::Inference(format!(
                "warmup of model {:?} on zeros of shape {shape:?} failed: {err}",
                self.name()
            ))
        })?;
        Ok(())
    }
}

/// The threads that decode and preprocess a batch's images in parallel: as many as the CPUs this
/// process may use (a Lambda function's memory buys a share, which rayon's global pool ignores).
/// `None` if no thread could be spawned: the work then stays on the caller's thread.
fn worker_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usable_cpus())
            .thread_name(|i| format!("lambdatorch-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Prefixes an error with the input's position when it came in a batch.
fn in_batch(err: Error, index: usize, len: usize) -> Error {
    if len == 1 {
        return err;
    }
    match err {
        Error::InvalidImage(message) => Error::InvalidImage(format!("image {index}: {message}")),
        Error::InvalidInput(message) => Error::InvalidInput(format!("image {index}: {message}")),
        other => other,
    }
}

fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::Float32 => Kind::Float,
        DType::Float64 => Kind::Double,
        DType::Int32 => Kind::Int,
        DType::Int64 => Kind::Int64,
    }
}
