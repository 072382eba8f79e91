//! Text input: texts to the int64 token tensors a text model takes, with the Hugging Face
//! `tokenizers` crate (the Rust the Python `tokenizers` and `transformers` run underneath).
//!
//! A model's `tokenizer.json` is read and configured once, when the model loads (the manifest's
//! `max_length`, `padding` and `truncation` replace whatever the file says), and then shared by
//! every thread that serves the model. Texts are checked (UTF-8, no control characters, not
//! empty, within `LAMBDATORCH_MAX_TEXT_BYTES`) before any is tokenized. Which tensors reach the
//! model, and in which order, is the manifest's `inputs`; what the model's output means is
//! [`crate::output`]'s business.

use std::path::Path;

use tokenizers::{
    EncodeInput, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor,
    Tokenizer, TruncationParams,
};

use crate::batcher::LengthPadding;
use crate::error::{Error, Limit, Result};
use crate::limits::Limits;
use crate::manifest::{Padding, TextInput, TextTensor};
use crate::tensor::{Elements, TensorData};

/// The largest `tokenizer.json` a model may have. Real ones are 0.5 to 20 MB (a 250,000-token
/// multilingual vocabulary is 17 MB); past this it is not a tokenizer, and parsing it would cost
/// the cold start seconds and the function its memory.
pub const MAX_TOKENIZER_BYTES: u64 = 64 * 1024 * 1024;

/// Pad tokens looked up, in order, when `tokenizer.json` configures no padding (files saved by
/// `transformers` usually do not: the pad token lives in `tokenizer_config.json`).
const PAD_TOKENS: [&str; 3] = ["[PAD]", "<pad>", "<|pad|>"];

/// One input of a text model: a text, or a pair of texts for models with `"pair": true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextSource {
    /// One text.
    Single(String),
    /// Two texts, encoded together (`[CLS] first [SEP] second [SEP]` for BERT).
    Pair(String, String),
}

impl TextSource {
    /// A text from bytes that must be UTF-8 (HTTP bodies, Python `bytes`).
    pub fn from_utf8(bytes: Vec<u8>) -> Result<TextSource> {
        String::from_utf8(bytes)
            .map(TextSource::Single)
            .map_err(|err| {
                Error::invalid_input(format!(
                    "the text is not valid UTF-8 (at byte {})",
                    err.utf8_error().valid_up_to()
                ))
            })
    }

    fn parts(&self) -> impl Iterator<Item = &str> {
        let (first, second) = match self {
            TextSource::Single(text) => (text.as_str(), None),
            TextSource::Pair(first, second) => (first.as_str(), Some(second.as_str())),
        };
        std::iter::once(first).chain(second)
    }
}

/// Token tensors of a batch of texts, `[batch, length]` each, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Texts in the batch.
    pub batch: usize,
    /// Tokens per text, padding included.
    pub length: usize,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Segment ids (0 for the first text of a pair, 1 for the second).
    pub token_type_ids: Vec<i64>,
}

impl Tokens {
    /// The elements of one of the tensors.
    pub fn get(&self, tensor: TextTensor) -> &[i64] {
        match tensor {
            TextTensor::InputIds => &self.input_ids,
            TextTensor::AttentionMask => &self.attention_mask,
            TextTensor::TokenTypeIds => &self.token_type_ids,
        }
    }

    /// Appends one text's row of each tensor: its tokens, with `pads` padding tokens on the side
    /// `padding` says, as `Encoding::pad` pads.
    fn push(&mut self, encoding: &Encoding, pads: usize, padding: &PaddingParams) {
        let left = matches!(padding.direction, PaddingDirection::Left);
        if left {
            self.push_padding(pads, padding);
        }
        self.input_ids.extend(widened(encoding.get_ids()));
        self.attention_mask
            .extend(widened(encoding.get_attention_mask()));
        self.token_type_ids.extend(widened(encoding.get_type_ids()));
        if !left {
            self.push_padding(pads, padding);
        }
    }

    fn push_padding(&mut self, pads: usize, padding: &PaddingParams) {
        let repeat = |value: u32| std::iter::repeat_n(i64::from(value), pads);
        self.input_ids.extend(repeat(padding.pad_id));
        self.attention_mask.extend(repeat(0));
        self.token_type_ids.extend(repeat(padding.pad_type_id));
    }

    /// One of the tensors as [`TensorData`] (int64, `[batch, length]`).
    pub fn tensor(&self, tensor: TextTensor) -> Result<TensorData> {
        TensorData::new(
            vec![self.batch, self.length],
            Elements::Int64(self.get(tensor).to_vec()),
        )
    }

    /// The tensors `inputs` names, in that order, as libtorch tensors.
    pub fn to_torch(&self, inputs: &[TextTensor]) -> Result<Vec<tch::Tensor>> {
        inputs
            .iter()
            .map(|&name| self.tensor(name)?.to_torch())
            .collect()
    }
}

/// A model's tokenizer with the manifest's settings.
#[derive(Debug)]
pub struct TextPipeline {
    /// Truncates but does not pad: [`TextPipeline::tokenize`] pads while it gathers the batch.
    tokenizer: Tokenizer,
    padding: PaddingParams,
    spec: TextInput,
}

impl TextPipeline {
    /// Reads and configures the tokenizer at `path` (resolved inside the model directory by the
    /// caller) for `spec`. Every failure is a `ManifestError` on `input.tokenizer` (or the field
    /// that does not fit it), naming `manifest`.
    pub fn load(path: &Path, spec: &TextInput, manifest: &Path) -> Result<TextPipeline> {
        let bad = |field: &str, message: String| Error::manifest(manifest, field, message);
        let unreadable = |err: std::io::Error| {
            bad(
                "input.tokenizer",
                format!("cannot read {}: {err}", path.display()),
            )
        };
        let size = std::fs::metadata(path).map_err(unreadable)?.len();
        if size > MAX_TOKENIZER_BYTES {
            return Err(bad(
                "input.tokenizer",
                format!(
                    "{} is {size} bytes, over the {MAX_TOKENIZER_BYTES} a tokenizer.json may be: \
                     is it the right file?",
                    path.display()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let mut tokenizer = Tokenizer::from_bytes(&bytes).map_err(|err| {
            bad(
                "input.tokenizer",
                format!(
                    "{} is not a Hugging Face tokenizer.json (as tokenizer.save() or \
                     save_pretrained() write it): {err}",
                    path.display()
                ),
            )
        })?;
        drop(bytes);
        let special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(spec.pair));
        if spec.max_length <= special {
            return Err(bad(
                "input.max_length",
                format!(
                    "is {}, but the tokenizer adds {special} special tokens to each input: \
                     nothing would be left of the text",
                    spec.max_length
                ),
            ));
        }
        let truncation = spec.truncation.then(|| TruncationParams {
            max_length: spec.max_length,
            ..TruncationParams::default()
        });
        tokenizer
            .with_truncation(truncation)
            .map_err(|err| bad("input.max_length", err.to_string()))?;
        let mut padding = match tokenizer.get_padding() {
            Some(params) => params.clone(),
            None => {
                let (pad_id, pad_token) = PAD_TOKENS
                    .iter()
                    .find_map(|&token| Some((tokenizer.token_to_id(token)?, token)))
                    .ok_or_else(|| {
                        bad(
                            "input.tokenizer",
                            format!(
                                "{} sets no padding and has none of the pad tokens {PAD_TOKENS:?}: \
                                 save it with padding enabled (tokenizer.enable_padding(pad_id=..., \
                                 pad_token=...))",
                                path.display()
                            ),
                        )
                    })?;
                PaddingParams {
                    pad_id,
                    pad_token: pad_token.to_owned(),
                    ..PaddingParams::default()
                }
            }
        };
        padding.strategy = match spec.padding {
            Padding::Longest => PaddingStrategy::BatchLongest,
            Padding::MaxLength => PaddingStrategy::Fixed(spec.max_length),
        };
        padding.pad_to_multiple_of = None;
        tokenizer.with_padding(None);
        Ok(TextPipeline {
            tokenizer,
            padding,
            spec: spec.clone(),
        })
    }

    /// The manifest's text settings.
    pub fn spec(&self) -> &TextInput {
        &self.spec
    }

    /// How concurrent requests' token tensors of different lengths are padded into one batch:
    /// as this tokenizer pads a request's own texts.
    pub fn batch_padding(&self) -> LengthPadding {
        let value = |tensor: &TextTensor| match tensor {
            TextTensor::InputIds => i64::from(self.padding.pad_id),
            TextTensor::AttentionMask => 0,
            TextTensor::TokenTypeIds => i64::from(self.padding.pad_type_id),
        };
        LengthPadding {
            values: self.spec.inputs.iter().map(value).collect(),
            left: matches!(self.padding.direction, PaddingDirection::Left),
        }
    }

    /// Checks texts against the model and the limits, before any is tokenized: pairs for pair
    /// models and single texts otherwise; UTF-8 (already, as Rust strings) without control
    /// characters other than tab and line breaks; not empty; within `max_text_bytes`.
    pub fn check(&self, texts: &[TextSource], limits: &Limits) -> Result<()> {
        limits.check_text_count(texts.len())?;
        for (i, text) in texts.iter().enumerate() {
            let at = |message: String| {
                if texts.len() == 1 {
                    message
                } else {
                    format!("text {i}: {message}")
                }
            };
            match (text, self.spec.pair) {
                (TextSource::Single(_), true) => {
                    return Err(Error::invalid_input(at(
                        "the model takes pairs of texts: send [\"first\", \"second\"]".to_owned(),
                    )))
                }
                (TextSource::Pair(..), false) => {
                    return Err(Error::invalid_input(at(
                        "the model takes single texts, not pairs (its manifest's input.pair is \
                         false)"
                            .to_owned(),
                    )))
                }
                _ => {}
            }
            for part in text.parts() {
                limits.check_text_bytes(part.len())?;
                if part.trim().is_empty() {
                    return Err(Error::invalid_input(at("the text is empty".to_owned())));
                }
                if let Some((at_byte, c)) = part
                    .char_indices()
                    .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
                {
                    return Err(Error::invalid_input(at(format!(
                        "the text holds the control character U+{:04X} at byte {at_byte}",
                        u32::from(c)
                    ))));
                }
            }
        }
        Ok(())
    }

    /// Tokenizes a batch of texts (checked first, see [`TextPipeline::check`]) into padded
    /// `[batch, length]` tensors: the ids, masks and segments `encode_batch` gives.
    ///
    /// One text after another on the calling thread, not with `encode_batch`, which hands the
    /// texts to rayon's global pool (and pads them there): on a Lambda of a few cores those
    /// threads wait for the cores that libtorch's OpenMP threads still spin on after the last
    /// forward pass, and the hand-offs cost more than tokenizing short texts does. With
    /// `encode_fast`, which skips the token strings and offsets no model reads.
    pub fn tokenize(&self, texts: &[TextSource], limits: &Limits) -> Result<Tokens> {
        self.check(texts, limits)?;
        if texts.is_empty() {
            return Err(Error::invalid_input("no texts to tokenize"));
        }
        let encodings = texts
            .iter()
            .map(|text| {
                let input = match text {
                    TextSource::Single(text) => EncodeInput::from(text.as_str()),
                    TextSource::Pair(first, second) => {
                        EncodeInput::from((first.as_str(), second.as_str()))
                    }
                };
                self.tokenizer.encode_fast(input, true)
            })
            .collect::<tokenizers::Result<Vec<Encoding>>>()
            .map_err(|err| Error::invalid_input(format!("the text cannot be tokenized: {err}")))?;
        if !self.spec.truncation {
            for (i, encoding) in encodings.iter().enumerate() {
                let tokens = encoding.get_attention_mask().iter().filter(|&&m| m != 0);
                let count = tokens.count();
                if count > self.spec.max_length {
                    tracing::debug!(text = i, count, "text over max_length");
                    return Err(Error::TooLarge {
                        limit: Limit::TextTokens,
                        actual: count as u64,
                        max: self.spec.max_length as u64,
                    });
                }
            }
        }
        self.gather(&encodings)
    }

    /// Stacks the encodings into row-major tensors, padded to the longest of the batch or to
    /// `max_length`, as the manifest says.
    fn gather(&self, encodings: &[Encoding]) -> Result<Tokens> {
        let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
        let length = match self.padding.strategy {
            PaddingStrategy::BatchLongest => longest,
            PaddingStrategy::Fixed(length) => length,
        };
        if longest > length {
            return Err(Error::internal(
                "tokenize",
                format!("an encoding of {longest} tokens despite truncation to {length}"),
            ));
        }
        let size = encodings.len() * length;
        let mut tokens = Tokens {
            batch: encodings.len(),
            length,
            input_ids: Vec::with_capacity(size),
            attention_mask: Vec::with_capacity(size),
            token_type_ids: Vec::with_capacity(size),
        };
        for encoding in encodings {
            tokens.push(encoding, length - encoding.len(), &self.padding);
        }
        Ok(tokens)
    }
}

fn widened(values: &[u32]) -> impl Iterator<Item = i64> + '_ {
    values.iter().map(|&v| i64::from(v))
}
