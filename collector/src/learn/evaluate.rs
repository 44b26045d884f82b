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
        let kept: Vec<bool> = probabilities.iter().map(|p| *p >= threshold).collect();
        Self::from_kept(model, threshold, &kept, real)
    }

    /// The one metric: what a model kept (`kept[i]`) of labelled detections
    /// (`real[i]`). Held-out scoring and live shadow verdicts both end here.
    pub fn from_kept(model: &str, threshold: f32, kept: &[bool], real: &[bool]) -> Self {
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
        for (kept, is_real) in kept.iter().zip(real) {
            match (*kept, *is_real) {
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
    judge_on(rules, candidate, baseline, real, "held-out")
}

/// [`judge`] on labels from `sample` (`held-out` or `live`), for the words.
pub fn judge_on(
    rules: &GateRules,
    candidate: OperatingPoint,
    baseline: OperatingPoint,
    real: &[bool],
    sample: &str,
) -> ShadowReport {
    let holdout_real = real.iter().filter(|r| **r).count();
    let labels = real.len();
    let (better, reason) = if labels < rules.min_labels {
        (
            false,
            format!(
                "only {labels} {sample} labels, at least {} are needed",
                rules.min_labels
            ),
        )
    } else if holdout_real == 0 || holdout_real == labels {
        (
            false,
            format!("the {sample} labels need both real and false detections"),
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
                "precision {:.3} vs {:.3} at recall {:.3} vs {:.3} on {labels} {sample} labels",
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

/// One live label of a detection the shadow scored: both verdicts as the
/// inference processor recorded them, and the label (ops winning).
#[derive(Clone, Debug, PartialEq)]
pub struct LiveLabel {
    /// The shadow's verdict: kept (not rejected)?
    pub shadow_kept: bool,
    /// The verdict of the verifier then in force; `None`: there was none,
    /// the detector alone kept it.
    pub current_kept: Option<bool>,
    pub real: bool,
}

/// What the live gate decided.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LiveDecision {
    /// Better on enough live labels: becomes `current`.
    Promote,
    /// Not better on enough live labels, or too few within `shadow_max_s`.
    Reject,
    /// Fewer than `min_labels` live labels so far: keep shadowing.
    Wait,
}

/// The live half of the shadow evaluation, kept in metrics.json under
/// `live` and printed by `model show`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LiveReport {
    pub decision: LiveDecision,
    /// Seconds the candidate has been in shadow.
    pub shadow_s: u64,
    pub max_shadow_s: u64,
    pub report: ShadowReport,
}

/// The live gate: the same rules and metric as the held-out gate, on the
/// live labels of detections both models scored. Promotes when better on at
/// least `rules.min_labels` live labels (with both classes); rejects when
/// not better on that many, or when `shadow_s` exceeded `max_shadow_s`
/// first; waits otherwise.
pub fn judge_live(
    rules: &GateRules,
    candidate: &str,
    candidate_threshold: f32,
    baseline: &str,
    labels: &[LiveLabel],
    shadow_s: u64,
    max_shadow_s: u64,
) -> LiveReport {
    let real: Vec<bool> = labels.iter().map(|l| l.real).collect();
    let cand_kept: Vec<bool> = labels.iter().map(|l| l.shadow_kept).collect();
    let base_kept: Vec<bool> = labels
        .iter()
        .map(|l| l.current_kept.unwrap_or(true))
        .collect();
    let report = judge_on(
        rules,
        OperatingPoint::from_kept(candidate, candidate_threshold, &cand_kept, &real),
        OperatingPoint::from_kept(baseline, 0.0, &base_kept, &real),
        &real,
        "live",
    );
    // Enough to decide: the count, and both classes (stillness labels of a
    // poster tend to arrive before ops say anything is real).
    let enough = labels.len() >= rules.min_labels
        && report.holdout_real > 0
        && report.holdout_real < labels.len();
    let decision = match (report.better, enough, shadow_s > max_shadow_s) {
        (true, _, _) => LiveDecision::Promote,
        (false, true, _) | (false, false, true) => LiveDecision::Reject,
        (false, false, false) => LiveDecision::Wait,
    };
    let mut report = report;
    if decision == LiveDecision::Reject && !enough {
        report.reason = format!(
            "{} after {shadow_s} s in shadow (the limit is {max_shadow_s} s)",
            report.reason
        );
    }
    LiveReport {
        decision,
        shadow_s,
        max_shadow_s,
        report,
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

    fn live(shadow_kept: bool, current_kept: Option<bool>, real: bool, n: usize) -> Vec<LiveLabel> {
        vec![
            LiveLabel {
                shadow_kept,
                current_kept,
                real
            };
            n
        ]
    }

    #[test]
    fn live_gate_promotes_rejects_or_waits_by_the_held_out_rules() {
        let rules = GateRules {
            min_labels: 10,
            recall_tolerance: 0.05,
            min_precision_gain: 0.0,
        };
        // The shadow rejects the poster (false) and keeps the walker (real);
        // the detector alone kept both.
        let mut good = live(true, None, true, 6);
        good.extend(live(false, None, false, 6));
        let r = judge_live(&rules, "v 2", 0.4, "detector alone", &good, 30, 3600);
        assert_eq!(r.decision, LiveDecision::Promote, "{}", r.report.reason);
        assert_eq!(
            (r.report.candidate.precision, r.report.baseline.precision),
            (1.0, 0.5)
        );
        assert!(
            r.report.reason.contains("12 live labels"),
            "{}",
            r.report.reason
        );
        // Too few live labels: wait, and reject once the shadow ran too long.
        let few = &good[..4];
        let r = judge_live(&rules, "v 2", 0.4, "detector alone", few, 30, 3600);
        assert_eq!(r.decision, LiveDecision::Wait, "{}", r.report.reason);
        let r = judge_live(&rules, "v 2", 0.4, "detector alone", few, 3601, 3600);
        assert_eq!(r.decision, LiveDecision::Reject);
        assert!(
            r.report.reason.contains("3601 s in shadow"),
            "{}",
            r.report.reason
        );
        // A shadow that loses the walker, against a current verifier that
        // kept it and already rejected the poster: rejected on enough labels.
        let mut lossy = live(false, Some(true), true, 6);
        lossy.extend(live(false, Some(false), false, 6));
        let r = judge_live(&rules, "v 3", 0.4, "v 2", &lossy, 30, 3600);
        assert_eq!(r.decision, LiveDecision::Reject);
        assert!(r.report.reason.contains("recall"), "{}", r.report.reason);
        // Labels of one class only (stillness on the poster): keep waiting.
        let one_class = live(false, None, false, 20);
        let r = judge_live(&rules, "v 2", 0.4, "detector alone", &one_class, 30, 3600);
        assert_eq!(r.decision, LiveDecision::Wait, "{}", r.report.reason);
        // Equal to the current one is not better.
        let mut same = live(true, Some(true), true, 6);
        same.extend(live(false, Some(false), false, 6));
        let r = judge_live(&rules, "v 3", 0.4, "v 2", &same, 30, 3600);
        assert_eq!(r.decision, LiveDecision::Reject);
        assert!(r.report.reason.contains("precision"), "{}", r.report.reason);
    }

    #[test]
    fn holdout_is_deterministic_and_about_the_fraction() {
        let ids: Vec<String> = (0..2000).map(|i| format!("s/c:1:{i}:0")).collect();
        let n = ids.iter().filter(|i| is_holdout(i, 0.25)).count();
        assert!((400..600).contains(&n), "{n}");
        assert_eq!(is_holdout(&ids[7], 0.25), is_holdout(&ids[7], 0.25));
    }
}
