//! The table writer: `camfleet.features.v1` and `camfleet.labels.v1` ->
//! the learning tables (docs/learning.md "Commit point").
//!
//! Kafka is the log: the inference processor finishes a frame (its offset
//! may be committed) only once the picture's feature record is acknowledged,
//! so nothing accepted is lost even though the tables are written later. The
//! writer consumes both topics in its own group (`<group_id>-tables`),
//! collects rows per camera-hour for `tables_flush_s`, then for each hour it
//! touched: reads the hour's tables, upserts the new rows (keyed: a replayed
//! record replaces its row), writes each changed table atomically through
//! the archive (tmp -> durable -> rename), and only then commits the
//! consumed offsets. A crash between write and commit replays records whose
//! rows are already there: idempotent.
//!
//! The stillness rule runs here too, per camera, on the records as they are
//! consumed ([`super::stillness::StillnessTracker`]); its labels go into the
//! same flush.

use super::record::{FeatureRecord, LabelRecord, FEATURES_SCHEMA, LABELS_SCHEMA};
use super::stillness::{StillnessRule, StillnessTracker};
use super::tables::{self, DetectionRow, FrameRow, HourTables, LabelRow};
use crate::archive::Archive;
use bytes::Bytes;
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::{CollectorKafkaConfig, EmbeddingConfig};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TableWriterError {
    #[error(transparent)]
    Dataset(#[from] super::dataset::DatasetError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("table writer consumer: {0}")]
    Kafka(String),
}

/// Rows waiting for the next flush, per hour directory.
pub struct TableWriter {
    rule: StillnessRule,
    clock: Arc<dyn Clock>,
    pending: BTreeMap<String, HourTables>,
    trackers: HashMap<String, StillnessTracker>,
    /// Labels made durable, counted for the retraining schedule.
    counts: Option<Arc<super::schedule::LabelCounts>>,
}

impl TableWriter {
    pub fn new(config: &EmbeddingConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            rule: StillnessRule {
                iou_min: config.stillness_iou,
                min_still_us: (config.stillness_min_s * 1e6) as i64,
                max_gap_us: (config.stillness_gap_s * 1e6) as i64,
            },
            clock,
            pending: BTreeMap::new(),
            trackers: HashMap::new(),
            counts: None,
        }
    }

    fn hour(&mut self, camera: &str, capture_us: i64) -> &mut HourTables {
        self.pending
            .entry(tables::hour_dir(camera, capture_us))
            .or_default()
    }

    /// Files one feature record's rows.
    pub fn add_features(&mut self, r: &FeatureRecord) {
        for o in &r.objects {
            let row = DetectionRow {
                detection_id: o.id.clone(),
                camera: r.camera.clone(),
                capture_us: r.capture_us,
                epoch: r.epoch,
                seq: r.seq,
                class_id: o.class_id,
                label: o.label.clone(),
                score: o.score,
                bbox: o.bbox,
                model_name: r.model.name.clone(),
                model_version: r.model.version.clone(),
                verifier: o.verifier.clone(),
                shadow: o.shadow.clone(),
                backbone: r.backbone.name.clone(),
                embedding: o.embedding.clone(),
            };
            self.hour(&r.camera, r.capture_us).upsert_detection(row);
        }
        if let Some(e) = &r.frame_embedding {
            let row = FrameRow {
                camera: r.camera.clone(),
                capture_us: r.capture_us,
                epoch: r.epoch,
                seq: r.seq,
                backbone: r.backbone.name.clone(),
                embedding: e.clone(),
            };
            self.hour(&r.camera, r.capture_us).upsert_frame(row);
        }
        let rule = self.rule;
        let tracker = self
            .trackers
            .entry(r.camera.clone())
            .or_insert_with(|| StillnessTracker::new(&r.camera, rule));
        let dets: Vec<_> = r
            .objects
            .iter()
            .map(|o| (o.id.clone(), o.class_id, o.bbox))
            .collect();
        tracker.observe(r.capture_us, &dets);
    }

    /// Files one ops label.
    pub fn add_label(&mut self, r: &LabelRecord) {
        let row = LabelRow {
            detection_id: r.detection_id.clone(),
            camera: r.camera.clone(),
            real: r.real,
            source: super::features::LabelSource::Ops,
            labelled_at_us: r.labelled_at_us,
        };
        self.hour(&r.camera, r.capture_us).upsert_label(row);
    }

    /// Counts the labels each flush makes durable into `counts`.
    pub fn with_counts(mut self, counts: Arc<super::schedule::LabelCounts>) -> Self {
        self.counts = Some(counts);
        self
    }

    /// Merges everything added so far into the hour files; once it returns
    /// Ok, all of it is durable. Returns the number of hour files written.
    pub async fn flush<A: Archive>(&mut self, archive: &A) -> Result<usize, TableWriterError> {
        let clock = self.clock.clone();
        let mut labels = Vec::new();
        for t in self.trackers.values_mut() {
            labels.extend(t.take_labels(clock.as_ref()));
        }
        for (capture_us, label) in labels {
            let camera = label.camera.clone();
            self.hour(&camera, capture_us).upsert_label(label);
        }
        let mut written = 0;
        while let Some((dir, new)) = self.pending.pop_first() {
            match self.merge(archive, &dir, &new).await {
                Ok(n) => {
                    written += n;
                    if let Some(counts) = &self.counts {
                        for l in new.labels.values() {
                            counts.add(&l.camera, 1);
                        }
                    }
                }
                Err(e) => {
                    // Keep the rows for the next attempt (nothing committed).
                    self.pending.insert(dir, new);
                    return Err(e);
                }
            }
        }
        Ok(written)
    }

    async fn merge<A: Archive>(
        &self,
        archive: &A,
        dir: &str,
        new: &HourTables,
    ) -> Result<usize, TableWriterError> {
        let mut t = match super::dataset::load_hour_tables(archive, dir).await {
            Ok(t) => t,
            Err(super::dataset::DatasetError::Table(e)) => {
                // Every write here is atomic: a file that does not read was
                // damaged outside camfleet. Keep it aside, start the hour again.
                tracing::error!(hour = dir, error = %e, "damaged learning table moved aside");
                metrics::counter!("camfleet_collector_learning_tables_damaged_files_total")
                    .increment(1);
                for name in tables::TABLE_FILES {
                    let p = format!("{dir}/{name}");
                    if let Some(b) = archive.get(&p).await? {
                        archive.put(&format!("{p}.damaged"), b).await?;
                        archive.delete(&p).await?;
                    }
                }
                HourTables::default()
            }
            Err(e) => return Err(e.into()),
        };
        let (mut d, mut l, mut f) = (false, false, false);
        for r in new.detections.values() {
            d |= t.upsert_detection(r.clone());
        }
        for r in new.labels.values() {
            l |= t.upsert_label(r.clone());
        }
        for r in new.frames.values() {
            f |= t.upsert_frame(r.clone());
        }
        // Detections first: a label's detection is on disk before the label.
        let mut n = 0;
        if d {
            let b = tables::encode_detections(&t.detections);
            archive
                .put(
                    &format!("{dir}/{}", tables::DETECTIONS_FILE),
                    Bytes::from(b),
                )
                .await?;
            n += 1;
        }
        if f {
            let b = tables::encode_frames(&t.frames);
            archive
                .put(&format!("{dir}/{}", tables::FRAMES_FILE), Bytes::from(b))
                .await?;
            n += 1;
        }
        if l {
            let b = tables::encode_labels(&t.labels);
            archive
                .put(&format!("{dir}/{}", tables::LABELS_FILE), Bytes::from(b))
                .await?;
            n += 1;
        }
        Ok(n)
    }
}

/// Consumes the features and labels topics into the tables until
/// `shutdown` turns true; flushes and commits once more on the way out.
pub async fn run<A: Archive>(
    archive: &A,
    kafka: &CollectorKafkaConfig,
    config: &EmbeddingConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), TableWriterError> {
    run_counting(archive, kafka, config, shutdown, None).await
}

/// [`run`], counting the labels each flush makes durable into `counts`
/// (the retraining schedule's input).
pub async fn run_counting<A: Archive>(
    archive: &A,
    kafka: &CollectorKafkaConfig,
    config: &EmbeddingConfig,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    counts: Option<Arc<super::schedule::LabelCounts>>,
) -> Result<(), TableWriterError> {
    let mut client = crate::consume::consumer_config(kafka)
        .map_err(|e| TableWriterError::Kafka(e.to_string()))?;
    client
        .set("group.id", format!("{}-tables", kafka.group_id))
        .set("client.id", "camfleet-collector-tables");
    let consumer: StreamConsumer = client
        .create()
        .map_err(|e| TableWriterError::Kafka(e.to_string()))?;
    consumer
        .subscribe(&[&config.features_topic, &config.labels_topic])
        .map_err(|e| TableWriterError::Kafka(e.to_string()))?;
    let mut writer = TableWriter::new(config, Arc::new(SystemClock));
    if let Some(counts) = counts {
        writer = writer.with_counts(counts);
    }
    let period = Duration::from_secs_f64(config.tables_flush_s);
    let bad = metrics::counter!("camfleet_collector_learning_bad_records_total");
    let rows = metrics::counter!("camfleet_collector_learning_records_total");
    // Next offset to commit per (topic, partition), once flushed.
    let mut consumed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut deadline = tokio::time::Instant::now() + period;
    // After a failed flush nothing more is consumed until a flush succeeds:
    // the rows waiting in memory stay bounded by one period's worth.
    let mut blocked = false;
    loop {
        let stop = tokio::select! {
            m = consumer.recv(), if !blocked => {
                match m {
                    Ok(m) => {
                        let payload = m.payload().unwrap_or_default();
                        let result = if m.topic() == config.labels_topic {
                            serde_json::from_slice::<LabelRecord>(payload)
                                .map_err(|e| e.to_string())
                                .and_then(|r| if r.schema == LABELS_SCHEMA { Ok(r) } else { Err(format!("schema {:?}", r.schema)) })
                                .map(|r| writer.add_label(&r))
                        } else {
                            serde_json::from_slice::<FeatureRecord>(payload)
                                .map_err(|e| e.to_string())
                                .and_then(|r| if r.schema == FEATURES_SCHEMA { Ok(r) } else { Err(format!("schema {:?}", r.schema)) })
                                .map(|r| writer.add_features(&r))
                        };
                        match result {
                            Ok(()) => rows.increment(1),
                            Err(error) => {
                                bad.increment(1);
                                tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %error, "bad learning record skipped");
                            }
                        }
                        consumed.insert((m.topic().to_string(), m.partition()), m.offset() + 1);
                    }
                    Err(e) => tracing::warn!(error = %e, "table writer consumer"),
                }
                false
            }
            () = tokio::time::sleep_until(deadline) => false,
            _ = shutdown.changed() => true,
        };
        if stop || tokio::time::Instant::now() >= deadline {
            let flushed = writer.flush(archive).await;
            blocked = flushed.is_err();
            match flushed {
                Ok(_) => {
                    if !consumed.is_empty() {
                        let mut tpl = TopicPartitionList::new();
                        for ((topic, partition), offset) in &consumed {
                            let _ = tpl.add_partition_offset(
                                topic,
                                *partition,
                                Offset::Offset(*offset),
                            );
                        }
                        // A partition that moved to another instance fails
                        // to commit: its new owner replays, idempotently.
                        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
                            tracing::warn!(error = %e, "table writer commit");
                        }
                        consumed.clear();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "learning tables flush failed; retried next period")
                }
            }
            deadline = tokio::time::Instant::now() + period;
        }
        if stop {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalArchive;
    use crate::learn::record::{FeatureObject, ModelName};

    struct Fixed;
    impl Clock for Fixed {
        fn now_us(&self) -> u64 {
            7
        }
    }

    fn config() -> EmbeddingConfig {
        toml::from_str("model = \"m.toml\"\nstillness_min_s = 1\nstillness_gap_s = 5").unwrap()
    }

    fn record(seq: u64, capture_us: i64, bbox: [f32; 4]) -> FeatureRecord {
        FeatureRecord {
            schema: FEATURES_SCHEMA.into(),
            camera: "s/c".into(),
            epoch: 1,
            seq,
            capture_us,
            model: ModelName {
                name: "m".into(),
                version: "1".into(),
            },
            backbone: ModelName {
                name: "b".into(),
                version: "1".into(),
            },
            objects: vec![FeatureObject {
                id: crate::learn::features::detection_id("s/c", 1, seq, 0),
                class_id: 0,
                label: "person".into(),
                score: 0.5,
                bbox,
                verifier: None,
                shadow: None,
                embedding: vec![seq as f32; 3],
            }],
            frame_embedding: seq.is_multiple_of(2).then(|| vec![1.0, 2.0]),
        }
    }

    #[tokio::test]
    async fn replayed_records_never_duplicate_rows_and_still_boxes_get_labels() {
        let dir = tempfile::tempdir().unwrap();
        let archive = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        let hour = 1_763_764_012_000_000i64; // 2025-11-21T22:26:52Z
        let mut w = TableWriter::new(&config(), Arc::new(Fixed));
        for seq in 0..4 {
            w.add_features(&record(
                seq,
                hour + seq as i64 * 500_000,
                [0.1, 0.1, 0.3, 0.6],
            ));
        }
        assert_eq!(w.flush(&archive).await.unwrap(), 3);
        // A crash before the commit: the same records come again, plus an ops label.
        let mut w = TableWriter::new(&config(), Arc::new(Fixed));
        for seq in 0..4 {
            w.add_features(&record(
                seq,
                hour + seq as i64 * 500_000,
                [0.1, 0.1, 0.3, 0.6],
            ));
        }
        w.add_label(&LabelRecord {
            schema: LABELS_SCHEMA.into(),
            detection_id: "s/c:1:3:0".into(),
            camera: "s/c".into(),
            capture_us: hour + 1_500_000,
            real: true,
            labelled_at_us: 9,
        });
        w.flush(&archive).await.unwrap();
        let t = crate::learn::dataset::load_hour_tables(&archive, "s/c/2025/11/21/22")
            .await
            .unwrap();
        assert_eq!(t.detections.len(), 4);
        assert_eq!(t.frames.len(), 2);
        // Still from 0 s to 1.5 s >= 1 s: seq 0..3 are hard negatives.
        let still: Vec<_> = t
            .labels
            .values()
            .filter(|l| l.source == crate::learn::features::LabelSource::Stillness)
            .collect();
        assert_eq!(still.len(), 4);
        let cam = camfleet_shared::CameraId::new("s/c").unwrap();
        let labelled = crate::learn::dataset::load_labelled(&archive, Some(&cam), None, None)
            .await
            .unwrap();
        assert_eq!(labelled.len(), 4);
        let ops = labelled
            .iter()
            .find(|l| l.features.detection_id == "s/c:1:3:0")
            .unwrap();
        assert!(
            ops.real && ops.source == crate::learn::features::LabelSource::Ops,
            "ops wins"
        );
        assert_eq!(ops.features.embedding, vec![3.0; 3]);
        let scenes = crate::learn::dataset::load_scene_embeddings(&archive, None, None, None)
            .await
            .unwrap();
        assert_eq!(scenes.len(), 2);
    }
}
