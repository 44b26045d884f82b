//! Kafka side of the collector: consumer set-up, rebalance capture, and the
//! commit metadata format.
//!
//! Offsets are committed by hand, never automatically: the committed offset of
//! a partition is the lowest offset any unarchived frame of that partition
//! still needs (see `app`). The commit's metadata string carries the archived
//! watermark of each camera in the partition:
//!
//! ```json
//! {"v":1,"archived":{"depot/gate":4711,"depot/yard":80}}
//! ```
//!
//! The broker limits metadata to `offset.metadata.max.bytes` (default 4096,
//! about 100 cameras per partition); the project's broker config raises it.

use camfleet_shared::config::CollectorKafkaConfig;
use camfleet_shared::CameraId;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Remembers partitions revoked during a poll, for the main loop to act on.
#[derive(Default)]
pub struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
}

impl RebalanceLog {
    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("rebalance lock"))
    }
}

impl ClientContext for RebalanceLog {}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "partitions revoked");
                self.revoked.lock().expect("rebalance lock").extend(parts);
            }
            Rebalance::Assign(tpl) => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?parts, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub fn consumer_config(config: &CollectorKafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.connection.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.partition.fetch.bytes", (8 << 20).to_string())
        // A collector that dies (SIGKILL, host loss) hands its partitions to the
        // others after 10 s instead of librdkafka's 45 s default.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        .set("client.id", "camfleet-collector");
    for (k, v) in &config.connection.librdkafka_options {
        c.set(k, v);
    }
    c
}

pub fn dead_letter_producer_config(config: &CollectorKafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.connection.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", (8 << 20).to_string())
        .set("client.id", "camfleet-collector-dlq");
    for (k, v) in &config.connection.librdkafka_options {
        c.set(k, v);
    }
    c
}

pub fn encode_watermarks(w: &BTreeMap<String, u64>) -> String {
    serde_json::json!({ "v": 1, "archived": w }).to_string()
}

/// Parses commit metadata; empty or foreign metadata yields no watermarks
/// (the collector then re-archives from the committed offset, which rewrites
/// identical segments).
pub fn decode_watermarks(metadata: &str) -> BTreeMap<CameraId, u64> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(metadata) else {
        if !metadata.is_empty() {
            tracing::warn!(metadata, "ignoring commit metadata that is not camfleet's");
        }
        return BTreeMap::new();
    };
    v.get("archived")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((CameraId::new(k).ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_and_junk_is_ignored() {
        let w = BTreeMap::from([("depot/gate".to_string(), 4711u64)]);
        let text = encode_watermarks(&w);
        assert_eq!(text, r#"{"archived":{"depot/gate":4711},"v":1}"#);
        let back = decode_watermarks(&text);
        assert_eq!(back[&CameraId::new("depot/gate").unwrap()], 4711);
        assert!(decode_watermarks("").is_empty());
        assert!(decode_watermarks("not json").is_empty());
        assert!(decode_watermarks(r#"{"archived":{"bad id":1}}"#).is_empty());
    }
}
