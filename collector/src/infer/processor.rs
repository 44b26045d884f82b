//! The inference processor: decodes each camera's video (only as far as
//! sampling needs), runs the detector on sampled pictures, publishes one
//! detection record per inferred picture and the per-camera events.
//!
//! * Lossy: when it falls behind, frames are skipped (counted per camera)
//!   and that camera's decoder waits for the next IDR, so lag never grows.
//! * A frame is finished once its detection record and events are
//!   acknowledged by Kafka; a failed publish is retried without decoding or
//!   inferring the frame again (the pending records are kept).
//! * Decoding and inference run on the processor's task with
//!   `block_in_place`: CPU work, off the async workers' hot path.

use super::decode::{Decoded, StreamDecoder};
use super::record::{
    BoxNorm, DetectionRecord, EventRecord, ModelRef, Object, DETECTIONS_SCHEMA, EVENTS_SCHEMA,
};
use super::state::{CameraState, Event, EventKind, Observation, Phase, PictureStats};
use crate::consume;
use crate::detect::{DetectError, Detector, DetectorOptions};
use crate::fanout::{Delivery, Frame, ProcessFuture, Processor, ProcessorError};
use crate::learn::embed::{EmbedError, Embedder};
use crate::learn::features::{detection_id, verifier_input};
use crate::learn::model::{ModelSource, NoModels};
use crate::learn::record::{FeatureObject, FeatureRecord, ModelName, Verdict, FEATURES_SCHEMA};
use crate::learn::scene::{SceneKind, SceneTransition, SceneWatch};
use camfleet_shared::config::{CollectorKafkaConfig, InferenceConfig};
use camfleet_shared::CameraId;
use metrics::{Counter, Histogram};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("inference model")]
    Model(#[from] DetectError),
    #[error("inference producer: {0}")]
    Kafka(String),
    #[error("embedding backbone")]
    Embedding(#[from] EmbedError),
}

struct CameraInference {
    decoder: StreamDecoder,
    state: CameraState,
    partition: i32,
    inferred: Counter,
    skipped_behind: Counter,
    skipped_undecodable: Counter,
    /// Capture time of the last whole-frame embedding.
    last_scene_us: Option<u64>,
    scene: SceneWatch,
}

/// Records computed for a frame but not yet acknowledged.
struct Pending {
    camera: CameraId,
    seq: u64,
    records: Vec<(String, String)>,
}

pub struct InferenceProcessor {
    detector: Detector,
    config: InferenceConfig,
    infer_fps: f64,
    detections_topic: String,
    events_topic: String,
    producer: FutureProducer,
    cameras: HashMap<CameraId, CameraInference>,
    picture: Vec<u8>,
    pending: Option<Pending>,
    inference_seconds: Histogram,
    capture_to_published: Histogram,
    /// `[inference.embedding]`: the backbone, when learning features are on.
    embedder: Option<Embedder>,
    embedding_seconds: Histogram,
    /// The learned models in force (hot-swapped behind the trait).
    models: Arc<dyn ModelSource>,
}

/// The detector `[inference]` names (also what `validate` loads).
pub fn load_detector(config: &InferenceConfig) -> Result<Detector, DetectError> {
    let options = DetectorOptions {
        ort_dylib: config.onnxruntime_library.clone(),
        ..DetectorOptions::default()
    };
    Detector::load(&config.model, &config.models_dir(), &options)
}

pub fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "camfleet_collector_frames_inferred_total",
        "Pictures the detector ran on, per camera"
    );
    describe_counter!(
        "camfleet_collector_inference_frames_skipped_total",
        "Frames inference skipped, per camera and reason (behind: the queue was full; undecodable: waiting for an IDR after corrupt data)"
    );
    describe_histogram!(
        "camfleet_collector_inference_seconds",
        Unit::Seconds,
        "Detector time per picture (preprocess, ONNX Runtime, decode of outputs)"
    );
    describe_histogram!(
        "camfleet_collector_embedding_seconds",
        Unit::Seconds,
        "Embedding backbone time per inferred picture (all its crops and the sampled whole frame)"
    );
    describe_histogram!(
        "camfleet_collector_capture_to_detection_seconds",
        Unit::Seconds,
        "Capture at the edge to the detection record acknowledged by Kafka"
    );
}

impl InferenceProcessor {
    /// Loads the model (a missing, unreadable or mismatched model is an
    /// error here, at start) and creates the producer.
    pub fn new(config: &InferenceConfig, kafka: &CollectorKafkaConfig) -> Result<Self, InferError> {
        let mut detector = load_detector(config)?;
        // ONNX Runtime allocates and plans on the first run (~200 ms): pay
        // it here, not on a camera's first picture.
        let flat = vec![128u8; 64 * 64 * 3 / 2];
        detector.detect_i420(&[(64, 64, flat.as_slice())])?;
        let embedder = match &config.embedding {
            Some(e) => Some(Embedder::load(
                &e.model,
                &e.models_dir(),
                config.onnxruntime_library.as_deref(),
            )?),
            None => None,
        };
        let producer: FutureProducer =
            consume::producer_config(kafka, "camfleet-collector-inference")
                .map_err(|e| InferError::Kafka(e.to_string()))?
                .create()
                .map_err(|e| InferError::Kafka(e.to_string()))?;
        describe_metrics();
        Ok(Self {
            detector,
            config: config.clone(),
            infer_fps: config.infer_fps,
            detections_topic: config.detections_topic.clone(),
            events_topic: config.events_topic.clone(),
            producer,
            cameras: HashMap::new(),
            picture: Vec::new(),
            pending: None,
            inference_seconds: metrics::histogram!("camfleet_collector_inference_seconds"),
            capture_to_published: metrics::histogram!(
                "camfleet_collector_capture_to_detection_seconds"
            ),
            embedder,
            embedding_seconds: metrics::histogram!("camfleet_collector_embedding_seconds"),
            models: Arc::new(NoModels),
        })
    }

    /// The learned models to use (default: none); a hot-swapping source
    /// takes effect at the next picture.
    pub fn with_models(mut self, models: Arc<dyn ModelSource>) -> Self {
        self.models = models;
        self
    }

    fn camera(&mut self, frame: &Frame) -> &mut CameraInference {
        let fps = self.infer_fps;
        let cam = self
            .cameras
            .entry(frame.meta.camera.clone())
            .or_insert_with(|| {
                let label = frame.meta.camera.to_string();
                CameraInference {
                    decoder: StreamDecoder::new(fps),
                    state: CameraState::default(),
                    partition: frame.partition,
                    inferred: metrics::counter!("camfleet_collector_frames_inferred_total", "camera" => label.clone()),
                    skipped_behind: metrics::counter!("camfleet_collector_inference_frames_skipped_total", "camera" => label.clone(), "reason" => "behind"),
                    skipped_undecodable: metrics::counter!("camfleet_collector_inference_frames_skipped_total", "camera" => label, "reason" => "undecodable"),
                    last_scene_us: None,
                    scene: SceneWatch::default(),
                }
            });
        cam.partition = frame.partition;
        cam
    }

    /// Decodes and, if sampled, infers `frame`: the records to publish.
    fn infer(&mut self, frame: &Frame) -> Vec<(String, String)> {
        let mut picture = std::mem::take(&mut self.picture);
        let decoded = {
            let cam = self.camera(frame);
            tokio::task::block_in_place(|| {
                cam.decoder
                    .decode(&frame.meta, &frame.annex_b, &mut picture)
            })
        };
        let (width, height) = match decoded {
            Decoded::Picture { width, height } => (width, height),
            Decoded::NotSampled => {
                self.picture = picture;
                return Vec::new();
            }
            Decoded::WaitingForKeyframe => {
                self.camera(frame).skipped_undecodable.increment(1);
                self.picture = picture;
                return Vec::new();
            }
            Decoded::Corrupt(error) => {
                self.camera(frame).skipped_undecodable.increment(1);
                tracing::warn!(camera = %frame.meta.camera, seq = frame.meta.seq, %error,
                    "undecodable H.264; inference resumes at the next IDR");
                self.picture = picture;
                return Vec::new();
            }
        };
        let t = Instant::now();
        let detections = tokio::task::block_in_place(|| {
            self.detector
                .detect_i420(&[(width, height, picture.as_slice())])
        });
        let inference_ms = t.elapsed().as_secs_f64() * 1000.0;
        self.inference_seconds.record(inference_ms / 1000.0);
        let detections = match detections {
            Ok(mut d) => d.pop().unwrap_or_default(),
            Err(error) => {
                // A picture the model cannot take is not worth holding the
                // commit for: recorded with no objects, and said why.
                tracing::warn!(camera = %frame.meta.camera, seq = frame.meta.seq, %error, "detector failed on a picture");
                Vec::new()
            }
        };
        let stats = PictureStats::of_i420(width, height, &picture);
        let learned = self.learn(frame, width, height, &picture, &detections, &stats);
        self.picture = picture;
        let manifest = self.detector.manifest();
        let camera = frame.meta.camera.as_str();
        let mut counts = BTreeMap::new();
        for d in &detections {
            *counts.entry(d.label.as_str()).or_insert(0u32) += 1;
        }
        let record = DetectionRecord {
            schema: DETECTIONS_SCHEMA,
            camera,
            seq: frame.meta.seq,
            epoch: frame.meta.epoch,
            capture_us: frame.meta.capture_us,
            pts_90k: frame.meta.pts_90k,
            width,
            height,
            model: ModelRef {
                name: &manifest.name,
                version: &manifest.version,
            },
            objects: detections
                .iter()
                .enumerate()
                .map(|(i, d)| Object {
                    id: detection_id(camera, frame.meta.epoch, frame.meta.seq, i),
                    verifier: learned.verdicts.get(i).cloned().flatten(),
                    shadow: learned.shadow_verdicts.get(i).cloned().flatten(),
                    label: &d.label,
                    class_id: d.class_id,
                    score: d.score,
                    bbox: BoxNorm {
                        x_min: d.bbox[0],
                        y_min: d.bbox[1],
                        x_max: d.bbox[2],
                        y_max: d.bbox[3],
                    },
                })
                .collect(),
            counts,
            inference_ms,
        };
        let mut out = vec![(
            self.detections_topic.clone(),
            serde_json::to_string(&record).expect("detection record serialises"),
        )];
        let labels: Vec<&str> = detections.iter().map(|d| d.label.as_str()).collect();
        let (seq, epoch, pts_90k, capture_us) = (
            frame.meta.seq,
            frame.meta.epoch,
            frame.meta.pts_90k,
            frame.meta.capture_us,
        );
        let events_topic = self.events_topic.clone();
        if let Some((topic, payload)) = learned.features {
            out.push((topic, payload));
        }
        let cam = self
            .cameras
            .get_mut(&frame.meta.camera)
            .expect("camera entry");
        cam.inferred.increment(1);
        let mut events = cam.state.observe(Observation {
            seq,
            epoch,
            pts_90k,
            capture_us,
            stats,
            labels: &labels,
        });
        if let Some(t) = learned.scene {
            let (kind, phase) = match t {
                SceneTransition::Started(k) => (k, Phase::Started),
                SceneTransition::Ended(k) => (k, Phase::Ended),
            };
            events.push(Event {
                kind: match kind {
                    SceneKind::SceneChanged => EventKind::SceneChanged,
                    SceneKind::Tampered => EventKind::Tampered,
                },
                phase: Some(phase),
                label: None,
                seq,
                capture_us,
            });
        }
        for event in events {
            tracing::info!(camera, kind = ?event.kind, phase = ?event.phase, label = event.label.as_deref(), seq, "event");
            let record = EventRecord {
                schema: EVENTS_SCHEMA,
                camera,
                epoch,
                event: &event,
            };
            out.push((
                events_topic.clone(),
                serde_json::to_string(&record).expect("event record serialises"),
            ));
        }
        out
    }

    /// Learning features of one inferred picture (when `[inference.embedding]`
    /// is on): crop embeddings batched per picture, the verifier's verdicts,
    /// a whole-frame embedding every `scene_period_s` and the scene model's
    /// transition. A backbone or model failure costs the features of this
    /// picture only (logged); detections are published regardless.
    fn learn(
        &mut self,
        frame: &Frame,
        width: u32,
        height: u32,
        picture: &[u8],
        detections: &[crate::detect::Detection],
        stats: &PictureStats,
    ) -> Learned {
        let mut learned = Learned::default();
        let (Some(embedder), Some(config)) =
            (self.embedder.as_mut(), self.config.embedding.as_ref())
        else {
            return learned;
        };
        let meta = &frame.meta;
        let camera = meta.camera.as_str();
        let t = Instant::now();
        let boxes: Vec<[f32; 4]> = if config.objects {
            detections.iter().map(|d| d.bbox).collect()
        } else {
            Vec::new()
        };
        let cam = self.cameras.get_mut(&meta.camera).expect("camera entry");
        let period_us = (config.scene_period_s * 1e6) as u64;
        let scene_due = period_us > 0
            && cam
                .last_scene_us
                .is_none_or(|last| meta.capture_us.abs_diff(last) >= period_us);
        let embedded = tokio::task::block_in_place(|| -> Result<_, EmbedError> {
            let objects = embedder.embed_boxes(width, height, picture, &boxes)?;
            let frame_embedding = if scene_due {
                embedder.embed_pictures(&[(width, height, picture)])?.pop()
            } else {
                None
            };
            Ok((objects, frame_embedding))
        });
        self.embedding_seconds.record(t.elapsed().as_secs_f64());
        let (embeddings, frame_embedding) = match embedded {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(camera, seq = meta.seq, %error, "embedding failed on a picture; its features are not recorded");
                return learned;
            }
        };
        if frame_embedding.is_some() {
            cam.last_scene_us = Some(meta.capture_us);
        }
        let backbone = embedder.manifest();
        let manifest = self.detector.manifest();
        let mut record = FeatureRecord {
            schema: FEATURES_SCHEMA.into(),
            camera: camera.into(),
            epoch: meta.epoch,
            seq: meta.seq,
            capture_us: meta.capture_us as i64,
            model: ModelName {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
            },
            backbone: ModelName {
                name: backbone.name.clone(),
                version: backbone.version.clone(),
            },
            objects: detections
                .iter()
                .zip(embeddings)
                .enumerate()
                .map(|(i, (d, embedding))| FeatureObject {
                    id: detection_id(camera, meta.epoch, meta.seq, i),
                    class_id: d.class_id as u32,
                    label: d.label.clone(),
                    score: d.score,
                    bbox: d.bbox,
                    verifier: None,
                    shadow: None,
                    embedding,
                })
                .collect(),
            frame_embedding,
        };
        if let Some(verifier) = self.models.verifier(camera) {
            match verdicts(verifier.as_ref(), &record) {
                Ok(v) => {
                    for (o, verdict) in record.objects.iter_mut().zip(v) {
                        o.verifier = Some(verdict);
                    }
                }
                Err(error) => {
                    tracing::warn!(camera, seq = meta.seq, %error, "verifier failed on a picture; no verdicts")
                }
            }
        }
        // The candidate in shadow scores the same rows; its failure costs
        // only its own verdicts, never the current verifier's.
        if let Some(shadow) = self.models.shadow_verifier(camera) {
            match verdicts(shadow.as_ref(), &record) {
                Ok(v) => {
                    for (o, verdict) in record.objects.iter_mut().zip(v) {
                        o.shadow = Some(verdict);
                    }
                }
                Err(error) => {
                    tracing::warn!(camera, seq = meta.seq, %error, "shadow verifier failed on a picture; no shadow verdicts")
                }
            }
        }
        learned.shadow_verdicts = record.objects.iter().map(|o| o.shadow.clone()).collect();
        learned.verdicts = record.objects.iter().map(|o| o.verifier.clone()).collect();
        if let (Some(scene), Some(embedding)) = (self.models.scene(camera), &record.frame_embedding)
        {
            match scene.distance(embedding) {
                Ok(distance) => {
                    let blind =
                        stats.mean < super::state::DARK_MEAN || stats.std < super::state::FLAT_STD;
                    learned.scene = cam.scene.observe(distance, scene.threshold(), blind);
                }
                Err(error) => {
                    tracing::warn!(camera, seq = meta.seq, %error, "scene model failed on a picture")
                }
            }
        }
        learned.features = Some((
            config.features_topic.clone(),
            serde_json::to_string(&record).expect("feature record serialises"),
        ));
        learned
    }

    async fn publish(&mut self, frame: &Frame) -> Result<(), ProcessorError> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        let key = pending.camera.to_string();
        while let Some((topic, payload)) = pending.records.first() {
            let record = FutureRecord::to(topic).key(&key).payload(payload);
            self.producer
                .send(record, Duration::from_secs(10))
                .await
                .map_err(|(e, _)| ProcessorError(format!("publish to {topic}: {e}")))?;
            pending.records.remove(0);
        }
        self.pending = None;
        if frame.meta.capture_us > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            self.capture_to_published
                .record(now.saturating_sub(frame.meta.capture_us) as f64 / 1e6);
        }
        Ok(())
    }
}

/// One verifier's verdicts on a picture's objects, in order.
fn verdicts(
    verifier: &dyn crate::learn::model::Verifier,
    record: &FeatureRecord,
) -> Result<Vec<Verdict>, String> {
    let rows: Vec<Vec<f32>> = record
        .objects
        .iter()
        .map(|o| verifier_input(&record.features(o), verifier.num_classes()))
        .collect();
    let p = verifier.probabilities(&rows).map_err(|e| e.to_string())?;
    if p.len() != rows.len() {
        return Err(format!(
            "{} {} returned {} probabilities for {} objects",
            verifier.name(),
            verifier.version(),
            p.len(),
            rows.len()
        ));
    }
    Ok(p.into_iter()
        .map(|probability| Verdict {
            name: verifier.name().into(),
            version: verifier.version().into(),
            probability,
            rejected: probability < verifier.threshold(),
        })
        .collect())
}

/// What [`InferenceProcessor::learn`] adds to a picture's records.
#[derive(Default)]
struct Learned {
    /// Per object, in detection order.
    verdicts: Vec<Option<Verdict>>,
    /// The shadow's, per object.
    shadow_verdicts: Vec<Option<Verdict>>,
    /// The feature record (topic, JSON).
    features: Option<(String, String)>,
    scene: Option<SceneTransition>,
}

impl Processor for InferenceProcessor {
    fn name(&self) -> &'static str {
        "inference"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Lossy
    }

    fn process<'a>(&'a mut self, frame: &'a Frame) -> ProcessFuture<'a> {
        Box::pin(async move {
            if !self.config.covers(frame.meta.camera.as_str()) {
                return Ok(());
            }
            // A retry of the same frame only publishes what is still pending.
            let retry = self
                .pending
                .as_ref()
                .is_some_and(|p| p.camera == frame.meta.camera && p.seq == frame.meta.seq);
            if !retry {
                let records = self.infer(frame);
                if records.is_empty() {
                    return Ok(());
                }
                self.pending = Some(Pending {
                    camera: frame.meta.camera.clone(),
                    seq: frame.meta.seq,
                    records,
                });
            }
            self.publish(frame).await
        })
    }

    fn skipped(&mut self, frame: &Frame) {
        if !self.config.covers(frame.meta.camera.as_str()) {
            return;
        }
        let cam = self.camera(frame);
        cam.skipped_behind.increment(1);
        cam.decoder.lost_frame();
    }

    fn revoke(&mut self, partition: i32) {
        self.cameras.retain(|_, c| c.partition != partition);
    }
}
