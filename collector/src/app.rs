//! The collector's main loop: consume -> check continuity -> segment ->
//! archive, and fan out to the processors (`crate::fanout`) -> commit.
//!
//! Architecture Invariant (DESIGN.md invariant 3): an offset is committed only
//! when every frame below it is durable in the archive or was dead-lettered,
//! and every processor has finished (or deliberately skipped) it.
//! The committed offset of partition `p` is the minimum of
//! * the first offset of every open (unarchived) segment from `p`,
//! * the first chunk offset of every partially reassembled frame from `p`,
//! * the first offset of the oldest frame of `p` a processor has not finished,
//! * one past the last record consumed from `p`;
//!
//! and the commit carries each camera's archived watermark, so a replay skips
//! frames already archived and rebuilds the open segments with the same
//! names. Closed segments are written in background tasks, up to
//! [`WRITES_IN_FLIGHT`] at once and one per camera (so a camera's segment
//! and index writes stay in order); a segment in flight bounds its
//! partition's commit like an open one. When all slots are busy the loop
//! waits: a slow archive slows consumption (Kafka holds the backlog)
//! instead of growing memory.

use crate::archive::catalog::{self, CatalogError};
use crate::archive::index::{GapReason, GapRow};
use crate::archive::ArchiveError;
use crate::archive::{mpegts, retention, segment_path, Archive};
use crate::consume::{self, RebalanceLog};
use crate::continuity::{self, Continuity, Verdict};
use crate::fanout::{FanOut, Frame, Processor};
use crate::segmenter::{FrameData, Segment, SegmentFrame, SegmentPolicy, Segmenter};
use crate::service::ServiceState;
use crate::spill::{self, Spiller};
use crate::stats::Stats;
use bytes::Bytes;
use camfleet_shared::config::CollectorConfig;
use camfleet_shared::wire::{self, FrameMeta, Reassembler};
use camfleet_shared::CameraId;
use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Time allowed at shutdown to write open segments and commit.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(8);

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error(transparent)]
    Spill(#[from] spill::SpillError),
}

pub struct Collector<A: Archive + 'static> {
    config: CollectorConfig,
    archive: Arc<A>,
    consumer: StreamConsumer<RebalanceLog>,
    dead_letters: Option<FutureProducer>,
    segmenter: Segmenter,
    /// Where open segments' frame bytes wait (`crate::spill`).
    spiller: Spiller,
    continuity: Continuity,
    reassembler: Reassembler,
    /// Camera -> (partition, offset of the first chunk) of a frame being reassembled.
    partial: HashMap<CameraId, (i32, i64)>,
    /// One past the last offset consumed, per partition.
    consumed: BTreeMap<i32, i64>,
    /// Partitions whose archived watermarks were read from their commit.
    loaded: HashSet<i32>,
    /// Closed segments whose write was interrupted by shutdown; `drain` makes
    /// one last attempt, and until then they hold back the commit.
    pending: Vec<Segment>,
    /// Closed segments being written in the background (at most
    /// [`WRITES_IN_FLIGHT`], one per camera so a camera's segments and index
    /// rewrites stay in order). Each holds back its partition's commit
    /// until it is durable.
    writes: tokio::task::JoinSet<(Segment, bool)>,
    in_flight: HashMap<CameraId, InFlight>,
    /// Gaps seen but not yet in the index: (partition, first sequence number
    /// after the gap, row). They go into the index with the segment that
    /// starts after the gap (a gap always starts a segment).
    gaps_pending: Vec<(i32, u64, GapRow)>,
    /// Last commit sent per partition (offset, metadata), to skip no-op commits.
    committed: HashMap<i32, (i64, String)>,
    /// When retention last ran (it runs every `archive.retention.interval_s`).
    last_retention: Instant,
    /// The processors' safe offsets taken as they stopped (shutdown only).
    frozen_processor_safe: Option<HashMap<i32, Option<i64>>>,
    stats: Arc<Stats>,
    fanout: FanOut,
    shutdown: watch::Receiver<bool>,
    /// Readiness and watchdog (systemd, Kubernetes probes).
    service: Arc<ServiceState>,
}

/// Frames queued per processor (about 4 s of 8 cameras at 30 fps).
pub const PROCESSOR_QUEUE_FRAMES: usize = 1024;

/// Segment writes (segment + index) in flight at once. Measured (issue 9):
/// writing each segment inside the consume loop left Kafka reads and disk
/// writes taking turns, and 200 cameras closing segments together stopped
/// consumption for 200 writes in a row.
pub const WRITES_IN_FLIGHT: usize = 8;

/// A closed segment being written.
struct InFlight {
    partition: i32,
    /// Kafka offset of its first frame: the commit stays below it.
    first_offset: i64,
    /// Its partition was revoked meanwhile: the result no longer counts here.
    revoked: bool,
}

impl<A: Archive + 'static> Collector<A> {
    pub fn new(
        config: CollectorConfig,
        archive: A,
        stats: Arc<Stats>,
        processors: Vec<Box<dyn Processor>>,
        shutdown: watch::Receiver<bool>,
        service: Arc<ServiceState>,
    ) -> Result<Self, CollectorError> {
        let consumer: StreamConsumer<RebalanceLog> = consume::consumer_config(&config.kafka)
            .map_err(|e| CollectorError::Kafka(format!("consumer: {e}")))?
            .create_with_context(RebalanceLog::default())
            .map_err(|e| CollectorError::Kafka(format!("consumer: {e}")))?;
        consumer
            .subscribe(&[&config.kafka.connection.topic])
            .map_err(|e| CollectorError::Kafka(format!("subscribe: {e}")))?;
        let dead_letters = if config.kafka.dead_letter_topic.is_empty() {
            None
        } else {
            Some(
                consume::dead_letter_producer_config(&config.kafka)
                    .map_err(|e| CollectorError::Kafka(format!("dead-letter producer: {e}")))?
                    .create()
                    .map_err(|e| CollectorError::Kafka(format!("dead-letter producer: {e}")))?,
            )
        };
        let policy = SegmentPolicy {
            target_90k: config.archive.segment_target_ms * 90,
            max_bytes: config.archive.segment_max_bytes,
            idle: Duration::from_millis(config.archive.idle_flush_ms),
        };
        let spiller = Spiller::open(&config.archive.spill_dir())?;
        Ok(Self {
            config,
            archive: Arc::new(archive),
            consumer,
            dead_letters,
            segmenter: Segmenter::new(policy),
            spiller,
            continuity: Continuity::default(),
            reassembler: Reassembler::default(),
            partial: HashMap::new(),
            consumed: BTreeMap::new(),
            loaded: HashSet::new(),
            pending: Vec::new(),
            writes: tokio::task::JoinSet::new(),
            in_flight: HashMap::new(),
            gaps_pending: Vec::new(),
            committed: HashMap::new(),
            last_retention: Instant::now(),
            frozen_processor_safe: None,
            stats,
            fanout: FanOut::start(processors, PROCESSOR_QUEUE_FRAMES),
            shutdown,
            service,
        })
    }

    /// Runs until shutdown is signalled, then writes open segments and commits.
    pub async fn run(mut self) -> Result<(), CollectorError> {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut shutdown = self.shutdown.clone();
        loop {
            // The watchdog is fed from here: a hung archive write or commit
            // stops the pings (crate::service).
            self.service.turned();
            if self.consumer.context().has_joined() {
                self.service.joined();
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                msg = self.consumer.recv() => {
                    let msg = msg.map(|m| m.detach());
                    self.apply_revocations();
                    match msg {
                        Ok(m) => {
                            self.handle(m).await?;
                            // Under steady input the branch below is rarely
                            // polled (biased); take finished writes here so
                            // watermarks and commits keep up.
                            let mut finished = false;
                            while let Some(done) = self.writes.try_join_next() {
                                self.finish_write(done);
                                finished = true;
                            }
                            if finished {
                                self.commit(CommitMode::Async);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consume error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                Some(done) = self.writes.join_next(), if !self.writes.is_empty() => {
                    self.finish_write(done);
                    self.commit(CommitMode::Async);
                }
                _ = tick.tick() => {
                    // A failed snapshot is retried at the next tick.
                    let due = self.segmenter.due_snapshots(Some(Instant::now()));
                    self.snapshots(due).await;
                    self.commit(CommitMode::Async);
                    self.retention_if_due().await;
                }
            }
        }
        self.drain().await
    }

    /// Graceful stop, within the budget: write the closed segments still
    /// pending, snapshot the open ones, commit, leave the group.
    ///
    /// Open segments stay open (their frames are not committed): the next
    /// owner of the partition replays them and writes the whole segment
    /// under the same name, so it still starts at its keyframe.
    async fn drain(mut self) -> Result<(), CollectorError> {
        tracing::info!(
            pending = self.pending.len(),
            open = self.segmenter.open_segments(),
            "shutdown: writing pending and open segments"
        );
        let deadline = Instant::now() + SHUTDOWN_BUDGET;
        // Writes in flight see the shutdown and return their segment unless
        // durable; interrupted ones join `pending`.
        while !self.writes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.writes.join_next()).await {
                Ok(Some(done)) => self.finish_write(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!("shutdown budget spent; segments in flight left for replay");
                    break;
                }
            }
        }
        for seg in std::mem::take(&mut self.pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            let camera = seg.camera.clone();
            let gaps = self.gaps_before(&camera, seg.first().meta.seq);
            let write = write_segment(&*self.archive, &self.stats, &seg, &gaps);
            match tokio::time::timeout(left, write).await {
                Ok(Ok(())) => self.mark_archived(&seg),
                // Not committed, so the next owner replays it.
                Ok(Err(e)) => tracing::warn!(%camera, error = %e, "segment left for replay"),
                Err(_) => tracing::warn!(%camera, "shutdown budget spent; segment left for replay"),
            }
        }
        let due = self.segmenter.due_snapshots(None);
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, self.snapshots(due))
            .await
            .is_err()
        {
            tracing::warn!(
                "shutdown budget spent; open segments not snapshotted are left for replay"
            );
        }
        // What the processors have not finished by now stays uncommitted.
        let left = deadline.saturating_duration_since(Instant::now());
        let fanout = std::mem::take(&mut self.fanout);
        let safe: Vec<(i32, Option<i64>)> =
            self.consumed.keys().map(|&p| (p, fanout.safe(p))).collect();
        fanout.stop(left.min(Duration::from_secs(1))).await;
        self.frozen_processor_safe = Some(safe.into_iter().collect());
        self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
        Ok(())
    }

    fn apply_revocations(&mut self) {
        for p in self.consumer.context().take_revoked() {
            let dropped = self.segmenter.discard_partition(p);
            self.continuity.discard_partition(p);
            let cams: Vec<CameraId> = self
                .partial
                .iter()
                .filter(|(_, (pp, _))| *pp == p)
                .map(|(c, _)| c.clone())
                .collect();
            for c in cams {
                self.partial.remove(&c);
                self.reassembler.discard(&c);
            }
            self.pending.retain(|seg| seg.first().partition != p);
            for w in self.in_flight.values_mut().filter(|w| w.partition == p) {
                w.revoked = true;
            }
            self.gaps_pending.retain(|(pp, _, _)| *pp != p);
            self.fanout.revoke(p);
            self.consumed.remove(&p);
            self.loaded.remove(&p);
            self.committed.remove(&p);
            tracing::info!(
                partition = p,
                dropped_open_segments = dropped,
                "partition handed over"
            );
        }
    }

    /// Reads the archived watermarks from partition `p`'s committed metadata.
    fn load_watermarks(&mut self, p: i32) -> Result<(), CollectorError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.config.kafka.connection.topic, p);
        let mut last_err = String::new();
        for attempt in 1..=10 {
            let result = tokio::task::block_in_place(|| {
                self.consumer
                    .committed_offsets(tpl.clone(), Duration::from_secs(10))
            });
            match result {
                Ok(c) => {
                    let metadata = c
                        .elements()
                        .first()
                        .map(|e| e.metadata().to_string())
                        .unwrap_or_default();
                    let w = consume::decode_watermarks(&metadata);
                    tracing::info!(
                        partition = p,
                        cameras = w.len(),
                        "archived watermarks loaded"
                    );
                    self.continuity.load(p, w);
                    self.loaded.insert(p);
                    return Ok(());
                }
                Err(e) => {
                    last_err = e.to_string();
                    tracing::warn!(partition = p, attempt, error = %e, "cannot read committed offsets");
                }
            }
        }
        Err(CollectorError::Kafka(format!(
            "committed offsets of partition {p}: {last_err}"
        )))
    }

    async fn handle(&mut self, msg: OwnedMessage) -> Result<(), CollectorError> {
        let (p, offset) = (msg.partition(), msg.offset());
        if !self.loaded.contains(&p) {
            self.load_watermarks(p)?;
        }
        self.stats.records_consumed(1);
        let headers = msg
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        // Whole frame, its bytes, and the offset of its first record.
        let parsed = wire::parse(msg.key(), headers).and_then(|(meta, chunk)| {
            let payload = msg.payload().unwrap_or_default();
            let camera = meta.camera.clone();
            if chunk.is_some_and(|c| c.index == 0) {
                self.partial.insert(camera.clone(), (p, offset));
            }
            let whole = self.reassembler.push(meta, chunk, payload);
            let first_offset = match (&whole, chunk) {
                (Ok(None), _) => return Ok(None),
                (_, Some(_)) => self.partial.remove(&camera).map_or(offset, |(_, o)| o),
                (_, None) => offset,
            };
            if whole.is_err() {
                self.partial.remove(&camera);
            }
            whole.map(|w| w.map(|(meta, bytes)| (meta, bytes, first_offset)))
        });
        match parsed {
            Err(e) => self.dead_letter(&msg, &e.to_string()).await?,
            Ok(None) => {}
            Ok(Some((_, bytes, _))) if bytes.is_empty() => {
                self.dead_letter(&msg, "record value is empty").await?
            }
            Ok(Some((meta, bytes, first_offset))) => match self.continuity.check(&meta, p) {
                Verdict::Archived => {
                    self.stats.frames_already_archived(1);
                    // Processors did not necessarily finish it before the
                    // restart: they see every replayed frame.
                    self.dispatch(&meta, Bytes::from(bytes), p, first_offset)
                        .await;
                }
                Verdict::Duplicate => self.stats.frames_duplicate(1),
                Verdict::Accept { missing } => {
                    let evicted = self.evicted_ranges(&msg, &meta);
                    if missing > 0 {
                        let split = continuity::split_gap(meta.seq, missing, &evicted);
                        self.stats.sequence_gaps(1);
                        self.stats.sequence_gap_frames(missing);
                        self.stats
                            .sequence_gap_frames_evicted_at_edge(split.evicted_frames);
                        let reason = match (split.evicted_frames, split.unexplained) {
                            (0, _) => "unknown",
                            (_, 0) => "evicted at the edge",
                            _ => "partly evicted at the edge, rest unknown",
                        };
                        let evicted_at_edge = (!split.evicted.is_empty())
                            .then(|| wire::format_evicted(&split.evicted));
                        for row in gap_rows(&meta, missing, &split.evicted) {
                            self.gaps_pending.push((p, meta.seq, row));
                        }
                        tracing::warn!(
                            camera = %meta.camera,
                            seq = meta.seq,
                            missing,
                            evicted_at_edge = evicted_at_edge.as_deref(),
                            evicted_frames = split.evicted_frames,
                            unexplained = split.unexplained,
                            reason,
                            "sequence gap"
                        );
                    } else if !evicted.is_empty() {
                        tracing::debug!(
                            camera = %meta.camera,
                            seq = meta.seq,
                            evicted = %wire::format_evicted(&evicted),
                            "cf.evicted on a frame with no gap before it; ignored"
                        );
                    }
                    self.stats.frames_accepted(1);
                    let bytes = Bytes::from(bytes);
                    self.dispatch(&meta, bytes.clone(), p, first_offset).await;
                    let camera = meta.camera.clone();
                    let frame = SegmentFrame {
                        meta,
                        annex_b: FrameData::Memory(bytes),
                        partition: p,
                        offset: first_offset,
                    };
                    let closed = self.segmenter.push(frame, Instant::now());
                    self.spill_last(&camera);
                    if let Some(seg) = closed {
                        self.start_write(seg).await;
                    }
                }
            },
        }
        self.consumed.insert(p, offset + 1);
        Ok(())
    }

    /// Moves the bytes of `camera`'s newest frame out of memory. On failure
    /// they stay in memory (counted, warned about): nothing is lost.
    fn spill_last(&mut self, camera: &CameraId) {
        let Some(frames) = self.segmenter.open_frames_mut(camera) else {
            return;
        };
        if let Err(e) = self.spiller.spill_last(frames) {
            self.stats.spill_failures(1);
            tracing::warn!(
                %camera,
                dir = %self.spiller.dir().display(),
                error = %e,
                "frame kept in memory: cannot spill it"
            );
        }
    }

    async fn dispatch(&self, meta: &FrameMeta, annex_b: Bytes, partition: i32, offset: i64) {
        if self.fanout.is_empty() {
            return;
        }
        let frame = Frame {
            meta: meta.clone(),
            annex_b,
            partition,
            offset,
        };
        self.fanout.dispatch(frame).await;
    }

    /// The `cf.evicted` ranges of a whole frame, read from the record that
    /// completed it (every chunk of a split frame carries the header, so
    /// this reads it once per frame). Absent or null: none. Malformed: the
    /// frame is kept, the header is warned about, counted, and ignored.
    /// Called for accepted frames only, so a replayed or duplicate record
    /// does not count a malformed header twice.
    fn evicted_ranges(&self, msg: &OwnedMessage, meta: &FrameMeta) -> Vec<RangeInclusive<u64>> {
        let headers = msg
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        consume::evicted_ranges(headers).unwrap_or_else(|e| {
            self.stats.malformed_evicted_headers(1);
            tracing::warn!(
                camera = %meta.camera,
                seq = meta.seq,
                partition = msg.partition(),
                offset = msg.offset(),
                header = wire::header::EVICTED,
                error = %e,
                "malformed cf.evicted header ignored; frame kept"
            );
            Vec::new()
        })
    }

    async fn dead_letter(
        &mut self,
        msg: &OwnedMessage,
        reason: &str,
    ) -> Result<(), CollectorError> {
        self.stats.dead_letter_records(1);
        tracing::warn!(
            partition = msg.partition(),
            offset = msg.offset(),
            reason,
            "malformed record"
        );
        let Some(producer) = &self.dead_letters else {
            return Ok(());
        };
        let source = format!("{}/{}/{}", msg.topic(), msg.partition(), msg.offset());
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        headers = headers
            .insert(Header {
                key: "cf.dlq.error",
                value: Some(reason),
            })
            .insert(Header {
                key: "cf.dlq.source",
                value: Some(&source),
            });
        let mut record = FutureRecord::to(&self.config.kafka.dead_letter_topic).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(v) = msg.payload() {
            record = record.payload(v);
        }
        // Awaited: the offset must not be committed past a record that is in neither place.
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| CollectorError::Kafka(format!("dead-letter write: {e}")))?;
        Ok(())
    }

    /// Starts writing a closed segment in the background, after the
    /// camera's previous write finished and while fewer than
    /// [`WRITES_IN_FLIGHT`] run. The task retries until the segment is
    /// durable or shutdown comes (then the segment waits in `pending` for
    /// `drain`).
    async fn start_write(&mut self, seg: Segment) {
        self.wait_for_camera(&seg.camera).await;
        while self.writes.len() >= WRITES_IN_FLIGHT {
            if let Some(done) = self.writes.join_next().await {
                self.finish_write(done);
            }
        }
        let gaps = self.gaps_before(&seg.camera, seg.first().meta.seq);
        self.in_flight.insert(
            seg.camera.clone(),
            InFlight {
                partition: seg.first().partition,
                first_offset: seg.first().offset,
                revoked: false,
            },
        );
        let (archive, stats) = (self.archive.clone(), self.stats.clone());
        let mut shutdown = self.shutdown.clone();
        self.writes.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                if *shutdown.borrow() {
                    return (seg, false);
                }
                match write_segment(&*archive, &stats, &seg, &gaps).await {
                    Ok(()) => return (seg, true),
                    Err(e) => {
                        stats.archive_retries(1);
                        tracing::warn!(camera = %seg.camera, error = %e, retry_in_ms = backoff.as_millis() as u64, "archive write failed");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => return (seg, false),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    /// Takes the result of a background write.
    fn finish_write(&mut self, done: Result<(Segment, bool), tokio::task::JoinError>) {
        let (seg, durable) = match done {
            Ok(d) => d,
            // A panic in a write task is a bug; the segment was not marked
            // archived, so its frames stay uncommitted and are replayed.
            Err(e) => {
                tracing::error!(error = %e, "segment write task failed");
                return;
            }
        };
        let Some(w) = self.in_flight.remove(&seg.camera) else {
            return;
        };
        if w.revoked {
            return;
        }
        if durable {
            self.mark_archived(&seg);
        } else {
            self.pending.push(seg);
        }
    }

    /// Waits until `camera` has no write in flight (its writes and index
    /// rewrites happen one at a time, in order).
    async fn wait_for_camera(&mut self, camera: &CameraId) {
        while self.in_flight.contains_key(camera) {
            match self.writes.join_next().await {
                Some(done) => self.finish_write(done),
                None => {
                    self.in_flight.clear();
                    return;
                }
            }
        }
    }

    /// Waits until no write is in flight.
    async fn wait_for_writes(&mut self) {
        while let Some(done) = self.writes.join_next().await {
            self.finish_write(done);
        }
        self.in_flight.clear();
    }

    /// Writes the open segments of `cameras` as they stand (snapshots under
    /// their final names) with their index rows (marked incomplete), up to
    /// [`WRITES_IN_FLIGHT`] at once. Their frames become durable but stay
    /// uncommitted until the segments close. A camera's write in flight
    /// finishes first (its writes stay in order); no frame is pushed while
    /// this runs, so no segment closes under a snapshot. Measured (issue 9):
    /// one after another, 200 cameras going quiet together held the loop
    /// for 200 writes. Failures are logged and retried at the next tick.
    async fn snapshots(&mut self, cameras: Vec<CameraId>) {
        for camera in &cameras {
            self.wait_for_camera(camera).await;
        }
        let jobs: Vec<(CameraId, Vec<SegmentFrame>, Vec<GapRow>)> = cameras
            .into_iter()
            .filter_map(|camera| {
                // Frames are metadata and spill-file handles: cheap to clone.
                let frames = self.segmenter.open_frames(&camera)?.to_vec();
                let gaps = self.gaps_before(&camera, frames[0].meta.seq);
                Some((camera, frames, gaps))
            })
            .collect();
        let (archive, stats) = (self.archive.clone(), self.stats.clone());
        let results: Vec<(CameraId, usize, Result<(), CatalogError>)> = futures::stream::iter(jobs)
            .map(|(camera, frames, gaps)| {
                let (archive, stats) = (archive.clone(), stats.clone());
                async move {
                    let r = write_snapshot(&*archive, &stats, &camera, &frames, &gaps).await;
                    (camera, frames.len(), r)
                }
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (camera, count, result) in results {
            match result {
                Ok(()) => {
                    let before = self.segmenter.snapshotted(&camera);
                    self.stats
                        .frames_archived(count.saturating_sub(before) as u64);
                    self.segmenter.mark_snapshotted(&camera, count);
                }
                Err(e) => {
                    self.stats.archive_retries(1);
                    tracing::warn!(%camera, error = %e, "snapshot of an open segment failed");
                }
            }
        }
    }

    /// Gaps waiting for the segment that starts at `first_seq`.
    fn gaps_before(&self, camera: &CameraId, first_seq: u64) -> Vec<GapRow> {
        let camera = camera.as_str();
        self.gaps_pending
            .iter()
            .filter(|(_, next, row)| *next == first_seq && row.camera == camera)
            .map(|(_, _, row)| row.clone())
            .collect()
    }

    fn mark_archived(&mut self, seg: &Segment) {
        self.continuity.archived(&seg.camera, seg.last().meta.seq);
        let (camera, first) = (seg.camera.as_str(), seg.first().meta.seq);
        self.gaps_pending
            .retain(|(_, next, row)| !(row.camera == camera && *next <= first));
        self.stats.segments_written(1);
        // Frames an earlier snapshot wrote were counted then.
        self.stats
            .frames_archived((seg.frames.len() - seg.snapshotted) as u64);
    }

    /// Applies the retention limits every `interval_s`, in this loop so that
    /// no index rewrite of the write path interleaves with retention's.
    /// Failures are logged and retried at the next interval.
    async fn retention_if_due(&mut self) {
        let limits = &self.config.archive.retention;
        if limits.interval_s == 0
            || !limits.is_set()
            || self.last_retention.elapsed() < Duration::from_secs(limits.interval_s)
        {
            return;
        }
        self.last_retention = Instant::now();
        // Retention rewrites index files too: not while a write is in flight.
        self.wait_for_writes().await;
        let limits = &self.config.archive.retention;
        let topic = &self.config.kafka.connection.topic;
        let committed = match tokio::task::block_in_place(|| {
            consume::committed_watermarks(&self.consumer, topic, Duration::from_secs(10))
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "retention skipped: cannot read committed watermarks");
                return;
            }
        };
        let started = Instant::now();
        let result = async {
            let archive = &*self.archive;
            let cameras = catalog::cameras(archive).await?;
            let held = retention::inventory(archive, &cameras).await?;
            let now_us = chrono::Utc::now().timestamp_micros();
            let plan = retention::plan(held, limits, now_us, &committed);
            let done = retention::apply(archive, &plan).await?;
            Ok::<_, CatalogError>((plan, done))
        }
        .await;
        match result {
            Ok((plan, done)) => {
                for ((camera, reason), (segments, bytes)) in retention::summarize(&plan) {
                    tracing::info!(%camera, ?reason, segments, bytes, "retention deleted segments");
                }
                self.stats.retention_segments_deleted(done.segments);
                self.stats.retention_bytes_deleted(done.bytes);
                tracing::debug!(
                    segments = done.segments,
                    bytes = done.bytes,
                    leftovers = done.leftovers,
                    took_ms = started.elapsed().as_millis() as u64,
                    "retention pass"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention pass failed; retried at the next interval")
            }
        }
    }

    /// Commits every partition whose safe offset or watermarks changed.
    fn commit(&mut self, mode: CommitMode) {
        let topic = self.config.kafka.connection.topic.clone();
        let mut tpl = TopicPartitionList::new();
        let mut sent = Vec::new();
        let partitions: BTreeSet<i32> = self.consumed.keys().copied().collect();
        for p in partitions {
            let mut safe = self.consumed[&p];
            if let Some(o) = self.segmenter.lowest_open_offset(p) {
                safe = safe.min(o);
            }
            for (pp, o) in self.partial.values() {
                if *pp == p {
                    safe = safe.min(*o);
                }
            }
            for seg in self.pending.iter().filter(|seg| seg.first().partition == p) {
                safe = safe.min(seg.first().offset);
            }
            for w in self.in_flight.values().filter(|w| w.partition == p) {
                safe = safe.min(w.first_offset);
            }
            let processors = match &self.frozen_processor_safe {
                Some(frozen) => frozen.get(&p).copied().flatten(),
                None => self.fanout.safe(p),
            };
            if let Some(o) = processors {
                safe = safe.min(o);
            }
            let metadata = consume::encode_watermarks(&self.continuity.watermarks(p));
            if self.committed.get(&p) == Some(&(safe, metadata.clone())) {
                continue;
            }
            if tpl
                .add_partition_offset(&topic, p, Offset::Offset(safe))
                .is_err()
            {
                continue;
            }
            if let Some(mut e) = tpl.find_partition(&topic, p) {
                e.set_metadata(metadata.clone());
            }
            sent.push((p, safe, metadata));
        }
        if sent.is_empty() {
            return;
        }
        // A synchronous commit blocks on the broker; keep the runtime's other
        // tasks (metrics) moving meanwhile.
        let result = match mode {
            CommitMode::Sync => {
                tokio::task::block_in_place(|| self.consumer.commit(&tpl, CommitMode::Sync))
            }
            CommitMode::Async => self.consumer.commit(&tpl, CommitMode::Async),
        };
        match result {
            Ok(()) => {
                self.stats.offset_commits(1);
                for (p, safe, metadata) in sent {
                    self.committed.insert(p, (safe, metadata));
                }
            }
            Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
        }
    }
}

/// Writes an open segment's frames so far under its final name, then its
/// index row marked incomplete.
async fn write_snapshot<A: Archive>(
    archive: &A,
    stats: &Stats,
    camera: &CameraId,
    frames: &[SegmentFrame],
    gaps: &[GapRow],
) -> Result<(), CatalogError> {
    let (ts, path) = mux(camera, frames)?;
    let len = ts.len();
    let row = catalog::segment_row(camera, frames, &path, len, false);
    archive.put(&path, Bytes::from(ts)).await?;
    catalog::record_segment(archive, row, gaps).await?;
    stats.index_writes(1);
    tracing::info!(
        location = %archive.location(&path),
        frames = frames.len(),
        bytes = len,
        first_seq = frames[0].meta.seq,
        last_seq = frames[frames.len() - 1].meta.seq,
        complete = false,
        "segment archived"
    );
    stats.archive_bytes(len as u64);
    Ok(())
}

/// Writes a closed segment (replacing its snapshot, if any), then its
/// index row: only then may the watermark and commit pass it.
async fn write_segment<A: Archive>(
    archive: &A,
    stats: &Stats,
    seg: &Segment,
    gaps: &[GapRow],
) -> Result<(), CatalogError> {
    let frames = &seg.frames;
    let (ts, path) = mux(&seg.camera, frames)?;
    let len = ts.len();
    let row = catalog::segment_row(&seg.camera, frames, &path, len, true);
    archive.put(&path, Bytes::from(ts)).await?;
    catalog::record_segment(archive, row, gaps).await?;
    stats.index_writes(1);
    tracing::info!(
        location = %archive.location(&path),
        frames = frames.len(),
        bytes = len,
        first_seq = frames[0].meta.seq,
        last_seq = frames[frames.len() - 1].meta.seq,
        complete = true,
        cut = ?seg.reason,
        "segment archived"
    );
    stats.archive_bytes(len as u64);
    Ok(())
}

/// The index rows of the gap of `missing` numbers before frame `meta`: the
/// parts the agent reported evicted, and the rest as unknown.
fn gap_rows(meta: &FrameMeta, missing: u64, evicted: &[RangeInclusive<u64>]) -> Vec<GapRow> {
    let missing = missing.min(meta.seq);
    let (lo, hi) = (meta.seq - missing, meta.seq - 1);
    let row = |a: u64, b: u64, reason| GapRow {
        camera: meta.camera.to_string(),
        first_missing_seq: a,
        last_missing_seq: b,
        reason,
        next_capture_us: meta.capture_us as i64,
    };
    let mut out = Vec::new();
    let mut next = lo;
    for r in evicted {
        // `split_gap` returns sorted, disjoint ranges inside [lo, hi].
        if *r.start() > next {
            out.push(row(next, r.start() - 1, GapReason::Unknown));
        }
        out.push(row(*r.start(), *r.end(), GapReason::EvictedAtEdge));
        next = r.end() + 1;
    }
    if next <= hi {
        out.push(row(next, hi, GapReason::Unknown));
    }
    out
}

/// MPEG-TS bytes and archive path of a run of one camera's frames
/// (non-empty), their bytes read back from the spill file.
fn mux(camera: &CameraId, frames: &[SegmentFrame]) -> Result<(Vec<u8>, String), ArchiveError> {
    let first = &frames[0].meta;
    let path = segment_path(camera, first.seq, first.capture_us);
    let bytes = spill::load(frames).map_err(|e| ArchiveError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let ts_frames: Vec<mpegts::TsFrame<'_>> = frames
        .iter()
        .zip(&bytes)
        .map(|(f, b)| mpegts::TsFrame {
            pts_90k: f.meta.pts_90k,
            keyframe: f.meta.keyframe,
            annex_b: b,
        })
        .collect();
    Ok((mpegts::mux_segment(&ts_frames), path))
}

/// Builds the archive named in the config and runs a collector until `shutdown`.
pub async fn run<A: Archive + 'static>(
    config: CollectorConfig,
    archive: A,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CollectorError> {
    run_with(config, archive, stats, Vec::new(), shutdown).await
}

/// [`run`] with processors beside the archive (see `crate::fanout`).
pub async fn run_with<A: Archive + 'static>(
    config: CollectorConfig,
    archive: A,
    stats: Arc<Stats>,
    processors: Vec<Box<dyn Processor>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CollectorError> {
    let service = Arc::new(ServiceState::from_env());
    run_service(config, archive, stats, processors, service, shutdown).await
}

/// [`run_with`] reporting readiness and liveness to `service` (systemd's
/// notify socket, the HTTP probes).
pub async fn run_service<A: Archive + 'static>(
    config: CollectorConfig,
    archive: A,
    stats: Arc<Stats>,
    processors: Vec<Box<dyn Processor>>,
    service: Arc<ServiceState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CollectorError> {
    let (tx, rx) = watch::channel(false);
    let collector = Collector::new(config, archive, stats, processors, rx, service.clone())?;
    let run = collector.run();
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r,
        () = shutdown => {
            tracing::info!("shutdown requested");
            service.stopping();
            let _ = tx.send(true);
        }
    }
    run.await
}
