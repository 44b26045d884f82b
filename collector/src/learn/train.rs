//! Training the two learned models in Rust, and the same models' predictions
//! in plain Rust (what ONNX Runtime must reproduce to 1e-5).
//!
//! * Verifier: L2-regularised logistic regression (`linfa-logistic`) on
//!   standardised [`verifier_input`] rows. The standardisation
//!   (`z = (x - mean) / std`) is folded into the exported weights
//!   (`w' = w / std`, `b' = b - Σ w·mean/std`), so the ONNX graph takes raw
//!   rows and the live scorer needs no statistics of its own.
//! * Scene model: a Gaussian over whole-frame embeddings. The covariance is
//!   shrunk towards its mean variance (`(1-λ)S + λ·tr(S)/D·I + εI`) so it is
//!   invertible even with fewer frames than dimensions; the score is the
//!   Mahalanobis distance; the threshold is the `threshold_quantile` of the
//!   training distances times `threshold_margin` (docs/learning.md).

use super::features::{verifier_input, LabelledDetection};
use linfa::prelude::*;
use linfa_linalg::cholesky::InverseC;
use ndarray::{Array1, Array2};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training data: {0}")]
    NoData(String),
    #[error("training rows have different lengths: row 0 has {first}, row {index} has {len} (mixed embedding sizes?)")]
    RaggedRows {
        first: usize,
        index: usize,
        len: usize,
    },
    #[error("training row {index} has a non-finite value")]
    NonFinite { index: usize },
    #[error("logistic regression failed: {0}")]
    Fit(String),
    #[error("the scene covariance is not positive definite even after shrinkage: {0}")]
    Covariance(String),
}

/// Knobs of the verifier's training.
#[derive(Clone, Debug)]
pub struct VerifierTraining {
    /// L2 penalty of the logistic regression (on standardised features).
    pub l2_penalty: f64,
    pub max_iterations: u64,
    /// The threshold is the highest (at most 0.5) that keeps at least this
    /// share of the training split's real detections ("keep the people").
    pub min_recall: f64,
}

impl Default for VerifierTraining {
    fn default() -> Self {
        Self {
            l2_penalty: 1.0,
            max_iterations: 200,
            min_recall: 0.98,
        }
    }
}

/// A trained verifier in the form it is exported: weights on raw rows.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearVerifier {
    pub weights: Vec<f32>,
    pub bias: f32,
    /// Probability below which a detection is rejected.
    pub threshold: f32,
}

impl LinearVerifier {
    /// The probability that `row` is real, computed in f64 from the f32
    /// weights the ONNX file holds.
    pub fn probability(&self, row: &[f32]) -> f32 {
        let logit: f64 = self
            .weights
            .iter()
            .zip(row)
            .map(|(w, x)| *w as f64 * *x as f64)
            .sum::<f64>()
            + self.bias as f64;
        (1.0 / (1.0 + (-logit).exp())) as f32
    }

    pub fn to_onnx(&self) -> Vec<u8> {
        super::onnx::verifier_model(&self.weights, self.bias)
    }
}

/// The input rows of labelled detections (`verifier_input`), checked to be
/// one width.
pub fn input_rows(
    data: &[LabelledDetection],
    num_classes: usize,
) -> Result<(Vec<Vec<f32>>, Vec<bool>), TrainError> {
    let rows: Vec<Vec<f32>> = data
        .iter()
        .map(|d| verifier_input(&d.features, num_classes))
        .collect();
    check_rows(&rows)?;
    Ok((rows, data.iter().map(|d| d.real).collect()))
}

fn check_rows(rows: &[Vec<f32>]) -> Result<usize, TrainError> {
    let first = rows
        .first()
        .ok_or_else(|| TrainError::NoData("no rows".into()))?
        .len();
    for (index, r) in rows.iter().enumerate() {
        if r.len() != first {
            return Err(TrainError::RaggedRows {
                first,
                index,
                len: r.len(),
            });
        }
        if r.iter().any(|v| !v.is_finite()) {
            return Err(TrainError::NonFinite { index });
        }
    }
    Ok(first)
}

/// Fits the verifier on `rows` labelled `real`.
pub fn train_verifier(
    rows: &[Vec<f32>],
    real: &[bool],
    params: &VerifierTraining,
) -> Result<LinearVerifier, TrainError> {
    let width = check_rows(rows)?;
    if rows.len() != real.len() {
        return Err(TrainError::NoData(format!(
            "{} rows but {} labels",
            rows.len(),
            real.len()
        )));
    }
    let positives = real.iter().filter(|r| **r).count();
    if positives == 0 || positives == real.len() {
        return Err(TrainError::NoData(format!(
            "both real and false detections are needed ({positives} real of {})",
            real.len()
        )));
    }
    let n = rows.len() as f64;
    let mut mean = vec![0f64; width];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64 / n;
        }
    }
    let mut std = vec![0f64; width];
    for r in rows {
        for ((s, v), m) in std.iter_mut().zip(r).zip(&mean) {
            *s += (*v as f64 - m).powi(2) / n;
        }
    }
    // A constant column (an unused class, say) carries nothing: scale 1
    // keeps it at zero instead of dividing by zero.
    for s in &mut std {
        *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
    }
    let x = Array2::from_shape_fn((rows.len(), width), |(i, j)| {
        (rows[i][j] as f64 - mean[j]) / std[j]
    });
    let y = Array1::from_iter(real.iter().copied());
    let fitted = linfa_logistic::LogisticRegression::default()
        .alpha(params.l2_penalty)
        .max_iterations(params.max_iterations)
        .fit(&Dataset::new(x, y))
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    // linfa's probability is that of `labels().pos`, which is whichever
    // class it met first, not necessarily `true`.
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    let w = fitted.params();
    let mut bias = sign * fitted.intercept();
    let mut weights = Vec::with_capacity(width);
    for j in 0..width {
        let wj = sign * w[j] / std[j];
        bias -= wj * mean[j];
        weights.push(wj as f32);
    }
    let mut model = LinearVerifier {
        weights,
        bias: bias as f32,
        threshold: 0.5,
    };
    let real_probabilities: Vec<f32> = rows
        .iter()
        .zip(real)
        .filter(|(_, r)| **r)
        .map(|(row, _)| model.probability(row))
        .collect();
    // Never reject what the model finds more likely real than not (0.5);
    // lower the bar further when needed to keep `min_recall` of the real
    // detections. On nearly separable data the quantile alone would sit at
    // 0.99.. and drop held-out people the model is merely less sure of.
    model.threshold = threshold_keeping(&real_probabilities, params.min_recall).min(0.5);
    Ok(model)
}

/// The highest threshold that keeps at least `min_recall` of `real` (the
/// probabilities of real detections): a detection is kept when its
/// probability >= threshold.
pub fn threshold_keeping(real: &[f32], min_recall: f64) -> f32 {
    if real.is_empty() {
        return 0.5;
    }
    let mut sorted = real.to_vec();
    sorted.sort_by(f32::total_cmp);
    // The epsilon keeps 1 - 0.9 = 0.0999.. from dropping one detection fewer.
    let drop = ((1.0 - min_recall.clamp(0.0, 1.0)) * sorted.len() as f64 + 1e-9).floor() as usize;
    sorted[drop.min(sorted.len() - 1)]
}

/// Knobs of the scene model's training.
#[derive(Clone, Debug)]
pub struct SceneTraining {
    /// λ: weight of the isotropic target in the covariance shrinkage.
    pub shrinkage: f64,
    /// Quantile of the training distances the threshold starts from.
    pub threshold_quantile: f64,
    /// Factor on that quantile: normal frames beyond the quantile should not
    /// alarm; a covered or moved camera lands far beyond.
    pub threshold_margin: f64,
}

impl Default for SceneTraining {
    fn default() -> Self {
        Self {
            shrinkage: 0.1,
            threshold_quantile: 0.99,
            threshold_margin: 1.5,
        }
    }
}

/// A trained scene model as exported.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianScene {
    pub mean: Vec<f32>,
    /// Inverse of the regularised covariance, row-major `D x D`.
    pub precision: Vec<f32>,
    pub threshold: f32,
}

impl GaussianScene {
    /// Mahalanobis distance of `x`, in f64 from the exported f32 values.
    pub fn distance(&self, x: &[f32]) -> f32 {
        let d = self.mean.len();
        let c: Vec<f64> = x
            .iter()
            .zip(&self.mean)
            .map(|(v, m)| *v as f64 - *m as f64)
            .collect();
        let mut sum = 0f64;
        for j in 0..d {
            let projected: f64 = (0..d)
                .map(|i| c[i] * self.precision[i * d + j] as f64)
                .sum();
            sum += projected * c[j];
        }
        sum.max(0.0).sqrt() as f32
    }

    /// [`Self::distance`] of many frames as matrix products (training).
    pub fn distances(&self, frames: &[Vec<f32>]) -> Vec<f32> {
        let d = self.mean.len();
        let c = Array2::from_shape_fn((frames.len(), d), |(r, j)| {
            frames[r][j] as f64 - self.mean[j] as f64
        });
        let p = Array2::from_shape_fn((d, d), |(i, j)| self.precision[i * d + j] as f64);
        let projected = c.dot(&p);
        (&projected * &c)
            .sum_axis(ndarray::Axis(1))
            .iter()
            .map(|v| v.max(0.0).sqrt() as f32)
            .collect()
    }

    pub fn to_onnx(&self) -> Vec<u8> {
        super::onnx::scene_model(&self.mean, &self.precision)
    }
}

/// Mean and inverse shrunk covariance of `embeddings` (at least 2).
///
/// With `C` the centred frames (n x D), the shrunk covariance is
/// `S' = a·I + b·CᵀC` (`b = (1-λ)/(n-1)`, `a = λ·tr(S)/D + ε`). When there
/// are fewer frames than dimensions (the usual case: tens of frames,
/// 1280-d), Woodbury inverts it through an n x n matrix,
/// `S'^-1 = I/a - (b/a²)·Cᵀ(I + (b/a)·CCᵀ)^-1·C`, instead of a D x D
/// Cholesky: the same matrix, a fraction of the work.
fn fit_gaussian(
    embeddings: &[Vec<f32>],
    d: usize,
    shrinkage: f64,
) -> Result<GaussianScene, TrainError> {
    let rows = embeddings.len();
    let n = rows as f64;
    let x = Array2::from_shape_fn((rows, d), |(r, c)| embeddings[r][c] as f64);
    let mean = x.mean_axis(ndarray::Axis(0)).expect("at least 2 rows");
    let centred = &x - &mean;
    let mean_variance = centred.iter().map(|v| v * v).sum::<f64>() / (n - 1.0) / d as f64;
    let lambda = shrinkage.clamp(0.0, 1.0);
    // ε keeps a degenerate set (all frames identical) invertible.
    let floor = 1e-6 * mean_variance.max(1e-6);
    let a = lambda * mean_variance + floor;
    let b = (1.0 - lambda) / (n - 1.0);
    let precision = if rows < d {
        let mut inner = centred.dot(&centred.t()) * (b / a);
        for i in 0..rows {
            inner[(i, i)] += 1.0;
        }
        let inner_inv = inner
            .invc()
            .map_err(|e| TrainError::Covariance(e.to_string()))?;
        let mut p = centred.t().dot(&inner_inv.dot(&centred)) * (-b / (a * a));
        for i in 0..d {
            p[(i, i)] += 1.0 / a;
        }
        p
    } else {
        let mut shrunk = centred.t().dot(&centred) * b;
        for i in 0..d {
            shrunk[(i, i)] += a;
        }
        shrunk
            .invc()
            .map_err(|e| TrainError::Covariance(e.to_string()))?
    };
    Ok(GaussianScene {
        mean: mean.iter().map(|v| *v as f32).collect(),
        precision: precision.iter().map(|v| *v as f32).collect(),
        threshold: 0.0,
    })
}

/// Fits the scene model on whole-frame embeddings of normal operation.
///
/// The threshold comes from out-of-fold distances (two folds, alternate
/// frames): with fewer frames than dimensions, a frame's distance to a
/// Gaussian fitted on it is far smaller than a new normal frame's, so an
/// in-sample quantile would alarm on every new frame (measured on the
/// learning clip: every held-out frame). Each fold's model has half the
/// frames, so its distances are, if anything, larger than the final
/// model's: the threshold errs towards fewer false alarms.
pub fn train_scene(
    embeddings: &[Vec<f32>],
    params: &SceneTraining,
) -> Result<GaussianScene, TrainError> {
    let d = check_rows(embeddings)?;
    if embeddings.len() < 4 {
        return Err(TrainError::NoData("at least 4 frames are needed".into()));
    }
    let (even, odd): (Vec<_>, Vec<_>) =
        embeddings.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let even: Vec<Vec<f32>> = even.into_iter().map(|(_, e)| e.clone()).collect();
    let odd: Vec<Vec<f32>> = odd.into_iter().map(|(_, e)| e.clone()).collect();
    let mut distances = Vec::with_capacity(embeddings.len());
    for (fit, score) in [(&even, &odd), (&odd, &even)] {
        let fold = fit_gaussian(fit, d, params.shrinkage)?;
        distances.extend(fold.distances(score));
    }
    let mut model = fit_gaussian(embeddings, d, params.shrinkage)?;
    distances.sort_by(f32::total_cmp);
    let q = params.threshold_quantile.clamp(0.0, 1.0);
    let at = ((q * (distances.len() - 1) as f64).ceil() as usize).min(distances.len() - 1);
    model.threshold = (distances[at] as f64 * params.threshold_margin) as f32;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::learn::synthetic::Lcg;

    #[test]
    fn verifier_separates_and_keeps_recall() {
        let mut rng = Lcg::new(7);
        let mut rows = Vec::new();
        let mut real = Vec::new();
        for i in 0..400 {
            let is_real = i % 2 == 0;
            let x0 = rng.uniform() + if is_real { 1.0 } else { 0.0 };
            rows.push(vec![x0, rng.uniform(), 5.0]);
            real.push(is_real);
        }
        let m = train_verifier(&rows, &real, &VerifierTraining::default()).unwrap();
        let kept_real = rows
            .iter()
            .zip(&real)
            .filter(|(r, t)| **t && m.probability(r) >= m.threshold)
            .count();
        let kept_false = rows
            .iter()
            .zip(&real)
            .filter(|(r, t)| !**t && m.probability(r) >= m.threshold)
            .count();
        assert!(kept_real >= 196, "recall kept: {kept_real}/200");
        assert!(kept_false < 40, "false kept: {kept_false}/200");
        assert!(
            m.weights[0] > 0.0,
            "the real class pushes the probability up"
        );
    }

    #[test]
    fn verifier_refuses_one_class_and_ragged_rows() {
        let rows = vec![vec![1.0, 2.0], vec![1.0, 3.0]];
        assert!(matches!(
            train_verifier(&rows, &[true, true], &VerifierTraining::default()),
            Err(TrainError::NoData(_))
        ));
        let ragged = vec![vec![1.0, 2.0], vec![1.0]];
        assert!(matches!(
            train_verifier(&ragged, &[true, false], &VerifierTraining::default()),
            Err(TrainError::RaggedRows { index: 1, .. })
        ));
    }

    #[test]
    fn scene_threshold_holds_for_new_normal_frames_with_fewer_frames_than_dimensions() {
        // 40 frames of a 200-d embedding (the clip: ~45 frames, 1280-d): an
        // in-sample threshold alarmed on every new normal frame.
        let mut rng = Lcg::new(11);
        let mut frame = || -> Vec<f32> { (0..200).map(|_| rng.uniform()).collect() };
        let training: Vec<Vec<f32>> = (0..40).map(|_| frame()).collect();
        let fresh: Vec<Vec<f32>> = (0..40).map(|_| frame()).collect();
        let m = train_scene(&training, &SceneTraining::default()).unwrap();
        let alarms = fresh
            .iter()
            .filter(|f| m.distance(f) >= m.threshold)
            .count();
        assert_eq!(alarms, 0, "new normal frames stay below the threshold");
        for (one, batch) in fresh.iter().zip(m.distances(&fresh)) {
            assert!((m.distance(one) - batch).abs() <= 1e-4 * batch.max(1.0));
        }
        let covered = vec![3.0f32; 200];
        assert!(m.distance(&covered) > 2.0 * m.threshold);
    }

    #[test]
    fn woodbury_precision_is_the_inverse_of_the_shrunk_covariance() {
        // 5 frames of 12-d: the n x n path; P·S' must be the identity.
        let mut rng = Lcg::new(5);
        let frames: Vec<Vec<f32>> = (0..5)
            .map(|_| (0..12).map(|_| rng.uniform()).collect())
            .collect();
        let m = fit_gaussian(&frames, 12, 0.1).unwrap();
        let x = Array2::from_shape_fn((5, 12), |(r, c)| frames[r][c] as f64);
        let centred = &x - &x.mean_axis(ndarray::Axis(0)).unwrap();
        let cov = centred.t().dot(&centred) / 4.0;
        let mean_variance = (0..12).map(|i| cov[(i, i)]).sum::<f64>() / 12.0;
        let mut shrunk = cov * 0.9;
        for i in 0..12 {
            shrunk[(i, i)] += 0.1 * mean_variance + 1e-6 * mean_variance;
        }
        let p = Array2::from_shape_fn((12, 12), |(i, j)| m.precision[i * 12 + j] as f64);
        let eye = p.dot(&shrunk);
        for i in 0..12 {
            for j in 0..12 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (eye[(i, j)] - want).abs() < 1e-4,
                    "({i},{j}) {}",
                    eye[(i, j)]
                );
            }
        }
    }

    #[test]
    fn scene_distance_is_small_inside_and_large_outside() {
        let mut rng = Lcg::new(3);
        let frames: Vec<Vec<f32>> = (0..300)
            .map(|_| (0..8).map(|_| rng.uniform()).collect())
            .collect();
        let m = train_scene(&frames, &SceneTraining::default()).unwrap();
        let inside = frames
            .iter()
            .filter(|f| m.distance(f) >= m.threshold)
            .count();
        assert_eq!(inside, 0, "no training frame alarms");
        let covered = vec![5.0f32; 8];
        assert!(m.distance(&covered) > 2.0 * m.threshold);
    }

    #[test]
    fn threshold_keeps_the_asked_share() {
        let p: Vec<f32> = (0..100).map(|i| i as f32 / 100.0).collect();
        assert_eq!(threshold_keeping(&p, 0.9), 0.1);
        assert_eq!(threshold_keeping(&p, 1.0), 0.0);
    }
}
