//! Kafka side of the benchmarks: fresh topics (the broker is shared with
//! other users of the clone's services) and a consumer that timestamps each
//! frame on receipt, the way the collector receives it.

use anyhow::{bail, Context};
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::wire;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

#[derive(Clone)]
pub struct Kafka {
    pub bootstrap: String,
    /// Broker count, which caps the replication factor.
    pub nodes: usize,
}

impl Kafka {
    /// From the variables `scripts/services up` writes to `.services/env`.
    pub fn from_env() -> anyhow::Result<Self> {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
            .context("KAFKA_BOOTSTRAP is not set: run scripts/bench, or `scripts/services up && . .services/env`")?;
        let nodes = std::env::var("KAFKA_NODES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        Ok(Self { bootstrap, nodes })
    }

    fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()?)
    }

    /// Creates `bench.<name>.<unix ms>` with one partition: a camera's
    /// frames all go to one partition anyway, and the tutorial's chunks stay
    /// in order.
    pub async fn fresh_topic(&self, name: &str) -> anyhow::Result<String> {
        self.fresh_topic_with(name, &[]).await
    }

    /// [`Self::fresh_topic`] with topic configs (`message.timestamp.type`, ...).
    pub async fn fresh_topic_with(
        &self,
        name: &str,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let topic = format!("bench.{name}.{}", SystemClock.now_us() / 1000);
        let rf = self.nodes.clamp(1, 3) as i32;
        let mut new = NewTopic::new(&topic, 1, TopicReplication::Fixed(rf));
        for (k, v) in configs {
            new = new.set(k, v);
        }
        let res = self
            .admin()?
            .create_topics(
                &[new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
            )
            .await?;
        for r in res {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        Ok(topic)
    }

    /// Deletes a topic this run created, so repeated runs leave nothing behind.
    pub async fn delete_topic(&self, topic: &str) -> anyhow::Result<()> {
        let res = self
            .admin()?
            .delete_topics(&[topic], &AdminOptions::new())
            .await?;
        for r in res {
            r.map_err(|(t, e)| anyhow::anyhow!("delete topic {t}: {e}"))?;
        }
        Ok(())
    }
}

/// One frame as the consumer saw it.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    /// Wall clock when its last record came out of `recv()`.
    pub recv_us: u64,
    /// The `cf.capture_us` header.
    pub capture_us: u64,
    /// Value bytes over all of its records.
    pub bytes: u64,
}

/// Key of the record that proves the consumer is fetching (see [`FrameConsumer::start`]).
const WARM_UP: &str = "camfleet-bench/warm-up";

/// When the consumer should stop: after `frames` frames, or at `deadline`.
type Until = Option<(u64, Instant)>;

/// Consumes a camfleet video topic from the beginning in a background task.
pub struct FrameConsumer {
    task: tokio::task::JoinHandle<anyhow::Result<Vec<Received>>>,
    until: watch::Sender<Until>,
}

impl FrameConsumer {
    /// Returns once the consumer has received a warm-up record this sends:
    /// a new consumer's first fetch round on a fresh topic takes ~0.5 s,
    /// which would otherwise be charged to the first frames' latency.
    pub async fn start(kafka: &Kafka, topic: &str) -> anyhow::Result<Self> {
        // The collector's fetch settings; no group: partition 0 is assigned directly.
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("group.id", format!("{topic}.bench"))
            .set("enable.auto.commit", "false")
            .set("max.partition.fetch.bytes", (8 << 20).to_string())
            .set("client.id", "camfleet-bench")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        let (until, rx) = watch::channel(None);
        let (ready_tx, ready) = oneshot::channel();
        let task = tokio::spawn(consume(consumer, ready_tx, rx));
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .create()?;
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic)
                    .key(WARM_UP)
                    .payload(&[]),
                Duration::from_secs(20),
            )
            .await
            .map_err(|(e, _)| e)
            .context("send the warm-up record")?;
        tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .context("the consumer did not receive the warm-up record in 20 s")?
            .context("the consumer stopped before the warm-up record")?;
        Ok(Self { task, until })
    }

    /// Lets the consumer run until it has `frames` frames or `grace` passed,
    /// then returns what it received, in order.
    pub async fn finish(self, frames: u64, grace: Duration) -> anyhow::Result<Vec<Received>> {
        self.until
            .send_replace(Some((frames, Instant::now() + grace)));
        self.task.await?
    }
}

async fn consume(
    consumer: StreamConsumer,
    ready: oneshot::Sender<()>,
    until: watch::Receiver<Until>,
) -> anyhow::Result<Vec<Received>> {
    let mut ready = Some(ready);
    let mut out = Vec::new();
    let mut reassembly = wire::Reassembler::default();
    let mut pending_bytes = 0u64;
    loop {
        if let Some((frames, deadline)) = *until.borrow() {
            if out.len() as u64 >= frames || Instant::now() >= deadline {
                break;
            }
        }
        let msg = match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(e)) => bail!("consume: {e}"),
            Ok(Ok(m)) => m,
        };
        let recv_us = SystemClock.now_us();
        if msg.key() == Some(WARM_UP.as_bytes()) {
            if let Some(tx) = ready.take() {
                let _ = tx.send(());
            }
            continue;
        }
        let headers = msg
            .headers()
            .map(|h| h.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>())
            .unwrap_or_default();
        let (meta, chunk) = wire::parse(msg.key(), headers).context("not a camfleet record")?;
        let value = msg.payload().unwrap_or_default();
        pending_bytes += value.len() as u64;
        if let Some((meta, _)) = reassembly.push(meta, chunk, value)? {
            out.push(Received {
                recv_us,
                capture_us: meta.capture_us,
                bytes: std::mem::take(&mut pending_bytes),
            });
        }
    }
    Ok(out)
}

/// Reads `topic` from the start until the end of its (first) partition or
/// `within`, handing every record to `each`; a fresh group `group`.
pub fn read_to_end(
    bootstrap: &str,
    topic: &str,
    group: &str,
    within: Duration,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .create()?;
    consumer.subscribe(&[topic])?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => each(&m)?,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(())
}
