//! One training run and the promotion gate, shared by `camfleet-collector
//! train`, `model promote` and (via the same functions) the schedule:
//! data -> split -> fit -> ONNX -> load on ONNX Runtime -> shadow
//! evaluation against the model in force -> registry version -> `current`
//! only if the candidate is better (docs/learning.md).

use super::evaluate::{self, GateRules, LiveDecision, LiveLabel, OperatingPoint, ShadowReport};
use super::features::{verifier_input, LabelSource, LabelledDetection, FEATURE_LAYOUT_VERSION};
use super::manifest::{ModelKind, ModelManifest};
use super::onnx;
use super::registry::{ModelName, Registry, RegistryError, VersionFiles};
use super::runtime::{LoadError, OrtSceneModel, OrtVerifier};
use super::train::{self, SceneTraining, TrainError, VerifierTraining};
use crate::archive::Archive;
use camfleet_shared::config::LearningConfig;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Dataset(#[from] super::dataset::DatasetError),
    #[error("{0}")]
    Model(#[from] super::model::ModelError),
    #[error("{name} {version} is not better than the model in force: {reason} (add --force to promote anyway)")]
    NotBetter {
        name: String,
        version: String,
        reason: String,
    },
}

/// A trained, checked candidate, not yet in the registry.
pub struct Candidate {
    pub name: ModelName,
    pub files: VersionFiles,
    /// Whether the gate says it may be promoted.
    pub better: bool,
    pub reason: String,
}

impl Candidate {
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &ModelName,
        onnx: Vec<u8>,
        manifest_toml: String,
        metrics: &serde_json::Value,
        training_data: &serde_json::Value,
        better: bool,
        reason: String,
    ) -> Self {
        // A `Value` always serialises.
        let json = |v: &serde_json::Value| serde_json::to_string_pretty(v).expect("json");
        Self {
            name: name.clone(),
            files: VersionFiles {
                onnx: onnx.into(),
                manifest_toml,
                metrics_json: json(metrics),
                training_data_json: json(training_data),
            },
            better,
            reason,
        }
    }
}

fn gate_rules(cfg: &LearningConfig) -> GateRules {
    GateRules {
        min_labels: cfg.min_labels,
        recall_tolerance: cfg.recall_tolerance,
        min_precision_gain: cfg.min_precision_gain,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Whether labelled detection `d` is for model `name` (its camera, or any
/// camera of its site for a per-site verifier).
pub fn covers(name: &ModelName, camera: &str) -> bool {
    match camera.split_once('/') {
        Some((site, cam)) => site == name.site && name.camera.as_deref().is_none_or(|c| c == cam),
        None => false,
    }
}

/// The baseline on the held-out rows: the verifier in force, or the
/// detector alone when there is none (or it cannot score these rows).
async fn baseline<A: Archive>(
    registry: &Registry<A>,
    name: &ModelName,
    rows: &[Vec<f32>],
    real: &[bool],
    ort: Option<&Path>,
) -> Result<OperatingPoint, LearnError> {
    let Some(pointer) = registry.current(name).await? else {
        return Ok(OperatingPoint::detector_alone(real));
    };
    let files = registry.read_version(name, &pointer.version).await?;
    let label = format!("{name} {}", pointer.version);
    match OrtVerifier::load(
        &name.to_string(),
        &pointer.version,
        &files.manifest_toml,
        &files.onnx,
        ort,
    ) {
        Ok(current) => {
            use super::model::Verifier;
            match current.probabilities(rows) {
                Ok(p) => Ok(OperatingPoint::measure(
                    &label,
                    current.threshold(),
                    &p,
                    real,
                )),
                Err(e) => {
                    tracing::warn!("{label} cannot score the new rows ({e}); comparing with the detector alone");
                    Ok(OperatingPoint::detector_alone(real))
                }
            }
        }
        Err(e) => {
            tracing::warn!("{label} does not load ({e}); comparing with the detector alone");
            Ok(OperatingPoint::detector_alone(real))
        }
    }
}

/// The shadow evaluation of a loaded verifier on `holdout`.
pub async fn shadow_verifier<A: Archive>(
    registry: &Registry<A>,
    cfg: &LearningConfig,
    name: &ModelName,
    candidate: &OrtVerifier,
    holdout: &[LabelledDetection],
    ort: Option<&Path>,
) -> Result<ShadowReport, LearnError> {
    use super::model::Verifier;
    let rows: Vec<Vec<f32>> = holdout
        .iter()
        .map(|d| verifier_input(&d.features, candidate.num_classes()))
        .collect();
    let real: Vec<bool> = holdout.iter().map(|d| d.real).collect();
    let probabilities = candidate.probabilities(&rows)?;
    let cand = OperatingPoint::measure(
        &format!("{} {}", candidate.name(), candidate.version()),
        candidate.threshold(),
        &probabilities,
        &real,
    );
    let base = baseline(registry, name, &rows, &real, ort).await?;
    Ok(evaluate::judge(&gate_rules(cfg), cand, base, &real))
}

/// Trains a verifier for `name` on `data` (already the labels of its
/// cameras) and judges it against the model in force.
pub async fn verifier_candidate<A: Archive>(
    registry: &Registry<A>,
    cfg: &LearningConfig,
    name: &ModelName,
    data: &[LabelledDetection],
    ort: Option<&Path>,
) -> Result<Candidate, LearnError> {
    let data: Vec<LabelledDetection> = data
        .iter()
        .filter(|d| covers(name, &d.features.camera))
        .cloned()
        .collect();
    let (training, holdout) = evaluate::split(&data, cfg.holdout_fraction);
    let started = Instant::now();
    let (rows, real) = train::input_rows(&training, cfg.num_classes)?;
    let params = VerifierTraining {
        min_recall: cfg.target_recall,
        ..Default::default()
    };
    let model = train::train_verifier(&rows, &real, &params)?;
    let training_seconds = started.elapsed().as_secs_f64();
    let embedding_dim = rows[0].len() - 7 - cfg.num_classes;
    let manifest = ModelManifest {
        kind: ModelKind::Verifier,
        feature_layout_version: FEATURE_LAYOUT_VERSION,
        num_classes: cfg.num_classes,
        embedding_dim,
        input_name: onnx::VERIFIER_INPUT.into(),
        input_width: rows[0].len(),
        output_name: onnx::VERIFIER_OUTPUT.into(),
        threshold: model.threshold,
        trained_by: format!("camfleet-collector {}", env!("CARGO_PKG_VERSION")),
        created_utc: now(),
    };
    let onnx_bytes = model.to_onnx();
    let manifest_toml = manifest.to_toml();
    let loaded = OrtVerifier::load(
        &name.to_string(),
        "candidate",
        &manifest_toml,
        &onnx_bytes,
        ort,
    )?;
    let shadow = shadow_verifier(registry, cfg, name, &loaded, &holdout, ort).await?;
    let count = |f: &dyn Fn(&LabelledDetection) -> bool| training.iter().filter(|d| f(d)).count();
    let metrics = json!({
        "kind": "verifier",
        "training": {
            "labels": training.len(),
            "real": count(&|d| d.real),
            "false": count(&|d| !d.real),
            "from_ops": count(&|d| d.source == LabelSource::Ops),
            "from_stillness": count(&|d| d.source == LabelSource::Stillness),
            "seconds": training_seconds,
            "threshold": model.threshold,
            "target_recall": cfg.target_recall,
        },
        "shadow": shadow,
    });
    let mut ids: Vec<&str> = data
        .iter()
        .map(|d| d.features.detection_id.as_str())
        .collect();
    ids.sort_unstable();
    let mut cameras: Vec<&str> = data.iter().map(|d| d.features.camera.as_str()).collect();
    cameras.sort_unstable();
    cameras.dedup();
    let training_data = json!({
        "cameras": cameras,
        "labels": data.len(),
        "holdout_fraction": cfg.holdout_fraction,
        "holdout_labels": holdout.len(),
        "from_capture_us": data.iter().map(|d| d.features.capture_us).min(),
        "to_capture_us": data.iter().map(|d| d.features.capture_us).max(),
        "detection_ids_sha256": format!("{:x}", Sha256::digest(ids.join("\n"))),
        "feature_layout_version": FEATURE_LAYOUT_VERSION,
    });
    Ok(Candidate::new(
        name,
        onnx_bytes,
        manifest_toml,
        &metrics,
        &training_data,
        shadow.better,
        shadow.reason,
    ))
}

/// Trains a scene model on one camera's whole-frame embeddings; every
/// `1/holdout_fraction`-th frame (by time) is held out.
pub fn scene_candidate(
    cfg: &LearningConfig,
    name: &ModelName,
    frames: &[(i64, Vec<f32>)],
    ort: Option<&Path>,
) -> Result<Candidate, LearnError> {
    let mut frames = frames.to_vec();
    frames.sort_by_key(|f| f.0);
    let every = (1.0 / cfg.holdout_fraction).round().max(2.0) as usize;
    let (mut training, mut holdout) = (Vec::new(), Vec::new());
    for (i, f) in frames.iter().enumerate() {
        if i % every == every - 1 {
            holdout.push(f.1.clone());
        } else {
            training.push(f.1.clone());
        }
    }
    let started = Instant::now();
    let params = SceneTraining {
        threshold_quantile: cfg.scene_threshold_quantile,
        threshold_margin: cfg.scene_threshold_margin,
        ..Default::default()
    };
    let model = train::train_scene(&training, &params)?;
    let seconds = started.elapsed().as_secs_f64();
    let d = model.mean.len();
    let manifest = ModelManifest {
        kind: ModelKind::Scene,
        feature_layout_version: FEATURE_LAYOUT_VERSION,
        num_classes: 0,
        embedding_dim: d,
        input_name: onnx::SCENE_INPUT.into(),
        input_width: d,
        output_name: onnx::SCENE_OUTPUT.into(),
        threshold: model.threshold,
        trained_by: format!("camfleet-collector {}", env!("CARGO_PKG_VERSION")),
        created_utc: now(),
    };
    let onnx_bytes = model.to_onnx();
    let manifest_toml = manifest.to_toml();
    let loaded = OrtSceneModel::load(
        &name.to_string(),
        "candidate",
        &manifest_toml,
        &onnx_bytes,
        ort,
    )?;
    let distances = if holdout.is_empty() {
        Vec::new()
    } else {
        loaded.distances(&holdout)?
    };
    let report = evaluate::judge_scene(
        &distances,
        model.threshold,
        cfg.min_labels,
        cfg.scene_max_false_alarm_rate,
    );
    let metrics = json!({
        "kind": "scene",
        "training": { "frames": training.len(), "seconds": seconds, "threshold": model.threshold,
                      "threshold_quantile": cfg.scene_threshold_quantile,
                      "threshold_margin": cfg.scene_threshold_margin },
        "shadow": report,
    });
    let training_data = json!({
        "frames": frames.len(),
        "holdout_frames": holdout.len(),
        "from_capture_us": frames.first().map(|f| f.0),
        "to_capture_us": frames.last().map(|f| f.0),
        "feature_layout_version": FEATURE_LAYOUT_VERSION,
    });
    Ok(Candidate::new(
        name,
        onnx_bytes,
        manifest_toml,
        &metrics,
        &training_data,
        report.better,
        report.reason,
    ))
}

/// Loads a registry version the way every collector will (manifest checks,
/// ONNX Runtime, probe run): the check `model promote` and `model import`
/// make before anything changes.
pub fn check_loads(
    name: &ModelName,
    version: &str,
    files: &VersionFiles,
    ort: Option<&Path>,
) -> Result<(), LoadError> {
    let n = name.to_string();
    match name.kind {
        ModelKind::Verifier => {
            OrtVerifier::load(&n, version, &files.manifest_toml, &files.onnx, ort).map(drop)
        }
        ModelKind::Scene => {
            OrtSceneModel::load(&n, version, &files.manifest_toml, &files.onnx, ort).map(drop)
        }
    }
}

/// `model promote`: load check, then the gate (a fresh shadow evaluation on
/// `labels` when given, else the one in metrics.json), then `current`.
pub async fn promote<A: Archive>(
    registry: &Registry<A>,
    cfg: &LearningConfig,
    name: &ModelName,
    version: &str,
    labels: Option<&[LabelledDetection]>,
    force: bool,
    ort: Option<&Path>,
) -> Result<super::registry::CurrentPointer, LearnError> {
    let files = registry.read_version(name, version).await?;
    check_loads(name, version, &files, ort)?;
    let (better, reason) = match (labels, name.kind) {
        (Some(labels), ModelKind::Verifier) => {
            let v = OrtVerifier::load(
                &name.to_string(),
                version,
                &files.manifest_toml,
                &files.onnx,
                ort,
            )?;
            let mine: Vec<LabelledDetection> = labels
                .iter()
                .filter(|d| covers(name, &d.features.camera))
                .cloned()
                .collect();
            let (_, holdout) = evaluate::split(&mine, cfg.holdout_fraction);
            let report = shadow_verifier(registry, cfg, name, &v, &holdout, ort).await?;
            let mut metrics: serde_json::Value =
                serde_json::from_str(&files.metrics_json).unwrap_or_else(|_| json!({}));
            if !metrics.is_object() {
                metrics = json!({});
            }
            metrics["shadow"] = serde_json::to_value(&report).expect("json");
            registry
                .put_metrics(
                    name,
                    version,
                    &serde_json::to_string_pretty(&metrics).expect("json"),
                )
                .await?;
            (report.better, report.reason)
        }
        _ => {
            let metrics: serde_json::Value =
                serde_json::from_str(&files.metrics_json).unwrap_or_else(|_| json!({}));
            match metrics["shadow"]["better"].as_bool() {
                Some(b) => (
                    b,
                    metrics["shadow"]["reason"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
                None => (
                    false,
                    "metrics.json has no shadow evaluation (pass --labels to run one)".into(),
                ),
            }
        }
    };
    if !better && !force {
        return Err(LearnError::NotBetter {
            name: name.to_string(),
            version: version.into(),
            reason,
        });
    }
    Ok(registry.set_current(name, version).await?)
}

/// The live gate of `name`'s candidate in shadow, if it has one
/// (docs/learning.md "Live shadow"): its live labels against the verdicts of
/// the verifier in force on the same detections, by the held-out gate's
/// rules and metric with `shadow_min_labels`. On a decision the report goes
/// to the candidate's metrics.json under `live`, then a win moves `current`
/// (after the same load check as `model promote`) and the shadow ends.
///
/// Crash safety: each step is one atomic file replace, and the gate is
/// re-run from the tables on the next check: a crash after `current` moved
/// but before the shadow ended finds shadow == current and just ends it; a
/// crash before `current` moved decides again.
pub async fn live_gate<A: Archive>(
    registry: &Registry<A>,
    cfg: &LearningConfig,
    name: &ModelName,
    ort: Option<&Path>,
) -> Result<Option<(LiveDecision, String)>, LearnError> {
    let Some(shadow) = registry.shadow(name).await? else {
        return Ok(None);
    };
    let version = shadow.version.as_str();
    let current = registry.current(name).await?;
    if current.as_ref().is_some_and(|c| c.version == version) {
        registry.clear_shadow(name).await?;
        return Ok(Some((
            LiveDecision::Promote,
            format!("{name} {version}: shadow ended, it is current"),
        )));
    }
    let files = registry.read_version(name, version).await?;
    let threshold = ModelManifest::from_toml(&files.manifest_toml)
        .map(|m| m.threshold)
        .unwrap_or(f32::NAN);
    let camera = match &name.camera {
        Some(c) => Some(
            camfleet_shared::CameraId::new(&format!("{}/{c}", name.site)).map_err(|e| {
                RegistryError::BadName {
                    name: name.to_string(),
                    reason: e.to_string(),
                }
            })?,
        ),
        None => None,
    };
    let rows = super::dataset::load_shadow_labelled(
        registry.archive(),
        camera.as_ref(),
        Some(shadow.since_us),
        &name.to_string(),
        version,
    )
    .await?;
    let labels: Vec<LiveLabel> = rows
        .iter()
        .filter(|(d, _)| covers(name, &d.camera))
        .map(|(d, real)| LiveLabel {
            shadow_kept: d.shadow.as_ref().is_some_and(|s| !s.rejected),
            current_kept: d.verifier.as_ref().map(|v| !v.rejected),
            real: *real,
        })
        .collect();
    let baseline = match &current {
        Some(c) => format!("{name} {} (live verdicts)", c.version),
        None => "detector alone".to_string(),
    };
    let shadow_s =
        ((chrono::Utc::now().timestamp_micros() - shadow.since_us).max(0) / 1_000_000) as u64;
    let rules = GateRules {
        min_labels: cfg.shadow_min_labels,
        ..gate_rules(cfg)
    };
    let live = evaluate::judge_live(
        &rules,
        &format!("{name} {version}"),
        threshold,
        &baseline,
        &labels,
        shadow_s,
        cfg.shadow_max_s,
    );
    let reason = live.report.reason.clone();
    if live.decision == LiveDecision::Wait {
        return Ok(Some((
            LiveDecision::Wait,
            format!("{name} {version}: in shadow: {reason}"),
        )));
    }
    let mut metrics: serde_json::Value =
        serde_json::from_str(&files.metrics_json).unwrap_or_else(|_| json!({}));
    if !metrics.is_object() {
        metrics = json!({});
    }
    metrics["live"] = serde_json::to_value(&live).expect("json");
    registry
        .put_metrics(
            name,
            version,
            &serde_json::to_string_pretty(&metrics).expect("json"),
        )
        .await?;
    let (decision, line) = if live.decision == LiveDecision::Reject {
        (
            LiveDecision::Reject,
            format!("{name} {version}: rejected in shadow: {reason}"),
        )
    } else if let Err(e) = check_loads(name, version, &files, ort) {
        (
            LiveDecision::Reject,
            format!(
                "{name} {version}: rejected in shadow: it won ({reason}) but does not load: {e}"
            ),
        )
    } else {
        registry.set_current(name, version).await?;
        (
            LiveDecision::Promote,
            format!("{name} {version}: promoted: live shadow: {reason}"),
        )
    };
    registry.clear_shadow(name).await?;
    Ok(Some((decision, line)))
}
