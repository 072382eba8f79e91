//! A loaded model: manifest + input pipeline + backend + output head, and nothing else.
//!
//! Loading verifies the file's sha256 (when the manifest gives one), hands the verified file to
//! the backend the manifest's `format` names, sizes libtorch's thread pool and warms the model up.
//! Serving checks a request against the input and the limits, runs one forward pass per batch
//! and hands the output to the output head. A `Model` is `Send + Sync`: one instance serves every
//! thread.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::backend::{self, aoti, Backend, BatchSizes};
use crate::batcher::{Batcher, LengthPadding, Ticket};
use crate::error::{Error, Result};
use crate::image::ImageSource;
use crate::input::InputPipeline;
use crate::lanes::{self, Lanes};
use crate::limits::Limits;
use crate::manifest::{Format, Manifest, ModelDir, Pooling, Threads};
use crate::output::{Embeddings, OutputHead, Prediction};
use crate::tensor::{Elements, TensorData};
use crate::text::{TextPipeline, TextSource, Tokens};

/// The libtorch version this build links against (tch 0.26), from the repository's
/// `libtorch-version` file, which the `bootstrap` launcher reads too.
pub const LIBTORCH_VERSION: &str = include_str!("../libtorch-version").trim_ascii();

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

/// Milliseconds spent in each stage of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Decoding images to pixels (zero for tensors).
    pub decode: f64,
    /// Resizing, cropping and normalizing images, or checking and converting a tensor.
    pub preprocess: f64,
    /// Waiting for a batch to form or for the model's previous batch (batching models only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<f64>,
    /// Rows in the forward pass the request ran in (batching models only): not a time, reported
    /// beside the timings in responses.
    #[serde(skip)]
    pub batch_size: Option<usize>,
    /// The forward pass and output handling.
    pub inference: f64,
    /// Everything, end to end.
    pub total: f64,
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

/// A model loaded and ready to serve.
pub struct Model {
    dir: ModelDir,
    /// libtorch's intra-op threads for this model's forward passes.
    threads: usize,
    /// Shares forward passes between concurrent requests, when batching is on.
    batcher: Option<Batcher>,
    input: InputPipeline,
    backend: Box<dyn Backend>,
    output: OutputHead,
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
        let threads = match dir.manifest.threads {
            Threads::Auto => usable_cpus(),
            Threads::Count(n) => n,
        };
        let not_loadable = |message: String| {
            Error::manifest(
                &dir.manifest_path,
                "file",
                format!("{}: {message}", dir.model_file.display()),
            )
        };
        // On a lane, as forward passes are: libtorch's parallel work while loading would
        // otherwise give the caller's thread an OpenMP team of its own, and with more OpenMP
        // threads than CPUs in the process, libgomp's workers stop spinning between parallel
        // regions (MobileNetV3 at batch 1 on 2 cores: 11-17 ms a pass instead of 7-10).
        let format = dir.manifest.format;
        let load =
            |path: PathBuf| Lanes::global().run(threads, move || backend::load(format, &path));
        let backend = match format {
            Format::Torchscript => {
                let file = verified_file(&dir)?;
                // The backend reads the file through `/proc/self/fd`: the file hashed is the
                // file loaded (a replacement renamed into place meanwhile is not picked up), and
                // the model's bytes are never held in memory beside the loaded module.
                load(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())))
                    .map_err(not_loadable)?
            }
            Format::Aoti => {
                verify_tree(&dir)?;
                check_package(&dir)?;
                load(dir.model_file.clone()).map_err(not_loadable)?
            }
        };
        check_batch_sizes(&dir, backend.batch_sizes())?;
        let input = InputPipeline::load(&dir, &limits)?;
        let output = OutputHead::new(&dir.manifest.output, dir.labels.clone());
        // Text requests of different lengths share a pass padded to the longest, except for raw
        // outputs, whose padded positions could not be told apart to cut them back.
        let padding = input
            .text()
            .filter(|_| !matches!(output, OutputHead::Raw))
            .map(TextPipeline::batch_padding);
        let batcher = batcher_for(&dir.manifest, backend.batch_sizes(), padding)?;
        let model = Model {
            threads,
            batcher,
            input,
            output,
            backend,
            dir,
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

    /// The input pipeline (shape, dtype, image preprocessing).
    pub fn input(&self) -> &InputPipeline {
        &self.input
    }

    /// The output head (classification or raw).
    pub fn output(&self) -> &OutputHead {
        &self.output
    }

    fn preprocessor(&self) -> Result<&crate::image::Preprocessor> {
        self.input.preprocessor().ok_or_else(|| {
            let kind = if self.input.text().is_some() {
                "text"
            } else {
                "tensor"
            };
            Error::invalid_input(format!(
                "model {:?} takes {kind}s, not images (its manifest's input.type is \"{kind}\")",
                self.name()
            ))
        })
    }

    fn text(&self) -> Result<&TextPipeline> {
        self.input.text().ok_or_else(|| {
            Error::invalid_input(format!(
                "model {:?} does not take text (its manifest's input.type is \"{}\")",
                self.name(),
                if self.input.preprocessor().is_some() {
                    "image"
                } else {
                    "tensor"
                }
            ))
        })
    }

    /// Tokenizes texts as the model's requests are: the padded int64 tensors it would run on.
    pub fn tokenize(&self, texts: &[TextSource]) -> Result<Tokens> {
        let text = self.text()?;
        self.limits.check_text_count(texts.len())?;
        self.check_batch(texts.len())?;
        Lanes::global()
            .prepare(|| text.tokenize(texts, &self.limits))
            .map_err(|err| self.named(err))
    }

    /// Runs texts through the model: tokenize, one forward pass with the tensors the manifest's
    /// `inputs` names (shared with concurrent requests when the model batches), then the output
    /// head: the best `top_k` predictions per text, one embedding per text, or the raw output.
    pub fn run_texts(
        &self,
        texts: &[TextSource],
        top_k: Option<usize>,
    ) -> Result<(TextAnswer, Timings)> {
        let started = Instant::now();
        let ticket = self.batcher.as_ref().map(Batcher::enter);
        let inputs = &self.text()?.spec().inputs;
        let tokens = self.tokenize(texts)?;
        let tensors = tokens.to_torch(inputs)?;
        let preprocess = ms_since(started);
        let (output, mut timings) = self.run_batched(ticket, tensors)?;
        let output = self.own_tokens(output, &tokens)?;
        let before = Instant::now();
        let answer = match &self.output {
            OutputHead::Classification { .. } => {
                TextAnswer::Predictions(self.classify(&output, top_k)?)
            }
            OutputHead::Embedding(_) => TextAnswer::Embeddings(self.output.embed(
                self.name(),
                &output,
                &tokens.attention_mask,
            )?),
            OutputHead::Raw => TextAnswer::Raw(output),
        };
        timings.preprocess = preprocess;
        timings.inference += ms_since(before);
        timings.total = ms_since(started);
        Ok((answer, timings))
    }

    /// `output` with this request's own tokens: token vectors (of an embedding model that pools
    /// them) come back as long as the longest request of a shared batch, padded as the tokenizer
    /// pads; classes and pooled vectors have no token dimension.
    fn own_tokens(&self, output: TensorData, tokens: &Tokens) -> Result<TensorData> {
        let per_token =
            matches!(&self.output, OutputHead::Embedding(spec) if spec.pooling != Pooling::None);
        match output.shape[..] {
            [_, length, _] if per_token && length > tokens.length => {
                let left = self.batcher.as_ref().is_some_and(Batcher::pads_left);
                let start = if left { length - tokens.length } else { 0 };
                output.narrow_dim1(start, tokens.length)
            }
            _ => Ok(output),
        }
    }

    /// Runs images through the model: decode, preprocess into one batch, one forward pass.
    pub fn infer(&self, images: &[ImageSource<'_>]) -> Result<(TensorData, Timings)> {
        let started = Instant::now();
        let ticket = self.batcher.as_ref().map(Batcher::enter);
        let [c, h, w] = self.preprocessor()?.chw();
        self.check_batch(images.len())?;
        let shape = [images.len(), c, h, w].map(|d| d as i64);
        // Preprocessed straight into the tensor libtorch then runs on; zeroed first, so the
        // slice below never views uninitialised memory. Zeroed here, not by `zeros`, whose
        // parallel fill would give this thread an OpenMP team (see `Model::load`).
        let batch = tch::Tensor::f_empty(shape, (tch::Kind::Float, tch::Device::Cpu))
            .map_err(|err| Error::internal("batch tensor", err))?;
        let numel = batch.numel();
        let [decode, preprocess] = {
            let start = batch.data_ptr().cast::<f32>();
            // SAFETY: `batch` is a new, contiguous float32 CPU tensor of `numel` elements that
            // nothing else references: its memory is written whole, then viewed as a slice that
            // is dropped before the tensor is used again.
            let floats = unsafe {
                std::ptr::write_bytes(start, 0, numel);
                std::slice::from_raw_parts_mut(start, numel)
            };
            self.preprocess_into(images, floats)?
        };
        let (output, mut timings) = self.run_batched(ticket, vec![batch])?;
        timings.decode = decode;
        timings.preprocess = preprocess;
        timings.total = ms_since(started);
        Ok((output, timings))
    }

    /// One forward pass of `inputs` (the model's inputs, in the order of its `forward`
    /// arguments), shared with concurrent requests when the model batches; times the inference
    /// (and the queue).
    fn run_batched(
        &self,
        ticket: Option<Ticket<'_>>,
        inputs: Vec<tch::Tensor>,
    ) -> Result<(TensorData, Timings)> {
        let before = Instant::now();
        let (output, batched) = match (&self.batcher, ticket) {
            (Some(batcher), Some(ticket)) => {
                let (output, batched) = batcher.run(ticket, inputs, |batch| self.run_all(batch))?;
                (output, Some(batched))
            }
            _ => (self.run_all(&inputs)?, None),
        };
        let queue = batched.map(|b| b.queue_ms);
        Ok((
            output,
            Timings {
                queue,
                batch_size: batched.map(|b| b.batch_size),
                inference: ms_since(before) - queue.unwrap_or(0.0),
                ..Timings::default()
            },
        ))
    }

    /// Classifies images: [`Model::infer`], then the best `top_k` per image.
    pub fn predict(
        &self,
        images: &[ImageSource<'_>],
        top_k: Option<usize>,
    ) -> Result<(Vec<Vec<Prediction>>, Timings)> {
        let started = Instant::now();
        // Checked first, so a raw model does not decode images it cannot answer for.
        self.output.require_classification(self.name())?;
        let (output, mut timings) = self.infer(images)?;
        let before = Instant::now();
        let predictions = self.classify(&output, top_k)?;
        timings.inference += ms_since(before);
        timings.total = ms_since(started);
        Ok((predictions, timings))
    }

    /// Decodes and preprocesses images into one NCHW float32 batch. Also returns the wall time
    /// split between the `decode` and `preprocess` stages.
    pub fn preprocess(&self, images: &[ImageSource<'_>]) -> Result<(TensorData, [f64; 2])> {
        let [c, h, w] = self.preprocessor()?.chw();
        self.check_batch(images.len())?;
        let mut data = vec![0f32; images.len() * c * h * w];
        let stages = self.preprocess_into(images, &mut data)?;
        let tensor = TensorData::new(vec![images.len(), c, h, w], Elements::Float32(data))?;
        Ok((tensor, stages))
    }

    /// [`Model::preprocess`] into `out`, which holds the whole batch. Each image goes from bytes
    /// to its slice of the batch on one of the CPU plan's workers, in parallel across images (a
    /// lone image of a sequential handler stays on its caller's thread); the wall time is split
    /// between decode and preprocess in proportion to the time images spent in each.
    fn preprocess_into(&self, images: &[ImageSource<'_>], out: &mut [f32]) -> Result<[f64; 2]> {
        let started = Instant::now();
        let pre = self.preprocessor()?;
        let mut slots: Vec<_> = out.chunks_exact_mut(pre.tensor_len()).enumerate().collect();
        let work = |(i, out): &mut (usize, &mut [f32])| {
            pre.tensor_of(images[*i], out)
                .map_err(|err| in_batch(err, *i, images.len()))
        };
        let plan = Lanes::global();
        let stages: Vec<(f64, f64)> = match plan.workers() {
            Some(workers) if images.len() > 1 => {
                workers.install(|| slots.par_iter_mut().map(work).collect::<Result<_>>())?
            }
            _ => plan.prepare(|| slots.iter_mut().map(work).collect::<Result<_>>())?,
        };
        let wall = ms_since(started);
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
        if let BatchSizes::Exactly(size) = self.backend.batch_sizes() {
            if n != size {
                return Err(Error::invalid_input(format!(
                    "this model was exported with a static batch of {size} and takes batches of \
                     exactly {size} inputs, got {n}"
                )));
            }
        }
        if n > self.limits.max_batch {
            return Err(Error::invalid_input(format!(
                "a batch of {n} inputs is over the limit of {} (LAMBDATORCH_MAX_BATCH)",
                self.limits.max_batch
            )));
        }
        Ok(())
    }

    /// Checks a caller's tensor shape (and so its size) against the model before it is copied.
    pub fn check_shape(&self, shape: &[usize]) -> Result<()> {
        self.input
            .check_shape(shape, &self.limits)
            .map_err(|err| self.named(err))?;
        self.check_batch(shape.first().copied().unwrap_or(0))
    }

    /// Runs the model on a caller's tensor (NCHW float32 for image models, the manifest's shape
    /// and dtype for tensor models), after checking it; returns the output in its own dtype.
    pub fn forward(&self, input: &TensorData) -> Result<TensorData> {
        self.forward_timed(input).map(|(output, _)| output)
    }

    /// [`Model::forward`], with the inference (and queue) timings.
    pub fn forward_timed(&self, input: &TensorData) -> Result<(TensorData, Timings)> {
        let ticket = self.batcher.as_ref().map(Batcher::enter);
        self.check_shape(&input.shape)?;
        self.input
            .check(input, &self.limits)
            .map_err(|err| self.named(err))?;
        self.run_batched(ticket, vec![input.to_torch()?])
    }

    /// Best `top_k` predictions per row of a classification output.
    pub fn classify(
        &self,
        output: &TensorData,
        top_k: Option<usize>,
    ) -> Result<Vec<Vec<Prediction>>> {
        self.output.classify(self.name(), output, top_k)
    }

    /// One forward pass on a tensor that passed the checks; the first output, copied out.
    fn run(&self, input: &tch::Tensor) -> Result<TensorData> {
        self.run_all(std::slice::from_ref(input))
    }

    /// One forward pass on the model's inputs (checked), in the order of its `forward`
    /// arguments; the first output, copied out.
    fn run_all(&self, inputs: &[tch::Tensor]) -> Result<TensorData> {
        let outputs = {
            // Forward passes run in the process's lanes, each with its model's threads within the
            // lane's share: concurrent OpenMP pools beyond the cores collapse (the benchmark saw
            // 70 ms forwards take a second).
            // Tensors are `Send` but not `Sync`: the lane gets its own handles (no copy).
            let inputs: Vec<tch::Tensor> = inputs.iter().map(tch::Tensor::shallow_clone).collect();
            Lanes::global().run(self.threads, move || self.backend.forward(&inputs))
        }
        .map_err(|message| Error::inference(self.name(), message))?;
        let first = outputs
            .first()
            .ok_or_else(|| Error::inference(self.name(), "the model returned no output tensor"))?;
        TensorData::from_torch(first)?.ok_or_else(|| {
            Error::inference(
                self.name(),
                format!(
                    "the model returned a {:?} tensor; lambdatorch returns float32, float64, \
                     float16, bfloat16, int64, int32, uint8 and bool",
                    first.kind()
                ),
            )
        })
    }

    fn named(&self, err: Error) -> Error {
        match err {
            Error::InvalidInput(message) => {
                Error::InvalidInput(format!("model {:?}: {message}", self.name()))
            }
            other => other,
        }
    }

    /// One inference on zeros of the input's shape, so libtorch's lazy initialisation (kernel
    /// selection, allocator pools) happens at load, not on the first request.
    fn warmup(&self) -> Result<()> {
        if let Some(text) = self.input.text() {
            // A short text through the tokenizer, so the model also meets real token ids.
            let warm = || "warmup".to_owned();
            let source = if text.spec().pair {
                TextSource::Pair(warm(), warm())
            } else {
                TextSource::Single(warm())
            };
            return self
                .run_texts(&[source], None)
                .map(drop)
                .map_err(|err| match err {
                    Error::Inference { model, message } => Error::Inference {
                        model,
                        message: format!(
                            "warmup on a text failed (are the manifest's input.inputs, {:?}, \
                             the model's forward arguments in order?): {message}",
                            text.spec()
                                .inputs
                                .iter()
                                .map(|t| t.name())
                                .collect::<Vec<_>>()
                        ),
                    },
                    other => other,
                });
        }
        let mut zeros = self.input.warmup_input()?;
        if let BatchSizes::Exactly(size) = self.backend.batch_sizes() {
            let mut shape = zeros.shape.clone();
            shape[0] = size;
            zeros = TensorData::zeros(shape, self.input.dtype())?;
        }
        self.run(&zeros.to_torch()?).map_err(|err| match err {
            Error::Inference { model, message } => Error::Inference {
                model,
                message: format!(
                    "warmup on zeros of shape {:?} failed: {message}",
                    zeros.shape
                ),
            },
            other => other,
        })?;
        Ok(())
    }
}

/// What a text model answers for a batch of texts.
#[derive(Debug, Clone)]
pub enum TextAnswer {
    /// A classifier's best predictions per text.
    Predictions(Vec<Vec<Prediction>>),
    /// An embedding model's vectors.
    Embeddings(Embeddings),
    /// A raw model's first output.
    Raw(TensorData),
}

/// Whether batching is on: when Lambda sends concurrent requests (`AWS_LAMBDA_MAX_CONCURRENCY` above
/// 1), when the manifest has `batching`, or when `LAMBDATORCH_BATCH_DELAY_MS` is set (which also
/// overrides the manifest's delay). Off for a model that takes one batch size only.
fn batcher_for(
    manifest: &Manifest,
    sizes: BatchSizes,
    padding: Option<LengthPadding>,
) -> Result<Option<Batcher>> {
    let env_delay = batching_delay()?;
    let concurrent = lanes::concurrent();
    let manifest_delay = manifest.batching.as_ref().map(|b| b.max_delay_ms);
    let on = concurrent || env_delay.is_some() || manifest_delay.is_some();
    if !on || matches!(sizes, BatchSizes::Exactly(_)) {
        return Ok(None);
    }
    let delay = env_delay.or(manifest_delay).unwrap_or(0);
    let batcher = Batcher::new(
        manifest.max_batch,
        std::time::Duration::from_millis(delay),
        Lanes::global().count(),
    );
    Ok(Some(match padding {
        Some(padding) => batcher.padded(padding),
        None => batcher,
    }))
}

/// `LAMBDATORCH_BATCH_DELAY_MS`, when set: the batching delay for every model, in milliseconds.
pub fn batching_delay() -> Result<Option<u64>> {
    match std::env::var("LAMBDATORCH_BATCH_DELAY_MS") {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms <= 1000)
            .map(Some)
            .ok_or_else(|| {
                Error::invalid_input(format!(
                    "LAMBDATORCH_BATCH_DELAY_MS must be 0 to 1000 milliseconds, got {value:?}"
                ))
            }),
        _ => Ok(None),
    }
}

/// Opens the model file and, when the manifest gives a sha256, checks it: the open file is what
/// the backend then loads.
fn verified_file(dir: &ModelDir) -> Result<File> {
    let unreadable = |err: std::io::Error| {
        Error::manifest(
            &dir.manifest_path,
            "file",
            format!("cannot read {}: {err}", dir.model_file.display()),
        )
    };
    let mut file = File::open(&dir.model_file).map_err(unreadable)?;
    if let Some(expected) = &dir.manifest.sha256 {
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(unreadable)?;
        let actual = format!("{:x}", hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Error::manifest(
                &dir.manifest_path,
                "sha256",
                format!(
                    "{} has sha256 {actual}, the manifest says {expected}: the file is corrupt, \
                     truncated or replaced; copy it again or update the digest",
                    dir.model_file.display()
                ),
            ));
        }
    }
    Ok(file)
}

/// Checks an AOTInductor package before any of its code is loaded: the vector ISA it was
/// compiled for against the manifest's `cpu_isa` and against this CPU.
fn check_package(dir: &ModelDir) -> Result<()> {
    let bad = |field: &str, message: String| {
        Error::manifest(
            &dir.manifest_path,
            field,
            format!("{}: {message}", dir.model_file.display()),
        )
    };
    let package = aoti::Package::inspect(&dir.model_file).map_err(|m| bad("file", m))?;
    if let Some(recorded) = &dir.manifest.cpu_isa {
        if !recorded.eq_ignore_ascii_case(&package.cpu_isa) {
            return Err(bad(
                "cpu_isa",
                format!(
                    "the manifest says the package was compiled for {recorded:?}, its metadata \
                     says {:?}: the package was replaced; run add-model again",
                    package.cpu_isa
                ),
            ));
        }
    }
    package.check_cpu().map_err(|m| bad("cpu_isa", m))?;
    // The kernels trust their inputs' sizes: a manifest that disagrees would make them read past
    // them, so it is refused here, and so is a package that cannot say what it takes.
    let checks = package.inputs.as_ref().ok_or_else(|| {
        bad(
            "file",
            "the package carries no generated source (*.wrapper.cpp) to check its input \
             against; package it with torch._inductor.aoti_compile_and_package as exported"
                .to_owned(),
        )
    })?;
    let input = InputPipeline::load(dir, &Limits::default())?;
    // A text model's inputs are all `[batch, tokens]` int64, in the manifest's order.
    let (field, count) = match input.text() {
        Some(text) => ("input.inputs", text.spec().inputs.len()),
        None => ("input", 1),
    };
    if checks.len() != count {
        return Err(bad(
            field,
            format!(
                "the package takes {} input tensors, the manifest gives it {count}",
                checks.len()
            ),
        ));
    }
    let (shape, most) = (input.shape(), input.most());
    for check in checks {
        check
            .check(&shape, &most, input.dtype())
            .map_err(|m| bad(field, m))?;
    }
    Ok(())
}

/// Refuses a `max_batch` the model cannot serve (an AOTInductor package with a static batch
/// dimension, or a dynamic one bounded below `max_batch`).
fn check_batch_sizes(dir: &ModelDir, sizes: BatchSizes) -> Result<()> {
    let max = dir.manifest.max_batch;
    let message = match sizes {
        BatchSizes::Exactly(n) if n != max => format!(
            "the model was exported with a static batch dimension of {n} and serves batches of \
             {n} only, but max_batch is {max}: set \"max_batch\": {n}, or export with a dynamic \
             batch dimension (torch.export.Dim), as lambdatorch export does"
        ),
        BatchSizes::UpTo(n) if max > n => format!(
            "the model was exported for batches of at most {n}, but max_batch is {max}: set \
             \"max_batch\" to {n} or less"
        ),
        _ => return Ok(()),
    };
    Err(Error::manifest(&dir.manifest_path, "max_batch", message))
}

/// The digest an `aoti` manifest's `sha256` gives for a package directory: the SHA-256 of one
/// line `<sha256 of the file>  <path relative to the directory>\n` per regular file, sorted by
/// path (bytewise, `/`-separated), as `find . -type f | sort | sha256sum` lists them without
/// the `./`. Symlinks and other special files in the package are refused.
pub fn tree_sha256(root: &std::path::Path) -> std::io::Result<String> {
    fn walk(
        root: &std::path::Path,
        dir: &std::path::Path,
        out: &mut Vec<(String, PathBuf)>,
    ) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                let relative = path.strip_prefix(root).map_err(std::io::Error::other)?;
                let name = relative
                    .to_str()
                    .ok_or_else(|| std::io::Error::other("a file name is not UTF-8"))?;
                out.push((name.to_owned(), path));
            } else {
                return Err(std::io::Error::other(format!(
                    "{} is a symlink or special file; a package holds regular files only",
                    path.display()
                )));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    let mut tree = Sha256::new();
    for (name, path) in files {
        let mut hasher = Sha256::new();
        std::io::copy(&mut File::open(&path)?, &mut hasher)?;
        tree.update(format!("{:x}  {name}\n", hasher.finalize()));
    }
    Ok(format!("{:x}", tree.finalize()))
}

/// Checks an AOTInductor package directory against the manifest's `sha256`, when given.
fn verify_tree(dir: &ModelDir) -> Result<()> {
    let Some(expected) = &dir.manifest.sha256 else {
        return Ok(());
    };
    let actual = tree_sha256(&dir.model_file).map_err(|err| {
        Error::manifest(
            &dir.manifest_path,
            "file",
            format!("cannot read {}: {err}", dir.model_file.display()),
        )
    })?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(Error::manifest(
            &dir.manifest_path,
            "sha256",
            format!(
                "the package in {} has sha256 {actual}, the manifest says {expected}: a file \
                 in it is corrupt, truncated, added or replaced; run add-model again",
                dir.model_file.display()
            ),
        ));
    }
    Ok(())
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
