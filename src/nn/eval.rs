//! Evaluation of a [`Network`] on labelled data, and comparison of two networks' outputs (used
//! by quantization/pruning reports). Called by job workers; runs on the caller's thread (candle
//! uses its own pool inside each forward).
//!
//! Every figure is measured: accuracies and losses from the logits, throughput and latency from
//! wall-clock time around each batch's forward pass.

use std::time::Instant;

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::model::Network;
use super::spec::OutputKind;
use super::NnError;

/// Accuracy and speed of a network on one labelled split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Top-1 accuracy in [0, 1].
    pub accuracy: f64,
    /// Samples whose top-1 class is right.
    pub correct: u64,
    /// Samples evaluated.
    pub samples: u64,
    /// Top-5 accuracy (equals 1 when there are at most 5 classes).
    pub top5_accuracy: f64,
    /// Mean cross-entropy (natural log).
    pub mean_loss: f64,
    /// Accuracy per true class (NaN for a class without samples).
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]` counts.
    pub confusion: Vec<Vec<u64>>,
    /// Samples per second of forward passes (preprocessing included, metrics excluded).
    pub samples_per_sec: f64,
    /// Mean wall time of one batch's forward pass, milliseconds.
    pub mean_batch_latency_ms: f64,
}

/// Log-probabilities `[N, C]` from a network's output.
pub(crate) fn log_probs(out: &Tensor, kind: OutputKind) -> Result<Tensor, NnError> {
    Ok(match kind {
        OutputKind::Logits => candle_nn::ops::log_softmax(out, D::Minus1)?,
        OutputKind::Probabilities => out.clamp(1e-12f32, 1f32)?.log()?,
    })
}

/// Runs `net` on `x` (raw batch `[N, ...]`) in chunks of `batch_size` and scores it against `y`.
pub fn evaluate(net: &Network, x: &Tensor, y: &[u32], batch_size: usize) -> Result<EvalReport, NnError> {
    net.check_input(x)?;
    let n = x.dim(0)?;
    if y.len() != n {
        return Err(NnError::Data(format!("{n} samples but {} labels", y.len())));
    }
    if n == 0 {
        return Err(NnError::Data("cannot evaluate on an empty split".into()));
    }
    let classes = net.classes();
    if let Some((i, v)) = y.iter().enumerate().find(|(_, v)| **v as usize >= classes) {
        return Err(NnError::Data(format!("label {v} at index {i} is out of range for {classes} classes")));
    }
    let bs = batch_size.max(1);
    let mut confusion = vec![vec![0u64; classes]; classes];
    let (mut correct, mut top5, mut loss_sum) = (0u64, 0u64, 0f64);
    let mut forward_s = 0f64;
    let mut batches = 0usize;
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let xb = x.narrow(0, start, len)?;
        let t0 = Instant::now();
        let out = net.forward(&xb)?;
        // Materialise the result inside the timed region.
        let lp = log_probs(&out, net.output_kind())?.to_vec2::<f32>()?;
        forward_s += t0.elapsed().as_secs_f64();
        batches += 1;
        for (row, &label) in lp.iter().zip(&y[start..start + len]) {
            let label = label as usize;
            let pred = argmax(row);
            confusion[label][pred] += 1;
            if pred == label {
                correct += 1;
            }
            let target = row[label];
            // Rank of the true class = number of classes scoring strictly higher.
            let higher = row.iter().filter(|v| **v > target).count();
            if higher < 5 {
                top5 += 1;
            }
            loss_sum -= target as f64;
        }
        start += len;
    }
    let per_class_accuracy = confusion
        .iter()
        .enumerate()
        .map(|(c, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 {
                f64::NAN
            } else {
                row[c] as f64 / total as f64
            }
        })
        .collect();
    Ok(EvalReport {
        accuracy: correct as f64 / n as f64,
        correct,
        samples: n as u64,
        top5_accuracy: top5 as f64 / n as f64,
        mean_loss: loss_sum / n as f64,
        per_class_accuracy,
        confusion,
        samples_per_sec: n as f64 / forward_s.max(1e-12),
        mean_batch_latency_ms: forward_s * 1e3 / batches as f64,
    })
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// How closely one network follows another on the same inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Samples compared.
    pub samples: u64,
    /// Fraction of samples where both pick the same top-1 class.
    pub top1_agreement: f64,
    /// Mean KL(p_reference ‖ p_other), natural log.
    pub mean_kl: f64,
    /// Largest absolute difference between the two raw outputs.
    pub max_abs_diff: f64,
}

/// Compares `other` against `reference` on `x` (both must take the same input and classes).
pub fn compare(reference: &Network, other: &Network, x: &Tensor, batch_size: usize) -> Result<Agreement, NnError> {
    if reference.classes() != other.classes() {
        return Err(NnError::Input(format!(
            "networks have different class counts ({} vs {})",
            reference.classes(),
            other.classes()
        )));
    }
    reference.check_input(x)?;
    other.check_input(x)?;
    let n = x.dim(0)?;
    if n == 0 {
        return Err(NnError::Data("cannot compare on an empty split".into()));
    }
    let bs = batch_size.max(1);
    let (mut agree, mut kl_sum, mut max_diff) = (0u64, 0f64, 0f64);
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let xb = x.narrow(0, start, len)?;
        let a = reference.forward(&xb)?;
        let b = other.forward(&xb)?;
        let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        max_diff = max_diff.max(diff);
        let la = log_probs(&a, reference.output_kind())?;
        let lb = log_probs(&b, other.output_kind())?;
        let kl = (la.exp()? * (&la - &lb)?)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        kl_sum += kl.iter().map(|v| *v as f64).sum::<f64>();
        let pa = la.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let pb = lb.argmax(D::Minus1)?.to_vec1::<u32>()?;
        agree += pa.iter().zip(&pb).filter(|(p, q)| p == q).count() as u64;
        start += len;
    }
    Ok(Agreement {
        samples: n as u64,
        top1_agreement: agree as f64 / n as f64,
        mean_kl: kl_sum / n as f64,
        max_abs_diff: max_diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::data::Dataset;
    use crate::nn::model::tests::{teacher, FIXTURES};

    #[test]
    fn report_is_consistent() {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let test = ds.test.unwrap();
        let y = test.y.as_ref().unwrap();
        let r = evaluate(&teacher(), &test.x, y, 50).unwrap();
        let diag: u64 = (0..10).map(|c| r.confusion[c][c]).sum();
        assert_eq!(diag, r.correct);
        let total: u64 = r.confusion.iter().flatten().sum();
        assert_eq!(total, 360);
        for (c, acc) in r.per_class_accuracy.iter().enumerate() {
            let n = y.iter().filter(|&&l| l as usize == c).count() as f64;
            assert!((acc - r.confusion[c][c] as f64 / n).abs() < 1e-12);
        }
        assert!(r.top5_accuracy >= r.accuracy && r.top5_accuracy <= 1.0);
        assert!(r.mean_loss > 0.0 && r.mean_loss < 0.5, "{}", r.mean_loss);
        assert!(r.samples_per_sec > 0.0 && r.mean_batch_latency_ms > 0.0);

        // A wrong label costs accuracy and loss.
        let mut wrong = y.clone();
        wrong[0] = (wrong[0] + 1) % 10;
        let r2 = evaluate(&teacher(), &test.x, &wrong, 50).unwrap();
        assert!(r2.correct < r.correct && r2.mean_loss > r.mean_loss);
    }

    #[test]
    fn comparing_a_network_with_itself() {
        let ds = Dataset::load(std::path::Path::new(&format!("{FIXTURES}/digits.safetensors"))).unwrap();
        let x = ds.test.unwrap().x;
        let a = compare(&teacher(), &teacher(), &x, 64).unwrap();
        assert_eq!(a.top1_agreement, 1.0);
        assert!(a.mean_kl.abs() < 1e-6 && a.max_abs_diff == 0.0, "{a:?}");
    }
}
