//! What a model returns, made presentable: the manifest's `output` section made executable.
//!
//! Classification turns a `[batch, classes]` score tensor into the best `top_k` labelled
//! predictions per input; embedding pools a text model's token vectors into one vector per text
//! (over the attention mask, as sentence-transformers does); raw output passes the tensor through
//! in its own dtype. None of them knows how the input was made.

use crate::error::{Error, Result};
use crate::manifest::{ClassificationOutput, EmbeddingOutput, Output, Pooling};
use crate::tensor::{short_f64, TensorData};

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

fn short_score<S: serde::Serializer>(score: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(short_f64(*score))
}

/// A model's output handling.
#[derive(Debug, Clone)]
pub enum OutputHead {
    /// Class scores, best `top_k` first.
    Classification {
        /// softmax, top_k.
        spec: ClassificationOutput,
        /// Labels in class order, when the manifest gives them.
        labels: Option<Vec<String>>,
    },
    /// The output tensor as is.
    Raw,
    /// One pooled, optionally normalised vector per input.
    Embedding(EmbeddingOutput),
}

/// Embeddings of a batch: `batch` vectors of `dims` float32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Vectors in the batch.
    pub batch: usize,
    /// Length of each vector.
    pub dims: usize,
    /// The vectors, row-major.
    pub data: Vec<f32>,
}

impl Embeddings {
    /// The vectors, one slice each.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.data.chunks_exact(self.dims.max(1)).take(self.batch)
    }
}

impl OutputHead {
    /// The head for a manifest's `output` and its loaded labels.
    pub fn new(output: &Output, labels: Option<Vec<String>>) -> OutputHead {
        match output {
            Output::Classification(spec) => OutputHead::Classification {
                spec: spec.clone(),
                labels,
            },
            Output::Raw(_) => OutputHead::Raw,
            Output::Embedding(spec) => OutputHead::Embedding(*spec),
        }
    }

    /// Whether requests get predictions (rather than the raw output).
    pub fn is_classification(&self) -> bool {
        matches!(self, OutputHead::Classification { .. })
    }

    /// `InvalidInput` unless the model classifies: predictions of a raw model are a caller's
    /// mistake.
    pub fn require_classification(&self, model: &str) -> Result<()> {
        self.classification(model).map(|_| ())
    }

    /// `InvalidInput` unless the model returns embeddings.
    pub fn require_embedding(&self, model: &str) -> Result<()> {
        match self {
            OutputHead::Embedding(_) => Ok(()),
            _ => Err(Error::invalid_input(format!(
                "model {model:?} does not return embeddings (its manifest's output.type is not \
                 \"embedding\"): use predict or forward"
            ))),
        }
    }

    fn classification(&self, model: &str) -> Result<(&ClassificationOutput, Option<&[String]>)> {
        match self {
            OutputHead::Classification { spec, labels } => Ok((spec, labels.as_deref())),
            OutputHead::Raw => Err(Error::invalid_input(format!(
                "model {model:?} has raw output (its manifest's output.type is \"raw\"): use \
                 forward, or send a request without predictions"
            ))),
            OutputHead::Embedding(_) => Err(Error::invalid_input(format!(
                "model {model:?} returns embeddings (its manifest's output.type is \
                 \"embedding\"): use embed"
            ))),
        }
    }

    /// Turns `[batch, classes]` scores into the best `top_k` predictions per row (the
    /// manifest's `top_k` when `None`). `model` names the model in errors.
    pub fn classify(
        &self,
        model: &str,
        output: &TensorData,
        top_k: Option<usize>,
    ) -> Result<Vec<Vec<Prediction>>> {
        let (spec, labels) = self.classification(model)?;
        let [batch, classes] = output.shape[..] else {
            return Err(Error::inference(
                model,
                format!(
                    "a classification model must return [batch, classes] scores, this one \
                     returned shape {:?}",
                    output.shape
                ),
            ));
        };
        let mut scores = output.elements.to_f32();
        if spec.softmax {
            for row in scores.chunks_exact_mut(classes.max(1)) {
                softmax(row);
            }
        }
        if let Some(bad) = scores.iter().find(|v| !v.is_finite()) {
            return Err(Error::inference(
                model,
                format!(
                    "the model returned a score of {bad}; its predictions would be meaningless"
                ),
            ));
        }
        let top_k = top_k.unwrap_or(spec.top_k).min(classes);
        let rows = scores.chunks_exact(classes.max(1)).take(batch);
        Ok(rows
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
}

impl OutputHead {
    /// Pools a text model's output into one vector per text. `output` is `[batch, tokens, dims]`
    /// for `mean` and `cls` pooling (the model's token vectors: `last_hidden_state`), `[batch,
    /// dims]` for `none`; `mask` is the `[batch, tokens]` attention mask the model ran with.
    ///
    /// The formula is sentence-transformers': `sum(vectors * mask) / max(sum(mask), 1e-9)`, then
    /// `x / max(||x||, 1e-12)` when normalizing (`torch.nn.functional.normalize`); sums run in
    /// float64, so the result is the exact value rounded to float32.
    pub fn embed(&self, model: &str, output: &TensorData, mask: &[i64]) -> Result<Embeddings> {
        let OutputHead::Embedding(spec) = self else {
            return Err(Error::invalid_input(format!(
                "model {model:?} does not return embeddings (its manifest's output.type is not \
                 \"embedding\")"
            )));
        };
        let wrong = |expected: &str| {
            Error::inference(
                model,
                format!(
                    "an embedding model with {:?} pooling must return {expected} (its first \
                     output), this one returned shape {:?}",
                    spec.pooling, output.shape
                ),
            )
        };
        let values = output.elements.to_f32();
        let (batch, dims, data) = match (spec.pooling, &output.shape[..]) {
            (Pooling::None, &[batch, dims]) => (batch, dims, values),
            (Pooling::None, _) => return Err(wrong("[batch, dims] vectors")),
            (pooling, &[batch, tokens, dims]) => {
                if mask.len() != batch * tokens {
                    return Err(wrong(
                        "[batch, tokens, dims] token vectors for its input tokens",
                    ));
                }
                let mut pooled = Vec::with_capacity(batch * dims);
                for (b, row_mask) in mask.chunks_exact(tokens.max(1)).enumerate().take(batch) {
                    let vectors = &values[b * tokens * dims..(b + 1) * tokens * dims];
                    let mut sum = vec![0f64; dims];
                    let weight = if pooling == Pooling::Cls {
                        sum.iter_mut()
                            .zip(&vectors[..dims])
                            .for_each(|(s, &v)| *s = f64::from(v));
                        1.0
                    } else {
                        for (token, &m) in vectors.chunks_exact(dims.max(1)).zip(row_mask) {
                            let m = m as f64;
                            sum.iter_mut()
                                .zip(token)
                                .for_each(|(s, &v)| *s += f64::from(v) * m);
                        }
                        let total = row_mask.iter().map(|&m| m as f64).sum::<f64>();
                        // float32, as torch.clamp(mask.sum(1), min=1e-9) is
                        f64::from((total as f32).max(1e-9))
                    };
                    pooled.extend(sum.iter().map(|&s| (s / weight) as f32));
                }
                (batch, dims, pooled)
            }
            _ => return Err(wrong("[batch, tokens, dims] token vectors")),
        };
        let mut embeddings = Embeddings { batch, dims, data };
        if spec.normalize {
            for row in embeddings.data.chunks_exact_mut(dims.max(1)) {
                let norm = row
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let norm = (norm as f32).max(1e-12);
                row.iter_mut().for_each(|v| *v /= norm);
            }
        }
        if let Some(bad) = embeddings.data.iter().find(|v| !v.is_finite()) {
            return Err(Error::inference(
                model,
                format!("the model returned {bad} in an embedding, which a response cannot carry"),
            ));
        }
        Ok(embeddings)
    }
}

/// Softmax in place, computed as `torch.softmax(x.float(), 1)` is: shifted by the row maximum,
/// exponentials summed in float32.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Elements;

    fn head(top_k: usize, softmax: bool) -> OutputHead {
        OutputHead::Classification {
            spec: ClassificationOutput {
                labels: None,
                softmax,
                top_k,
            },
            labels: Some(vec!["a".into(), "b".into(), "c".into()]),
        }
    }

    #[test]
    fn best_first_with_labels_and_stable_ties() -> Result<()> {
        let scores = TensorData::new(
            vec![2, 3],
            Elements::Float32(vec![0.1, 0.7, 0.2, 0.5, 0.5, 0.0]),
        )?;
        let rows = head(2, false).classify("m", &scores, None)?;
        let indices: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.iter().map(|p| p.index).collect())
            .collect();
        assert_eq!(indices, vec![vec![1, 2], vec![0, 1]]);
        assert_eq!(rows[0][0].label.as_deref(), Some("b"));
        Ok(())
    }

    #[test]
    fn mean_and_cls_pooling_follow_the_mask() -> Result<()> {
        let embedding =
            |pooling, normalize| OutputHead::Embedding(EmbeddingOutput { pooling, normalize });
        // 2 texts, 3 tokens, 2 dims; the second text has one padding token.
        let tokens = TensorData::new(
            vec![2, 3, 2],
            Elements::Float32(vec![
                1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 1.0, 3.0, 5.0, 100.0, 100.0,
            ]),
        )?;
        let mask = [1, 1, 1, 1, 1, 0];
        let mean = embedding(Pooling::Mean, false).embed("m", &tokens, &mask)?;
        assert_eq!((mean.batch, mean.dims), (2, 2));
        assert_eq!(mean.data, vec![3.0, 4.0, 2.0, 3.0]);
        let cls = embedding(Pooling::Cls, true).embed("m", &tokens, &mask)?;
        let norm = 5f32.sqrt();
        assert_eq!(
            cls.data,
            vec![1.0 / norm, 2.0 / norm, 1.0 / 2f32.sqrt(), 1.0 / 2f32.sqrt()]
        );
        let flat = TensorData::new(vec![2, 2], Elements::Float32(vec![3.0, 4.0, 0.0, 0.0]))?;
        let none = embedding(Pooling::None, true).embed("m", &flat, &mask)?;
        assert_eq!(none.data, vec![0.6, 0.8, 0.0, 0.0]);
        assert!(matches!(
            embedding(Pooling::Mean, true).embed("m", &flat, &mask),
            Err(Error::Inference { .. })
        ));
        Ok(())
    }

    #[test]
    fn softmax_sums_to_one_and_bad_scores_blame_the_model() -> Result<()> {
        let scores = TensorData::new(vec![1, 3], Elements::Float32(vec![1.0, 2.0, 3.0]))?;
        let rows = head(3, true).classify("m", &scores, Some(10))?;
        let sum: f32 = rows[0].iter().map(|p| p.score).sum();
        assert!((sum - 1.0).abs() < 1e-6);
        let nan = TensorData::new(vec![1, 3], Elements::Float32(vec![f32::NAN, 0.0, 0.0]))?;
        let err = head(1, false).classify("m", &nan, None).unwrap_err();
        assert!(matches!(err, Error::Inference { .. }), "{err}");
        let flat = TensorData::new(vec![3], Elements::Float32(vec![0.0; 3]))?;
        assert!(matches!(
            head(1, false).classify("m", &flat, None),
            Err(Error::Inference { .. })
        ));
        Ok(())
    }
}
