//! `camfleet-collector label DETECTION_ID true|false`: an ops label.
//!
//! The id is checked (its form, then that the detection is in its camera's
//! detections table), then the label is published on the labels topic and
//! acknowledged; the collector's table writer files it into the labels
//! table of the detection's hour. One writer per table keeps the files
//! consistent however many people label at once (docs/learning.md).

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

pub struct Labelled {
    pub detection_id: String,
    pub real: bool,
    pub topic: String,
}

pub async fn label<A: Archive>(
    config: &CollectorConfig,
    archive: &A,
    id: &str,
    real: bool,
) -> Result<Labelled, LabelError> {
    let embedding = config
        .inference
        .as_ref()
        .and_then(|i| i.embedding.as_ref())
        .ok_or(LabelError::NotEnabled)?;
    let (camera, ..) = parse_detection_id(id).map_err(LabelError::BadId)?;
    let row = find_detection(archive, id)
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
    let producer: FutureProducer =
        crate::consume::producer_config(&config.kafka, "camfleet-collector-label")
            .map_err(|e| LabelError::Kafka(e.to_string()))?
            .create()
            .map_err(|e| LabelError::Kafka(e.to_string()))?;
    let payload = serde_json::to_string(&record).expect("label record serialises");
    producer
        .send(
            FutureRecord::to(&embedding.labels_topic)
                .key(&row.camera)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| LabelError::Kafka(e.to_string()))?;
    Ok(Labelled {
        detection_id: id.into(),
        real,
        topic: embedding.labels_topic.clone(),
    })
}
