//! An ops label: `camfleet-collector label DETECTION_ID true|false` and the
//! page's `POST /api/labels` (docs/learning.md, "Labels") both go through
//! [`Labeller::label`], so they check and publish exactly the same way.
//!
//! The id is checked (its form, then that the detection is in its camera's
//! detections table), then the label is published on the labels topic and
//! acknowledged; the collector's table writer files it into the labels
//! table of the detection's hour with source `ops`. One writer per table
//! keeps the files consistent however many people label at once.

use super::dataset::{find_detection, parse_detection_id, DatasetError};
use super::record::{LabelRecord, LABELS_SCHEMA};
use crate::archive::Archive;
use camfleet_shared::config::CollectorConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{0}")]
    BadId(String),
    #[error("no detection {id} in the detections tables of {camera} (ids come from camfleet.detections.v1; the tables lag by up to tables_flush_s)")]
    Unknown { id: String, camera: String },
    #[error("labels need [inference.embedding] in the config (it names the labels topic and turns the tables on)")]
    NotEnabled,
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("publish the label: {0}")]
    Kafka(String),
}

/// What was published.
#[derive(Debug, serde::Serialize)]
pub struct Labelled {
    #[serde(rename = "id")]
    pub detection_id: String,
    pub camera: String,
    pub real: bool,
    pub topic: String,
}

/// Checks ids against `archive`'s detections tables and publishes labels;
/// one per process (CLI run or HTTP server), its producer reused.
pub struct Labeller<A> {
    archive: A,
    topic: String,
    producer: FutureProducer,
    /// How long a detection seen on the detections topic may take to reach
    /// the tables: two flushes of the table writer and a margin.
    tables_lag: Duration,
}

impl<A: Archive> Labeller<A> {
    /// Fails with [`LabelError::NotEnabled`] without `[inference.embedding]`.
    pub fn new(config: &CollectorConfig, archive: A) -> Result<Self, LabelError> {
        let embedding = config
            .inference
            .as_ref()
            .and_then(|i| i.embedding.as_ref())
            .ok_or(LabelError::NotEnabled)?;
        let producer: FutureProducer =
            crate::consume::producer_config(&config.kafka, "camfleet-collector-label")
                .map_err(|e| LabelError::Kafka(e.to_string()))?
                .create()
                .map_err(|e| LabelError::Kafka(e.to_string()))?;
        Ok(Self {
            archive,
            topic: embedding.labels_topic.clone(),
            producer,
            tables_lag: Duration::from_secs_f64(embedding.tables_flush_s * 2.0 + 5.0),
        })
    }

    /// [`label`](Self::label) for a detection the caller saw published on
    /// the detections topic (the page labels what it just drew): the tables
    /// lag by up to `tables_flush_s`, so an unknown id is looked up again
    /// every 500 ms for up to two flushes before it is refused. Same checks,
    /// same record: only the patience differs.
    pub async fn label_published(&self, id: &str, real: bool) -> Result<Labelled, LabelError> {
        let deadline = tokio::time::Instant::now() + self.tables_lag;
        loop {
            match self.label(id, real).await {
                Err(LabelError::Unknown { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                done => return done,
            }
        }
    }

    /// Labels detection `id` real or not; returns once Kafka acknowledged
    /// the record. A refused id publishes nothing.
    pub async fn label(&self, id: &str, real: bool) -> Result<Labelled, LabelError> {
        let (camera, ..) = parse_detection_id(id).map_err(LabelError::BadId)?;
        let row = find_detection(&self.archive, id)
            .await?
            .ok_or_else(|| LabelError::Unknown {
                id: id.into(),
                camera: camera.to_string(),
            })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let record = LabelRecord {
            schema: LABELS_SCHEMA.into(),
            detection_id: id.into(),
            camera: row.camera.clone(),
            capture_us: row.capture_us,
            real,
            labelled_at_us: now,
        };
        let payload = serde_json::to_string(&record).expect("label record serialises");
        self.producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&row.camera)
                    .payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| LabelError::Kafka(e.to_string()))?;
        Ok(Labelled {
            detection_id: id.into(),
            camera: row.camera,
            real,
            topic: self.topic.clone(),
        })
    }
}
