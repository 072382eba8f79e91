//! What a model returns, made presentable: the manifest's `output` section made executable.
//!
//! Classification turns a `[batch, classes]` score tensor into the best `top_k` labelled
//! predictions per input; raw output passes the tensor through in its own dtype. Neither knows
//! how the input was made.

use crate::error::{Error, Result};
use crate::manifest::{ClassificationOutput, Output};
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

    fn classification(&self, model: &str) -> Result<(&ClassificationOutput, Option<&[String]>)> {
        match self {
            OutputHead::Classification { spec, labels } => Ok((spec, labels.as_deref())),
            OutputHead::Raw => Err(Error::invalid_input(format!(
                "model {model:?} has raw output (its manifest's output.type is \"raw\"): use \
                 forward, or send a request without predictions"
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
