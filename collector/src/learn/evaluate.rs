//! Shadow evaluation: is a candidate better than what is in force?
//!
//! Verifier metric (docs/learning.md): on a held-out labelled split, the
//! candidate and the baseline (the current verifier, or the detector alone,
//! which keeps every detection) each keep the detections at or above their
//! own threshold. The candidate wins when
//! 1. the split has at least `min_labels` labels, with both classes;
//! 2. its recall is at least the baseline's minus `recall_tolerance`
//!    (it does not lose the real detections the baseline keeps); and
//! 3. its precision exceeds the baseline's by more than `min_precision_gain`.
//!
//! The split is by a hash of the detection id, so it is the same on every
//! run and machine for the same labels, and no detection is in both.

use super::features::LabelledDetection;
use serde::{Deserialize, Serialize};

/// Deterministic: FNV-1a of the id decides, so relabelling a detection
/// never moves it between the splits.
pub fn is_holdout(detection_id: &str, holdout_fraction: f64) -> bool {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in detection_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % 10_000) as f64 / 10_000.0 < holdout_fraction
}

/// (training, held-out) split of labelled detections.
pub fn split(
    data: &[LabelledDetection],
    holdout_fraction: f64,
) -> (Vec<LabelledDetection>, Vec<LabelledDetection>) {
    data.iter()
        .cloned()
        .partition(|d| !is_holdout(&d.features.detection_id, holdout_fraction))
}

/// The rules of the promotion gate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateRules {
    pub min_labels: usize,
    pub recall_tolerance: f64,
    pub min_precision_gain: f64,
}

/// What one model keeps of the held-out split.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OperatingPoint {
    /// `detector alone` or `<name> <version>`.
    pub model: String,
    pub threshold: f32,
    pub kept_real: usize,
    pub kept_false: usize,
    pub rejected_real: usize,
    pub rejected_false: usize,
    /// kept_real / (kept_real + kept_false); 0 when nothing is kept.
    pub precision: f64,
    /// kept_real / all real; 0 when there are none.
    pub recall: f64,
}

impl OperatingPoint {
    pub fn measure(model: &str, threshold: f32, probabilities: &[f32], real: &[bool]) -> Self {
        let mut p = Self {
            model: model.into(),
            threshold,
            kept_real: 0,
            kept_false: 0,
            rejected_real: 0,
            rejected_false: 0,
            precision: 0.0,
            recall: 0.0,
        };
        for (prob, is_real) in probabilities.iter().zip(real) {
            match (*prob >= threshold, *is_real) {
                (true, true) => p.kept_real += 1,
                (true, false) => p.kept_false += 1,
                (false, true) => p.rejected_real += 1,
                (false, false) => p.rejected_false += 1,
            }
        }
        let kept = p.kept_real + p.kept_false;
        let all_real = p.kept_real + p.rejected_real;
        p.precision = if kept > 0 {
            p.kept_real as f64 / kept as f64
        } else {
            0.0
        };
        p.recall = if all_real > 0 {
            p.kept_real as f64 / all_real as f64
        } else {
            0.0
        };
        p
    }

    /// The detector alone keeps everything.
    pub fn detector_alone(real: &[bool]) -> Self {
        Self::measure("detector alone", 0.0, &vec![1.0; real.len()], real)
    }
}

/// The verdict, kept in metrics.json and printed by `model show`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShadowReport {
    pub holdout_labels: usize,
    pub holdout_real: usize,
    pub rules: GateRules,
    pub baseline: OperatingPoint,
    pub candidate: OperatingPoint,
    pub better: bool,
    /// Why, in words.
    pub reason: String,
}

pub fn judge(
    rules: &GateRules,
    candidate: OperatingPoint,
    baseline: OperatingPoint,
    real: &[bool],
) -> ShadowReport {
    let holdout_real = real.iter().filter(|r| **r).count();
    let labels = real.len();
    let (better, reason) = if labels < rules.min_labels {
        (
            false,
            format!(
                "only {labels} held-out labels, at least {} are needed",
                rules.min_labels
            ),
        )
    } else if holdout_real == 0 || holdout_real == labels {
        (
            false,
            "the held-out labels need both real and false detections".into(),
        )
    } else if candidate.recall + rules.recall_tolerance < baseline.recall {
        (
            false,
            format!(
                "recall {:.3} is below the baseline's {:.3} by more than the tolerance {}",
                candidate.recall, baseline.recall, rules.recall_tolerance
            ),
        )
    } else if candidate.precision <= baseline.precision + rules.min_precision_gain {
        (
            false,
            format!(
                "precision {:.3} does not beat the baseline's {:.3} by more than {}",
                candidate.precision, baseline.precision, rules.min_precision_gain
            ),
        )
    } else {
        (
            true,
            format!(
                "precision {:.3} vs {:.3} at recall {:.3} vs {:.3} on {labels} held-out labels",
                candidate.precision, baseline.precision, candidate.recall, baseline.recall
            ),
        )
    };
    ShadowReport {
        holdout_labels: labels,
        holdout_real,
        rules: rules.clone(),
        baseline,
        candidate,
        better,
        reason,
    }
}

/// The scene model's gate: held-out normal frames must rarely alarm.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SceneReport {
    pub holdout_frames: usize,
    pub false_alarms: usize,
    pub false_alarm_rate: f64,
    pub max_false_alarm_rate: f64,
    pub threshold: f32,
    pub better: bool,
    pub reason: String,
}

pub fn judge_scene(
    distances: &[f32],
    threshold: f32,
    min_frames: usize,
    max_false_alarm_rate: f64,
) -> SceneReport {
    let false_alarms = distances.iter().filter(|d| **d >= threshold).count();
    let rate = if distances.is_empty() {
        1.0
    } else {
        false_alarms as f64 / distances.len() as f64
    };
    let (better, reason) = if distances.len() < min_frames {
        (
            false,
            format!(
                "only {} held-out frames, at least {min_frames} are needed",
                distances.len()
            ),
        )
    } else if rate > max_false_alarm_rate {
        (
            false,
            format!("false alarm rate {rate:.4} above {max_false_alarm_rate}"),
        )
    } else {
        (
            true,
            format!(
                "false alarm rate {rate:.4} on {} held-out frames",
                distances.len()
            ),
        )
    };
    SceneReport {
        holdout_frames: distances.len(),
        false_alarms,
        false_alarm_rate: rate,
        max_false_alarm_rate,
        threshold,
        better,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> GateRules {
        GateRules {
            min_labels: 4,
            recall_tolerance: 0.05,
            min_precision_gain: 0.0,
        }
    }

    #[test]
    fn better_precision_at_kept_recall_wins() {
        let real = [true, true, false, false, false];
        let base = OperatingPoint::detector_alone(&real);
        assert_eq!((base.precision, base.recall), (0.4, 1.0));
        let cand = OperatingPoint::measure("c", 0.5, &[0.9, 0.8, 0.1, 0.6, 0.2], &real);
        assert_eq!((cand.kept_real, cand.kept_false), (2, 1));
        let r = judge(&rules(), cand, base.clone(), &real);
        assert!(r.better, "{}", r.reason);
        // Losing a real detection is not allowed, however precise.
        let lossy = OperatingPoint::measure("c", 0.5, &[0.9, 0.1, 0.1, 0.1, 0.1], &real);
        let r = judge(&rules(), lossy, base.clone(), &real);
        assert!(!r.better && r.reason.contains("recall"), "{}", r.reason);
        // Too few labels decide nothing.
        let few = GateRules {
            min_labels: 50,
            ..rules()
        };
        let cand = OperatingPoint::measure("c", 0.5, &[0.9, 0.8, 0.1, 0.1, 0.1], &real);
        let r = judge(&few, cand, base, &real);
        assert!(
            !r.better && r.reason.contains("at least 50"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn holdout_is_deterministic_and_about_the_fraction() {
        let ids: Vec<String> = (0..2000).map(|i| format!("s/c:1:{i}:0")).collect();
        let n = ids.iter().filter(|i| is_holdout(i, 0.25)).count();
        assert!((400..600).contains(&n), "{n}");
        assert_eq!(is_holdout(&ids[7], 0.25), is_holdout(&ids[7], 0.25));
    }
}
