//! Kafka sink: an idempotent librdkafka producer with acks=all.
//!
//! Idempotence makes the broker drop retried duplicates and keep the order of
//! each partition, so one camera's frames land in sequence order. Frames
//! larger than `max_record_bytes` are split into chunk records (see
//! `camfleet_shared::wire`), sent back to back; the frame is acknowledged when
//! its last chunk is (earlier chunks precede it in the same partition, and with
//! idempotence nothing after a failed record in a partition is written).

use super::{AckFuture, Delivery, FrameSink, SinkError};
use camfleet_shared::config::AgentKafkaConfig;
use camfleet_shared::wire::{self, Chunk, FrameMeta};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::ops::RangeInclusive;
use std::time::Duration;

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    max_record_bytes: usize,
}

/// librdkafka settings shared by every camfleet producer.
pub fn producer_config(config: &AgentKafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.connection.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set(
            "delivery.timeout.ms",
            config.delivery_timeout_ms.to_string(),
        )
        // H.264 does not compress; don't spend CPU trying.
        .set("compression.type", "none")
        // Headers + one record must fit the broker's default 1 MiB limit.
        .set(
            "message.max.bytes",
            (config.max_record_bytes + 64 * 1024).to_string(),
        )
        // ~10 s of 8 Mbit/s video per camera may wait in memory for the broker.
        .set("queue.buffering.max.kbytes", "65536")
        // Retry a lost broker at least every second (librdkafka: up to 10 s),
        // so a spool starts draining within a second of the link returning.
        .set("reconnect.backoff.max.ms", "1000")
        .set("client.id", "camfleet-agent");
    for (k, v) in &config.connection.librdkafka_options {
        c.set(k, v);
    }
    c
}

impl KafkaSink {
    pub fn new(config: &AgentKafkaConfig) -> Result<Self, SinkError> {
        let producer: FutureProducer = producer_config(config)
            .create()
            .map_err(|e| SinkError::Setup(e.to_string()))?;
        Ok(Self {
            producer,
            topic: config.connection.topic.clone(),
            max_record_bytes: config.max_record_bytes,
        })
    }

    /// Checks the broker answers and the topic exists (for `validate`).
    pub fn check_topic(&self, timeout: Duration) -> Result<usize, SinkError> {
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map_err(|e| SinkError::Setup(format!("metadata for {}: {e}", self.topic)))?;
        let topic = md
            .topics()
            .first()
            .ok_or_else(|| SinkError::Setup(format!("topic {} not in metadata", self.topic)))?;
        if let Some(err) = topic.error() {
            return Err(SinkError::Setup(format!(
                "topic {}: {:?}",
                self.topic,
                RDKafkaErrorCode::from(err)
            )));
        }
        Ok(topic.partitions().len())
    }
}

impl FrameSink for KafkaSink {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let evicted = (!evicted.is_empty()).then(|| wire::format_evicted(evicted));
        let ranges = wire::chunk_ranges(payload.len(), self.max_record_bytes);
        let count = ranges.len() as u32;
        let key = meta.camera.as_str();
        let mut last = None;
        for (index, range) in ranges.into_iter().enumerate() {
            let chunk = (count > 1).then_some(Chunk {
                index: index as u32,
                count,
            });
            let mut headers = OwnedHeaders::new_with_capacity(12);
            for (name, value) in wire::headers(meta, chunk) {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            if let Some(e) = &evicted {
                headers = headers.insert(Header {
                    key: wire::header::EVICTED,
                    value: Some(e.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(&payload[range])
                .headers(headers)
                .timestamp((meta.capture_us / 1000) as i64);
            // Wait out a full local queue (backpressure); give up on errors
            // retrying cannot fix (e.g. record too large).
            let mut waited = 0u32;
            let future = loop {
                match self.producer.send_result(record) {
                    Ok(f) => break f,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        waited += 1;
                        tokio::time::sleep(Duration::from_millis(5.min(waited as u64))).await;
                    }
                    Err((e, _)) => {
                        return Err(SinkError::Refused {
                            camera: meta.camera.to_string(),
                            seq: meta.seq,
                            message: e.to_string(),
                        })
                    }
                }
            };
            last = Some(future);
        }
        let future = last.expect("chunk_ranges returns at least one range");
        let (camera, seq) = (meta.camera.to_string(), meta.seq);
        Ok(Box::pin(async move {
            match future.await {
                Ok(Ok(d)) => Ok(Delivery::Kafka {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => Err(SinkError::Delivery {
                    camera,
                    seq,
                    message: e.to_string(),
                }),
                Err(_) => Err(SinkError::Delivery {
                    camera,
                    seq,
                    message: "producer dropped before delivery report".into(),
                }),
            }
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        // librdkafka's flush blocks; keep it off the async workers.
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| SinkError::Setup(format!("flush task: {e}")))?
            .map_err(|e| SinkError::Setup(format!("flush: {e}")))
    }
}
