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

use camfleet_shared::config::{CollectorKafkaConfig, ConfigError};
use camfleet_shared::wire::{self, WireError};
use camfleet_shared::CameraId;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};
use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Remembers partitions revoked during a poll, for the main loop to act on.
#[derive(Default)]
pub struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
    /// An assignment (possibly empty) arrived: the consumer is a group member.
    joined: AtomicBool,
}

impl RebalanceLog {
    pub fn has_joined(&self) -> bool {
        self.joined.load(Relaxed)
    }

    pub fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut *self.revoked.lock().expect("rebalance lock"))
    }
}

impl ClientContext for RebalanceLog {
    /// librdkafka's statistics (every `statistics.interval.ms`), per assigned
    /// partition: records not yet read (`..._consumer_lag_records`: end of
    /// the partition minus the next record the collector takes) and records
    /// not yet committed (`..._commit_lag_records`, which also counts the
    /// open segments and unfinished processor work holding the commit).
    fn stats(&self, statistics: rdkafka::Statistics) {
        for topic in statistics.topics.values() {
            for (id, p) in &topic.partitions {
                // -1 = librdkafka's internal "unassigned" partition; offsets
                // below 0 are "not known yet".
                if *id < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                let partition = id.to_string();
                // Nothing read yet: the position is the commit, or the
                // partition's start (auto.offset.reset = earliest).
                let position = [p.app_offset, p.committed_offset, p.lo_offset]
                    .into_iter()
                    .find(|o| *o >= 0)
                    .unwrap_or(0);
                metrics::gauge!("camfleet_collector_consumer_lag_records", "partition" => partition.clone())
                    .set((p.hi_offset - position).max(0) as f64);
                if p.committed_offset >= 0 {
                    metrics::gauge!("camfleet_collector_commit_lag_records", "partition" => partition)
                        .set((p.hi_offset - p.committed_offset).max(0) as f64);
                }
            }
        }
    }
}

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
                self.joined.store(true, Relaxed);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

/// Bootstrap servers, security settings (the mapping shared with the agent,
/// `KafkaConfig::client_properties`; the password file is read here) and
/// `librdkafka_options`, applied after the collector's own settings.
fn apply_connection(
    c: &mut ClientConfig,
    config: &CollectorKafkaConfig,
) -> Result<(), ConfigError> {
    let props = config.connection.client_properties(&|p| std::fs::read(p))?;
    for (k, v) in props.iter() {
        c.set(k, v);
    }
    Ok(())
}

pub fn consumer_config(config: &CollectorKafkaConfig) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("max.partition.fetch.bytes", (8 << 20).to_string())
        // A collector that dies (SIGKILL, host loss) hands its partitions to the
        // others after 10 s instead of librdkafka's 45 s default.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "3000")
        // librdkafka waits this long before fetching again once its
        // pre-fetch queue is full (default 1000 ms): measured, catching up on
        // a backlog then stalled 2-11 times per run for up to 1 s with the
        // machine idle. 10 ms halved the drain time at the same CPU (issue 9).
        .set("fetch.queue.backoff.ms", "10")
        // Consumer lag per partition for /metrics.
        .set("statistics.interval.ms", "5000")
        .set("client.id", "camfleet-collector");
    apply_connection(&mut c, config)?;
    Ok(c)
}

/// A consumer that only watches a topic from its newest records on (the
/// live view's detections): its own group, never committing.
pub fn watcher_config(
    config: &CollectorKafkaConfig,
    group_id: &str,
    client_id: &str,
) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("client.id", client_id);
    apply_connection(&mut c, config)?;
    Ok(c)
}

pub fn dead_letter_producer_config(
    config: &CollectorKafkaConfig,
) -> Result<ClientConfig, ConfigError> {
    producer_config(config, "camfleet-collector-dlq")
}

/// An idempotent acks=all producer on the collector's connection settings
/// (dead letters, detections, events).
pub fn producer_config(
    config: &CollectorKafkaConfig,
    client_id: &str,
) -> Result<ClientConfig, ConfigError> {
    let mut c = ClientConfig::new();
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.max.bytes", (8 << 20).to_string())
        .set("client.id", client_id);
    apply_connection(&mut c, config)?;
    Ok(c)
}

/// Reads the optional `cf.evicted` header from a record's headers: the
/// sequence ranges the agent evicted from its spool right before this frame.
/// Absent or null means none; if it occurs more than once the last non-null
/// value counts (as for the headers `wire::parse` reads). A malformed value
/// is an error naming the header and the value; the caller keeps the frame.
pub fn evicted_ranges<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<Vec<RangeInclusive<u64>>, WireError> {
    let raw = headers
        .into_iter()
        .filter(|(name, _)| *name == wire::header::EVICTED)
        .filter_map(|(_, value)| value)
        .last();
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let text = std::str::from_utf8(raw).map_err(|_| WireError::BadValue {
        name: wire::header::EVICTED,
        value: String::from_utf8_lossy(raw).into_owned(),
        reason: "not UTF-8",
    })?;
    wire::parse_evicted(text)
}

/// The archived watermark of every camera in the committed metadata of
/// every partition of `topic` (the highest if a camera appears twice, e.g.
/// after a move between partitions). Retention deletes nothing above these:
/// whatever lies above may still be replayed and written again.
pub fn committed_watermarks<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, u64>, KafkaError> {
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    if tpl.count() == 0 {
        return Ok(out);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    for e in committed.elements() {
        for (camera, w) in decode_watermarks(e.metadata()) {
            let slot = out.entry(camera.to_string()).or_default();
            *slot = (*slot).max(w);
        }
    }
    Ok(out)
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

    #[test]
    fn evicted_header_absent_null_present_and_malformed() {
        let seq: (&str, Option<&[u8]>) = ("cf.seq", Some(b"300"));
        assert_eq!(evicted_ranges([seq]), Ok(vec![]));
        assert_eq!(evicted_ranges([seq, ("cf.evicted", None)]), Ok(vec![]));
        assert_eq!(
            evicted_ranges([seq, ("cf.evicted", Some(b"120-179,240-299".as_slice()))]),
            Ok(vec![120..=179, 240..=299])
        );
        for bad in [b"".as_slice(), b"9-3", b"120-179;240", b"\xff-\xfe"] {
            let e = evicted_ranges([seq, ("cf.evicted", Some(bad))])
                .unwrap_err()
                .to_string();
            assert!(e.contains("cf.evicted"), "{bad:?}: {e}");
        }
    }
}
