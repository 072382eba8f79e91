//! The model manifest (`models/<name>/manifest.json`): parsing and validation.
//!
//! A manifest is parsed strictly (unknown fields are errors: a typo must not silently fall back to a
//! default) and then checked as a whole; every error names the manifest file and the dotted field.
//! Files it names are resolved inside the model directory and nowhere else.
//! Loading the model itself is [`crate::model`]'s job.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::tensor::DType;

/// File name of a model's manifest inside its directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A parsed and validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    /// How the model file is serialised, which decides the backend that runs it.
    pub format: Format,
    /// The model file, relative to the model directory.
    pub file: String,
    /// Hex SHA-256 of `file`; when present the file is verified before loading. For an
    /// AOTInductor package directory, the digest of its files (see [`crate::model::tree_sha256`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `aoti` only: the vector ISA the package was compiled for, as its metadata's
    /// `AOTI_CPU_ISA` says (`"AVX2"`); when given, the package must say the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_isa: Option<String>,
    /// What the model takes.
    pub input: Input,
    /// What the model returns and how to present it.
    pub output: Output,
    /// Most inputs one request may batch into one forward pass.
    pub max_batch: usize,
    /// Intra-op threads for libtorch, set for each of this model's forward passes.
    pub threads: Threads,
    /// Run one inference at load time so the first request does not pay for lazy initialisation.
    pub warmup: bool,
    /// Dynamic batching of concurrent requests (see [`crate::batcher`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
}

/// `batching`: how long a request may wait for others to share its forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Milliseconds; a request that is alone never waits.
    pub max_delay_ms: u64,
}

/// The manifest as written: `input` and `output` stay JSON until their `type` picks the shape, so
/// errors inside them can name the full field path (serde's tagged enums lose it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    format: Format,
    file: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    cpu_isa: Option<String>,
    input: serde_json::Value,
    #[serde(default)]
    output: Option<serde_json::Value>,
    #[serde(default = "default_max_batch")]
    max_batch: usize,
    #[serde(default)]
    threads: Threads,
    #[serde(default = "default_true")]
    warmup: bool,
    #[serde(default)]
    batching: Option<Batching>,
}

fn default_max_batch() -> usize {
    8
}

fn default_true() -> bool {
    true
}

/// Serialisation format of the model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `torch.jit.save` output, loaded with libtorch's `torch::jit::load`.
    Torchscript,
    /// An AOTInductor package (`torch._inductor.aoti_compile_and_package`), unpacked: `file` is
    /// its top directory, loaded in place by libtorch's `AOTIModelPackageLoader`.
    Aoti,
}

/// The model's input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Input {
    /// Encoded images, preprocessed to an NCHW float32 tensor.
    Image(ImageInput),
    /// A tensor given directly.
    Tensor(TensorInput),
    /// Texts, tokenized into the model's named int64 inputs.
    Text(TextInput),
}

/// Image preprocessing, defined to match torchvision's
/// `PILToTensor → Resize(resize_shorter, antialias=True) → CenterCrop(size) → ToDtype(float32,
/// scale=True) → Normalize(mean, std)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// Output `[height, width]`.
    pub size: [u32; 2],
    /// Length of the shorter side after resizing, before the center crop. Defaults to the larger
    /// of `size`, so the crop loses as little as possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<u32>,
    /// `center`: resize the shorter side, then center-crop to `size`; `none`: resize to `size`.
    #[serde(default)]
    pub crop: Crop,
    /// Resampling filter.
    #[serde(default)]
    pub interpolation: Interpolation,
    /// Channel layout of the tensor.
    #[serde(default)]
    pub color: Color,
    /// Per-channel mean subtracted after scaling to [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<Vec<f32>>,
    /// `exact` matches torchvision; `fast` may decode JPEGs at a reduced scale first.
    #[serde(default)]
    pub decode: Decode,
}

/// How the image is fitted to `size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// Resize the shorter side to `resize_shorter`, then take the center `size`.
    #[default]
    Center,
    /// Resize straight to `size`, ignoring the aspect ratio.
    None,
}

/// Resampling filter, as named by torchvision's `InterpolationMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour (no antialiasing).
    Nearest,
    /// Antialiased bilinear (triangle filter).
    #[default]
    Bilinear,
    /// Antialiased bicubic (a = -0.5, as Pillow and torchvision's antialiased path).
    Bicubic,
    /// Lanczos with 3 lobes, as Pillow's `LANCZOS`.
    Lanczos3,
}

/// Channel layout of the image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    /// Three channels, red first.
    #[default]
    Rgb,
    /// Three channels, blue first (models trained on OpenCV-decoded images).
    Bgr,
    /// One luma channel, computed as Pillow's `convert("L")`.
    Gray,
}

impl Color {
    /// Channels in the tensor.
    pub fn channels(self) -> usize {
        match self {
            Color::Rgb | Color::Bgr => 3,
            Color::Gray => 1,
        }
    }
}

/// Decoder choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decode {
    /// Full-resolution decode: results match torchvision.
    #[default]
    Exact,
    /// JPEGs may be decoded at 1/2, 1/4 or 1/8 scale when that still covers the resize target.
    Fast,
}

/// A raw tensor input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorInput {
    /// Expected shape, batch dimension first; `-1` accepts any length in that dimension.
    pub shape: Vec<i64>,
    /// Element type the model takes.
    #[serde(default)]
    pub dtype: DType,
}

/// Text tokenized with a Hugging Face `tokenizer.json`, as the Python `tokenizers` library does
/// with the same settings (`enable_truncation(max_length)`, `enable_padding(...)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextInput {
    /// The tokenizer file in the model directory (`tokenizer.json`).
    pub tokenizer: String,
    /// Most tokens per text, special tokens included (also the padded length with
    /// `"padding": "max_length"`).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// `longest`: pad a batch to its longest text; `max_length`: always to `max_length`.
    #[serde(default)]
    pub padding: Padding,
    /// Cut texts to `max_length` tokens; when false, longer texts are refused.
    #[serde(default = "default_true")]
    pub truncation: bool,
    /// Each input is a pair of texts (question and passage, premise and hypothesis).
    #[serde(default)]
    pub pair: bool,
    /// The model's inputs in the order of its `forward` arguments (TorchScript and AOTInductor
    /// take them by position): `input_ids`, `attention_mask`, `token_type_ids`. `add-model`
    /// reads them from a TorchScript model's `forward` schema; `export` writes them.
    #[serde(default = "default_text_inputs")]
    pub inputs: Vec<TextTensor>,
}

fn default_max_length() -> usize {
    128
}

fn default_text_inputs() -> Vec<TextTensor> {
    vec![TextTensor::InputIds, TextTensor::AttentionMask]
}

/// The longest `max_length` a manifest may ask for.
pub const MAX_TEXT_LENGTH: usize = 8192;

/// How a batch of texts is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Padding {
    /// To the longest text of the batch.
    #[default]
    Longest,
    /// To `max_length`, always.
    MaxLength,
}

/// One of the tensors a tokenizer makes, named as Hugging Face models name their arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextTensor {
    /// Token ids.
    InputIds,
    /// 1 for tokens, 0 for padding.
    AttentionMask,
    /// Segment ids: 0 for the first text of a pair, 1 for the second.
    TokenTypeIds,
}

impl TextTensor {
    /// The argument name.
    pub fn name(self) -> &'static str {
        match self {
            TextTensor::InputIds => "input_ids",
            TextTensor::AttentionMask => "attention_mask",
            TextTensor::TokenTypeIds => "token_type_ids",
        }
    }
}

/// What the model returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Output {
    /// One row of class scores per input.
    Classification(ClassificationOutput),
    /// The output tensor as is.
    Raw(RawOutput),
    /// One vector per input, pooled over the tokens (text models).
    Embedding(EmbeddingOutput),
}

/// Embedding output: token vectors pooled into one vector per text, as sentence-transformers'
/// `Pooling` and `Normalize` modules do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingOutput {
    /// How `[batch, tokens, dims]` token vectors become `[batch, dims]`.
    #[serde(default)]
    pub pooling: Pooling,
    /// Divide each vector by its L2 norm.
    #[serde(default = "default_true")]
    pub normalize: bool,
}

/// Pooling of token vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps.
    #[default]
    Mean,
    /// The first token's vector (`[CLS]`).
    Cls,
    /// None: the model already returns `[batch, dims]`.
    None,
}

impl Default for Output {
    fn default() -> Self {
        Output::Raw(RawOutput {})
    }
}

/// Classification output: scores, optionally softmaxed, best `top_k` first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassificationOutput {
    /// A file in the model directory with one label a line, or the labels themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Labels>,
    /// Apply softmax to the model's output (set false when the model already returns
    /// probabilities).
    #[serde(default = "default_true")]
    pub softmax: bool,
    /// Predictions returned when the request does not say.
    #[serde(default = "default_top_k")]
    pub top_k: usize,
}

fn default_top_k() -> usize {
    5
}

/// Raw output: no fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutput {}

/// Where the class labels come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Labels {
    /// A file in the model directory, one label a line.
    File(String),
    /// The labels, in class order.
    List(Vec<String>),
}

/// Intra-op thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// The CPUs this process may really use (see [`crate::model::usable_cpus`]).
    #[default]
    Auto,
    /// A fixed count.
    Count(usize),
}

impl Serialize for Threads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threads::Auto => s.serialize_str("auto"),
            Threads::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Count(n)) if n > 0 => Ok(Threads::Count(n)),
            Ok(Raw::Word(w)) if w == "auto" => Ok(Threads::Auto),
            _ => Err(serde::de::Error::custom(
                "expected \"auto\" or a positive integer",
            )),
        }
    }
}

/// Deserializes `json` into `T`; errors name the dotted field under `prefix`.
fn typed<T: serde::de::DeserializeOwned>(
    json: serde_json::Value,
    path: &Path,
    prefix: &str,
) -> Result<T> {
    serde_path_to_error::deserialize(json).map_err(|err| {
        let inner = err.path().to_string();
        let field = match (prefix, inner.as_str()) {
            ("", ".") => "(top level)".to_owned(),
            ("", inner) => inner.to_owned(),
            (prefix, ".") => prefix.to_owned(),
            (prefix, inner) => format!("{prefix}.{inner}"),
        };
        Error::manifest(path, field, err.into_inner().to_string())
    })
}

/// Splits a `{"type": ..., ...}` section into its type and the remaining fields.
fn tagged(
    json: serde_json::Value,
    path: &Path,
    field: &str,
) -> Result<(String, serde_json::Value)> {
    let serde_json::Value::Object(mut map) = json else {
        return Err(Error::manifest(
            path,
            field,
            "expected an object with a \"type\"",
        ));
    };
    match map.remove("type") {
        Some(serde_json::Value::String(kind)) => Ok((kind, serde_json::Value::Object(map))),
        Some(other) => Err(Error::manifest(
            path,
            format!("{field}.type"),
            format!("expected a string, got {other}"),
        )),
        None => Err(Error::manifest(
            path,
            format!("{field}.type"),
            "missing field `type`",
        )),
    }
}

fn unknown_type(path: &Path, field: &str, got: &str, expected: &str) -> Error {
    Error::manifest(
        path,
        format!("{field}.type"),
        format!("unknown type {got:?}, expected {expected}"),
    )
}

/// The largest image side a manifest may ask for; beyond this it is surely a typo.
const MAX_SIDE: u32 = 8192;

impl Manifest {
    /// Parses manifest JSON text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest> {
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|err| Error::manifest(path, "(syntax)", format!("invalid JSON: {err}")))?;
        let raw: RawManifest = typed(json, path, "")?;
        let (kind, body) = tagged(raw.input, path, "input")?;
        let input = match kind.as_str() {
            "image" => Input::Image(typed(body, path, "input")?),
            "tensor" => Input::Tensor(typed(body, path, "input")?),
            "text" => Input::Text(typed(body, path, "input")?),
            other => {
                let expected = "\"image\", \"tensor\" or \"text\"";
                return Err(unknown_type(path, "input", other, expected));
            }
        };
        let output = match raw.output {
            None => Output::default(),
            Some(json) => {
                let (kind, body) = tagged(json, path, "output")?;
                match kind.as_str() {
                    "classification" => Output::Classification(typed(body, path, "output")?),
                    "raw" => Output::Raw(typed(body, path, "output")?),
                    "embedding" => Output::Embedding(typed(body, path, "output")?),
                    other => {
                        let expected = "\"classification\", \"raw\" or \"embedding\"";
                        return Err(unknown_type(path, "output", other, expected));
                    }
                }
            }
        };
        let manifest = Manifest {
            format: raw.format,
            file: raw.file,
            sha256: raw.sha256,
            cpu_isa: raw.cpu_isa,
            input,
            output,
            max_batch: raw.max_batch,
            threads: raw.threads,
            warmup: raw.warmup,
            batching: raw.batching,
        };
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            Error::manifest(path, "(file)", format!("cannot read the manifest: {err}"))
        })?;
        Manifest::parse(&text, path)
    }

    /// The image preprocessing, when the model takes images.
    pub fn image_input(&self) -> Option<&ImageInput> {
        match &self.input {
            Input::Image(image) => Some(image),
            Input::Tensor(_) | Input::Text(_) => None,
        }
    }

    /// Checks what the types alone cannot: ranges, lengths and consistency between fields.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::manifest(path, field, message));
        if self.file.is_empty() {
            return bad("file", "must name the model file, e.g. \"model.pt\"".into());
        }
        if let Some(digest) = &self.sha256 {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("sha256", format!("expected 64 hex digits, got {digest:?}"));
            }
        }
        if self.cpu_isa.is_some() && self.format != Format::Aoti {
            return bad(
                "cpu_isa",
                "only applies to \"format\": \"aoti\"; remove it".into(),
            );
        }
        if let Some(batching) = &self.batching {
            if batching.max_delay_ms > 1000 {
                return bad(
                    "batching.max_delay_ms",
                    format!(
                        "must be 0 to 1000 milliseconds, got {}",
                        batching.max_delay_ms
                    ),
                );
            }
        }
        if self.max_batch == 0 || self.max_batch > 1024 {
            return bad(
                "max_batch",
                format!("must be 1 to 1024, got {}", self.max_batch),
            );
        }
        match &self.input {
            Input::Image(image) => validate_image(image, path)?,
            Input::Tensor(tensor) => {
                if tensor.shape.is_empty() || tensor.shape.iter().any(|&d| d == 0 || d < -1) {
                    return bad(
                        "input.shape",
                        format!(
                            "expected positive sizes (or -1 for any), batch first, got {:?}",
                            tensor.shape
                        ),
                    );
                }
            }
            Input::Text(text) => self.validate_text(text, path)?,
        }
        if matches!(self.output, Output::Embedding(_)) && !matches!(self.input, Input::Text(_)) {
            return bad(
                "output.type",
                "\"embedding\" pools over a text model's tokens: it needs \"input\":                  {\"type\": \"text\", ...}; use \"raw\" for other models"
                    .into(),
            );
        }
        if let Output::Classification(out) = &self.output {
            if out.top_k == 0 {
                return bad("output.top_k", "must be at least 1".into());
            }
            if let Some(Labels::File(file)) = &out.labels {
                if file.is_empty() {
                    return bad(
                        "output.labels",
                        "must name a file or list the labels".into(),
                    );
                }
            }
        }
        Ok(())
    }
}

impl Manifest {
    fn validate_text(&self, text: &TextInput, path: &Path) -> Result<()> {
        let bad = |field: &str, message: String| Err(Error::manifest(path, field, message));
        if text.tokenizer.is_empty() {
            return bad(
                "input.tokenizer",
                "must name the tokenizer file, e.g. \"tokenizer.json\"".into(),
            );
        }
        if text.max_length == 0 || text.max_length > MAX_TEXT_LENGTH {
            return bad(
                "input.max_length",
                format!("must be 1 to {MAX_TEXT_LENGTH}, got {}", text.max_length),
            );
        }
        let inputs = &text.inputs;
        if inputs.first() != Some(&TextTensor::InputIds) {
            return bad(
                "input.inputs",
                format!(
                    "must list the model's forward arguments in order, starting with                      \"input_ids\", got {:?}",
                    inputs.iter().map(|t| t.name()).collect::<Vec<_>>()
                ),
            );
        }
        for (i, tensor) in inputs.iter().enumerate() {
            if inputs[..i].contains(tensor) {
                return bad("input.inputs", format!("lists {:?} twice", tensor.name()));
            }
        }
        if let Output::Embedding(EmbeddingOutput {
            pooling: Pooling::Mean,
            ..
        }) = self.output
        {
            // Mean pooling weighs tokens by the mask; a model that never sees the mask would
            // attend to padding, and its vectors would change with the batch it ran in.
            if !inputs.contains(&TextTensor::AttentionMask) {
                return bad(
                    "input.inputs",
                    "mean pooling needs a model that takes \"attention_mask\"".into(),
                );
            }
        }
        Ok(())
    }
}

fn validate_image(image: &ImageInput, path: &Path) -> Result<()> {
    let bad = |field: &str, message: String| Err(Error::manifest(path, field, message));
    let [h, w] = image.size;
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return bad(
            "input.size",
            format!("expected [height, width], each 1 to {MAX_SIDE}, got [{h}, {w}]"),
        );
    }
    if let Some(shorter) = image.resize_shorter {
        if shorter == 0 || shorter > MAX_SIDE {
            return bad(
                "input.resize_shorter",
                format!("must be 1 to {MAX_SIDE}, got {shorter}"),
            );
        }
        if image.crop == Crop::None {
            return bad(
                "input.resize_shorter",
                "only applies with \"crop\": \"center\"; remove it or set crop".into(),
            );
        }
    }
    let channels = image.color.channels();
    for (field, values) in [("input.mean", &image.mean), ("input.std", &image.std)] {
        let Some(values) = values else { continue };
        if values.len() != channels {
            return bad(
                field,
                format!(
                    "expected {channels} value(s), one per channel of color {:?}, got {}",
                    image.color,
                    values.len()
                ),
            );
        }
        if values.iter().any(|v| !v.is_finite()) {
            return bad(field, "values must be finite numbers".into());
        }
    }
    if let Some(std) = &image.std {
        if std.iter().any(|&v| v <= 0.0) {
            return bad("input.std", format!("values must be positive, got {std:?}"));
        }
    }
    Ok(())
}

/// A model directory: its manifest and the files it names, resolved inside the directory.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// The model's name (its directory name).
    pub name: String,
    /// The directory, canonical.
    pub dir: PathBuf,
    /// The manifest file.
    pub manifest_path: PathBuf,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The model file (for `aoti`, the unpacked package directory), canonical and inside `dir`.
    pub model_file: PathBuf,
    /// Class labels, when the manifest gives them.
    pub labels: Option<Vec<String>>,
}

impl ModelDir {
    /// Opens a model given its directory or its manifest path.
    pub fn open(path: &Path) -> Result<ModelDir> {
        let manifest_path = if path.is_dir() {
            path.join(MANIFEST_FILE)
        } else {
            path.to_path_buf()
        };
        if !manifest_path.is_file() {
            return Err(Error::ModelNotFound(format!(
                "no model at {}: expected a model directory holding {MANIFEST_FILE}, or the \
                 manifest itself",
                path.display()
            )));
        }
        let manifest_path = manifest_path
            .canonicalize()
            .map_err(|err| Error::manifest(&manifest_path, "(file)", err.to_string()))?;
        let dir = manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let manifest = Manifest::read(&manifest_path)?;
        let kind = match manifest.format {
            Format::Torchscript => Kind::File,
            Format::Aoti => Kind::Directory,
        };
        let model_file = resolve_inside(&dir, &manifest.file, &manifest_path, "file", kind)?;
        let labels = match &manifest.output {
            Output::Classification(ClassificationOutput {
                labels: Some(labels),
                ..
            }) => Some(match labels {
                Labels::List(list) => list.clone(),
                Labels::File(file) => {
                    let path =
                        resolve_inside(&dir, file, &manifest_path, "output.labels", Kind::File)?;
                    read_labels(&path, &manifest_path)?
                }
            }),
            _ => None,
        };
        Ok(ModelDir {
            name,
            dir,
            manifest_path,
            manifest,
            model_file,
            labels,
        })
    }
}

/// What a manifest field names.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
}

/// Resolves `relative` inside `dir`, refusing anything (`..`, absolute paths, symlinks) that lands
/// outside it.
pub(crate) fn resolve_inside(
    dir: &Path,
    relative: &str,
    manifest: &Path,
    field: &str,
    kind: Kind,
) -> Result<PathBuf> {
    let outside = || {
        Error::manifest(
            manifest,
            field,
            format!(
                "{relative:?} resolves outside the model directory; keep model files inside it"
            ),
        )
    };
    let lexically_inside = Path::new(relative).components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !lexically_inside {
        return Err(outside());
    }
    let candidate = dir.join(relative);
    let resolved = candidate.canonicalize().map_err(|err| {
        Error::manifest(
            manifest,
            field,
            format!("{relative:?} cannot be opened in the model directory: {err}"),
        )
    })?;
    if !resolved.starts_with(dir) {
        return Err(outside());
    }
    match kind {
        Kind::File if !resolved.is_file() => Err(Error::manifest(
            manifest,
            field,
            format!("{relative:?} is not a file"),
        )),
        Kind::Directory if !resolved.is_dir() || resolved == dir => Err(Error::manifest(
            manifest,
            field,
            format!(
                "{relative:?} is not a directory: an \"aoti\" model is the unpacked package \
                 directory (lambdatorch add-model --file model.pt2 unpacks it)"
            ),
        )),
        _ => Ok(resolved),
    }
}

fn read_labels(path: &Path, manifest: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        Error::manifest(
            manifest,
            "output.labels",
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    Ok(text
        .lines()
        .map(|line| line.trim_end_matches('\r').to_owned())
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest> {
        Manifest::parse(text, Path::new("/m/manifest.json"))
    }

    const IMAGENET: &str = r#"{
      "format": "torchscript", "file": "model.pt",
      "input": {"type": "image", "size": [224, 224], "resize_shorter": 256, "crop": "center",
                "interpolation": "bilinear", "color": "rgb",
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "decode": "exact"},
      "output": {"type": "classification", "labels": "labels.txt", "softmax": true, "top_k": 5},
      "max_batch": 8, "threads": "auto", "warmup": true}"#;

    #[test]
    fn parses_the_design_example() -> Result<()> {
        let m = parse(IMAGENET)?;
        let image = m.image_input().map(|i| (i.size, i.resize_shorter));
        assert_eq!(image, Some(([224, 224], Some(256))));
        assert_eq!(m.threads, Threads::Auto);
        assert!(matches!(m.output, Output::Classification(ref c) if c.top_k == 5));
        Ok(())
    }

    #[test]
    fn minimal_manifest_gets_defaults() -> Result<()> {
        let m = parse(
            r#"{"format":"torchscript","file":"m.pt","input":{"type":"tensor","shape":[1,4]}}"#,
        )?;
        assert_eq!(m.max_batch, 8);
        assert!(m.warmup);
        assert_eq!(m.output, Output::Raw(RawOutput {}));
        Ok(())
    }

    fn error_of(text: &str) -> (String, String) {
        match parse(text) {
            Err(Error::Manifest { field, message, .. }) => (field, message),
            other => panic!("expected a manifest error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_nested_field_is_named() {
        let text = IMAGENET.replace("\"resize_shorter\"", "\"resize_shorte\"");
        let (field, message) = error_of(&text);
        assert!(field.starts_with("input"), "{field}");
        assert!(message.contains("resize_shorte"), "{message}");
    }

    #[test]
    fn wrong_types_and_values_name_the_field() {
        assert_eq!(
            error_of(&IMAGENET.replace("[224, 224]", "[224, 0]")).0,
            "input.size"
        );
        assert_eq!(
            error_of(&IMAGENET.replace("[0.229, 0.224, 0.225]", "[0.229, 0.224]")).0,
            "input.std"
        );
        assert_eq!(error_of(&IMAGENET.replace("\"auto\"", "0")).0, "threads");
        assert_eq!(
            error_of(&IMAGENET.replace("\"max_batch\": 8", "\"max_batch\": \"8\"")).0,
            "max_batch"
        );
        assert_eq!(
            error_of(&IMAGENET.replace("torchscript", "onnx")).0,
            "format"
        );
        assert_eq!(
            error_of(&IMAGENET.replace("\"top_k\": 5", "\"top_k\": 0")).0,
            "output.top_k"
        );
        let (field, _) = error_of(&IMAGENET.replace("\"bilinear\"", "\"bilinea\""));
        assert_eq!(field, "input.interpolation");
    }

    #[test]
    fn gray_needs_one_mean() {
        let text = IMAGENET.replace("\"rgb\"", "\"gray\"");
        assert_eq!(error_of(&text).0, "input.mean");
    }
}
