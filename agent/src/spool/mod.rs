//! The disk spool: a [`FrameSink`] that wraps the Kafka sink so that a frame
//! is *accepted* once Kafka acknowledged it or it is durable on disk, and
//! nothing accepted is lost through broker outages, crashes and reboots.
//! The design note with measurements is docs/spool.md.
//!
//! # Routes
//!
//! Each camera has a *lane* with a route:
//! * `Direct` (`outage` mode while Kafka keeps up): frames go straight to the
//!   inner sink. The lane keeps each unacknowledged frame's bytes in memory.
//! * `Spool`: frames are written to the store; the lane's worker sends them
//!   from there, in sequence order, once durable, and deletes them when
//!   acknowledged. `always` mode is permanently on this route (a write-ahead
//!   log: a frame leaves the process only after it is durable).
//!
//! `Direct -> Spool` when a frame stays unacknowledged longer than
//! `switch_after_ms`, unacknowledged bytes exceed `max_in_flight_bytes`, or a
//! delivery fails. At the switch every unacknowledged frame is also written
//! to the spool (marked in flight), so a crash from then on loses none of
//! them; when their original delivery succeeds they are deleted, when it
//! fails they are sent again from the spool. The worker starts draining only
//! when no direct frame is in flight, so a camera's frames reach Kafka in
//! sequence order. `Spool -> Direct` when the camera has nothing spooled and
//! nothing in flight.
//!
//! # On-disk format (sled; all integers of keys big-endian so keys sort)
//!
//! | key                                  | value |
//! |--------------------------------------|-------|
//! | `V`                                  | `camfleet-spool/1` |
//! | `F` camera `\0` seq:u64              | version:u8=1, crc32:u32 LE (of the rest), flags:u8 (bit 0 keyframe), capture_us, pts_90k, epoch: u64 LE, width, height, fps num, fps den: u32 LE, then the Annex-B payload |
//! | `H` camera (in the tree `high`)      | highest seq ever spooled for the camera, u64 BE |
//! | `G` camera `\0` first:u64            | evicted range not yet reported: last:u64 LE, reason:u8 (1 budget, 2 age, 3 disk floor) |
//!
//! Invariants:
//! * a camera's high-water mark is written before its frame, and sled
//!   recovers a prefix of its one log, so a durable frame's number is never
//!   reused (see `sequence.rs`);
//! * a spooled frame is sent only after the flush that made it durable, so a
//!   crash never leaves in Kafka a frame the spool and sequence state forgot;
//! * a frame leaves the spool only after Kafka acknowledged it, or by
//!   eviction of whole GOPs (see `ledger.rs`), which is recorded as a gap
//!   record and reported in the next sent frame's `cf.evicted` header;
//! * the budget is enforced on the bytes the database really uses on disk
//!   (see "Budget" below).
//!
//! Recovery steps at open are listed in `store.rs`.
//!
//! # Budget
//!
//! sled's files are a high-water mark: space freed by deletes is reused for
//! new writes but the files do not shrink while open, so disk usage cannot
//! be lowered by evicting. The spool therefore limits the *live* bytes (the
//! frames it holds) to `live_limit`, and sets that limit from what it
//! measures every second so the files stay within `max_bytes`:
//! * its normal value is `(room - 8 MiB) / 3`, where `room` is the lesser
//!   of `max_bytes` and the database's size plus the free space above
//!   `min_free_bytes`: measured here with
//!   H.264 frames under continuous churn (insert newest, evict oldest),
//!   sled's files reach 1.5-2.2x the live bytes plus about 6 MiB at camera
//!   rates, up to 3x when churning at 15x real time (docs/spool.md);
//! * when the files grow anyway past 80% of `max_bytes` (sled cleans old
//!   segments with a lag, so fast churn grows the files for a while), it
//!   drops below the live bytes by the growth;
//!   when free space is below `min_free_bytes` and still falling, it drops
//!   to 80% of the live bytes (reason `disk_floor`);
//! * it climbs back toward its normal value by 10% per second while the
//!   files do not grow (sled is reusing freed space) and free space is above
//!   the floor;
//! * frames older than `max_age_s` are evicted regardless.
//!
//! A frame that does not fit evicts whole oldest GOPs until it does. When
//! the files near `max_bytes` are mostly garbage (over 3x the live bytes),
//! the store rewrites its live records into fresh files, as at start
//! (store.rs step 5), which also gives back what crash recoveries leak.
//!
//! # Flush policy
//!
//! One flusher task group-commits: after a write it waits until
//! `flush_every_ms` have passed since the previous flush, then fsyncs
//! everything written so far. Frames carry the flush generation they were
//! written in and count as accepted (and become sendable) when that
//! generation is durable.

pub mod control;
pub mod ledger;
pub mod record;
pub mod store;

use crate::sequence::{SequenceError, SequenceStore};
use crate::sink::{AckFuture, Delivery, ErrorKind, FrameSink, SinkError};
use camfleet_shared::clock::Clock;
use camfleet_shared::config::{SpoolConfig, SpoolMode};
use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use futures::stream::{FuturesOrdered, StreamExt};
use ledger::{CameraLedger, Entry, GapReason};
use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use store::{SledStore, SpoolStore, StoreError};
use tokio::sync::{mpsc, oneshot, watch, Notify};

/// Frames a lane may have in flight while draining.
const DRAIN_WINDOW_FRAMES: usize = 256;
/// Payload bytes of the newest spooled frames kept in memory per camera, so
/// `always` mode and short outages drain without reading back from disk
/// (bounded: RSS on the edge box matters more than drain speed from disk).
const CACHE_BYTES: u64 = 4 << 20;
/// How often budgets and in-flight ages are checked.
const TICK: Duration = Duration::from_millis(100);
/// At shutdown, stop waiting for Kafka after this long without an acknowledgement.
const STALLED: Duration = Duration::from_millis(1500);
/// How often the real disk usage and free space are measured.
const MEASURE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

/// Per-camera spool counters (since this process started).
#[derive(Default, Debug)]
pub struct LaneStats {
    /// Frames accepted by being made durable in the spool.
    pub frames_spooled: AtomicU64,
    /// Frames sent from the spool and acknowledged by Kafka.
    pub frames_drained: AtomicU64,
    /// Frames evicted (whole GOPs) or refused for lack of room.
    pub frames_evicted: AtomicU64,
    /// Frames that could not be spooled or sent at all (I/O error, refused record).
    pub frames_failed: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Spool,
}

struct DirectFrame {
    meta: FrameMeta,
    payload: Arc<Vec<u8>>,
    sent_at: Instant,
    /// Also written to the spool (at a switch), so it must be deleted on ack.
    spooled: bool,
    reply: Option<oneshot::Sender<Result<Delivery, SinkError>>>,
}

struct LaneState {
    route: Route,
    ledger: CameraLedger,
    /// Payloads of recently spooled frames, so the drain rarely reads back.
    cache: HashMap<u64, (FrameMeta, Arc<Vec<u8>>)>,
    cache_bytes: u64,
    direct: VecDeque<DirectFrame>,
    direct_bytes: u64,
    /// A frame was refused for lack of room: drop until the next keyframe,
    /// so no half GOP is spooled.
    dropping: bool,
    /// Highest seq ever written to the spool (mirrors the `H` record).
    high: Option<u64>,
    /// Drain paused until then (after failed deliveries).
    retry_at: Option<Instant>,
    retry_delay: Duration,
    seq: Option<SequenceStore>,
}

pub struct Lane {
    camera: CameraId,
    state: Mutex<LaneState>,
    wake: Notify,
    pub stats: LaneStats,
    direct_tx: mpsc::UnboundedSender<(u64, AckFuture)>,
}

struct Budget {
    /// Most live bytes the spool may hold now (see "Budget" above).
    live_limit: u64,
    /// Why the limit is where it is, for eviction records.
    reason: GapReason,
    disk: u64,
    free: u64,
    measured_at: Instant,
}

struct Shared<S: FrameSink> {
    inner: Arc<S>,
    store: Arc<dyn SpoolStore>,
    /// Replaced whole when the fleet changes the budget (`set_limits`).
    cfg: RwLock<Arc<SpoolConfig>>,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    lanes: Mutex<HashMap<CameraId, Arc<Lane>>>,
    /// Generation of writes not yet flushed; frames record it when written.
    write_gen: RwLock<u64>,
    /// Highest generation known durable.
    durable_tx: watch::Sender<u64>,
    dirty: Notify,
    budget: Mutex<Budget>,
    closing: AtomicBool,
    /// Workers wait for this: the recovered state is complete.
    ready: watch::Sender<bool>,
    /// Set once if the database was moved aside at open.
    quarantined: Option<PathBuf>,
}

/// The spool sink. Cheap to share (`Arc`).
pub struct SpoolSink<S: FrameSink> {
    shared: Arc<Shared<S>>,
}

/// What a camera needs to start encoding.
pub struct CameraStart {
    pub first_seq: u64,
    pub epoch: u64,
}

impl<S: FrameSink> SpoolSink<S> {
    /// Opens the spool in `dir` (recovering and, if needed, quarantining or
    /// reclaiming it) and starts its flusher, budget keeper and a worker for
    /// every camera that has frames waiting. Call inside a tokio runtime.
    pub fn open(
        cfg: &SpoolConfig,
        dir: &Path,
        inner: Arc<S>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, SpoolError> {
        let t = Instant::now();
        let (store, recovered) = SledStore::open(dir)?;
        let store: Arc<dyn SpoolStore> = Arc::new(store);
        let (durable_tx, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            inner,
            budget: Mutex::new(Budget {
                live_limit: normal_live_limit(cfg, store.disk_bytes(), store.free_bytes()),
                reason: limit_reason(cfg, store.disk_bytes(), store.free_bytes()),
                disk: store.disk_bytes(),
                free: store.free_bytes(),
                measured_at: Instant::now(),
            }),
            store,
            cfg: RwLock::new(Arc::new(cfg.clone())),
            dir: dir.to_path_buf(),
            clock,
            lanes: Mutex::new(HashMap::new()),
            write_gen: RwLock::new(1),
            durable_tx,
            dirty: Notify::new(),
            closing: AtomicBool::new(false),
            ready: watch::channel(false).0,
            quarantined: recovered.quarantined.clone(),
        });
        let sink = Arc::new(Self { shared });
        let frames = recovered.frames.len();
        for (cam, high) in &recovered.high {
            sink.lane(cam).state.lock().expect("lane").high = Some(*high);
        }
        for (cam, ledger) in recovered_ledgers(recovered.frames, recovered.gaps) {
            let lane = sink.lane(&cam);
            let mut st = lane.state.lock().expect("lane");
            if !ledger.is_empty() {
                st.route = Route::Spool;
            }
            st.ledger = ledger;
        }
        sink.shared.ready.send_replace(true);
        if recovered.quarantined.is_some() {
            metrics::counter!("camfleet_agent_spool_quarantined_total").increment(1);
        }
        tracing::info!(
            dir = %dir.display(),
            frames,
            live_bytes = sink.shared.live_bytes(),
            disk_bytes = sink.shared.store.disk_bytes(),
            reclaimed_from = recovered.reclaimed.map(|r| r.0),
            damaged = recovered.damaged,
            quarantined = recovered.quarantined.is_some(),
            ms = t.elapsed().as_millis() as u64,
            "spool opened"
        );
        tokio::spawn(flusher(sink.shared.clone()));
        tokio::spawn(keeper(sink.shared.clone()));
        Ok(sink)
    }

    /// The lane of `camera`, created (with its worker) on first use.
    fn lane(&self, camera: &CameraId) -> Arc<Lane> {
        let mut lanes = self.shared.lanes.lock().expect("lanes");
        if let Some(l) = lanes.get(camera) {
            return l.clone();
        }
        let (direct_tx, direct_rx) = mpsc::unbounded_channel();
        let route = match self.shared.cfg().mode {
            SpoolMode::Always => Route::Spool,
            SpoolMode::Outage => Route::Direct,
        };
        let lane = Arc::new(Lane {
            camera: camera.clone(),
            state: Mutex::new(LaneState {
                route,
                ledger: CameraLedger::default(),
                cache: HashMap::new(),
                cache_bytes: 0,
                direct: VecDeque::new(),
                direct_bytes: 0,
                dropping: false,
                high: None,
                retry_at: None,
                retry_delay: Duration::from_millis(250),
                seq: None,
            }),
            wake: Notify::new(),
            stats: LaneStats::default(),
            direct_tx,
        });
        lanes.insert(camera.clone(), lane.clone());
        tokio::spawn(worker(self.shared.clone(), lane.clone(), direct_rx));
        lane
    }

    /// Opens `camera`'s sequence state, continuing exactly after what the
    /// spool and the state file know (see `sequence.rs`).
    pub fn open_camera(
        &self,
        data_dir: &Path,
        camera: &CameraId,
    ) -> Result<CameraStart, SpoolError> {
        let lane = self.lane(camera);
        let mut st = lane.state.lock().expect("lane");
        let high = match self.shared.quarantined {
            Some(_) => None,
            None => Some(st.high),
        };
        let seq = SequenceStore::open(data_dir, camera.site(), camera.camera(), high)?;
        let start = CameraStart {
            first_seq: seq.first(),
            epoch: seq.epoch(),
        };
        st.seq = Some(seq);
        Ok(start)
    }

    /// Records `camera`'s exact next sequence number (clean stop).
    pub fn close_camera(&self, camera: &CameraId, next_seq: u64) -> Result<(), SpoolError> {
        let lane = self.lane(camera);
        let seq = lane.state.lock().expect("lane").seq.take();
        if let Some(seq) = seq {
            seq.close(next_seq)?;
        }
        Ok(())
    }

    pub fn lane_stats(&self, camera: &CameraId) -> Option<Arc<Lane>> {
        self.shared
            .lanes
            .lock()
            .expect("lanes")
            .get(camera)
            .cloned()
    }

    /// The status report (`camfleet-agent spool status`).
    pub fn status(&self) -> serde_json::Value {
        let lanes = self.shared.lanes();
        let now = self.shared.clock.now_us();
        let mut cams = Vec::new();
        for lane in lanes {
            let st = lane.state.lock().expect("lane");
            let route = match st.route {
                Route::Direct => "direct",
                Route::Spool => "spool",
            };
            let evicted = lane.stats.frames_evicted.load(Relaxed);
            cams.push(CameraStatus::of(
                &lane.camera,
                &st.ledger,
                now,
                Some(route),
                Some(evicted),
            ));
        }
        let mut status = status_json(&self.shared.dir, self.shared.store.disk_bytes(), true, cams);
        // The limits in force: a fleet config changes them live.
        let cfg = self.shared.cfg();
        status["limits"] = serde_json::json!({
            "max_bytes": cfg.max_bytes,
            "max_age_s": cfg.max_age_s,
            "min_free_bytes": cfg.min_free_bytes,
        });
        status
    }

    /// Runs the integrity check on the open database.
    pub fn verify(&self) -> Result<Vec<String>, SpoolError> {
        Ok(self.shared.store.verify()?)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Applies a new budget (`max_bytes`, `max_age_s`, `min_free_bytes`)
    /// live; the keeper enforces it on its next round. The other spool
    /// settings are fixed for the life of the process (the fleet link
    /// rejects changes to them).
    pub fn set_limits(&self, cfg: &SpoolConfig) {
        let mut current = (*self.shared.cfg()).clone();
        current.max_bytes = cfg.max_bytes;
        current.max_age_s = cfg.max_age_s;
        current.min_free_bytes = cfg.min_free_bytes;
        *self.shared.cfg.write().expect("spool cfg") = Arc::new(current);
        self.shared.dirty.notify_one();
    }
}

/// The live-bytes limit that keeps sled's files within `max_bytes` and
/// above the free-space floor (see "Budget" above).
fn normal_live_limit(cfg: &SpoolConfig, disk: u64, free: u64) -> u64 {
    let room = cfg
        .max_bytes
        .min(disk.saturating_add(free.saturating_sub(cfg.min_free_bytes)));
    room.saturating_sub(8 << 20) / 3
}

/// Which limit binds: the budget or the free-space floor.
fn limit_reason(cfg: &SpoolConfig, disk: u64, free: u64) -> GapReason {
    if free.saturating_sub(cfg.min_free_bytes) < cfg.max_bytes.saturating_sub(disk) {
        GapReason::DiskFloor
    } else {
        GapReason::Budget
    }
}

/// Registers the agent's metrics with their help texts.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "camfleet_agent_spool_bytes",
        metrics::Unit::Bytes,
        "Bytes the spool uses on disk (measured every second)."
    );
    metrics::describe_gauge!(
        "camfleet_agent_spool_free_bytes",
        metrics::Unit::Bytes,
        "Free bytes on the spool's filesystem."
    );
    metrics::describe_gauge!(
        "camfleet_agent_spool_oldest_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest frame waiting in the spool (0 when empty)."
    );
    metrics::describe_counter!(
        "camfleet_agent_frames_spooled_total",
        "Frames accepted by being made durable in the spool."
    );
    metrics::describe_counter!(
        "camfleet_agent_frames_drained_total",
        "Spooled frames acknowledged by Kafka."
    );
    metrics::describe_counter!(
        "camfleet_agent_frames_evicted_total",
        "Frames evicted from the spool (whole GOPs) or refused for lack of room, by reason."
    );
}

/// One camera's line in `spool status`.
pub struct CameraStatus {
    pub camera: String,
    pub frames: u64,
    pub bytes: u64,
    pub oldest_age_s: Option<f64>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub evicted_pending: Vec<(u64, u64, GapReason)>,
    pub route: Option<&'static str>,
    pub frames_evicted: Option<u64>,
}

/// Rebuilds each camera's ledger from what the store recovered (all durable).
fn recovered_ledgers(
    frames: Vec<(CameraId, u64, record::FrameHeader, u64)>,
    gaps: Vec<(CameraId, u64, u64, GapReason)>,
) -> HashMap<CameraId, CameraLedger> {
    let mut by_cam: HashMap<CameraId, CameraLedger> = HashMap::new();
    for (cam, seq, h, bytes) in frames {
        by_cam.entry(cam).or_default().insert(
            seq,
            Entry {
                bytes,
                keyframe: h.keyframe,
                capture_us: h.capture_us,
                gen: 0,
                in_flight: false,
            },
        );
    }
    for (cam, first, last, reason) in gaps {
        by_cam.entry(cam).or_default().add_gap(first, last, reason);
    }
    by_cam
}

/// Status and problems of a spool no agent holds open.
pub fn inspect(dir: &Path) -> Result<(serde_json::Value, Vec<String>), StoreError> {
    let (store, rec) = SledStore::inspect(dir)?;
    let mut problems = store.verify()?;
    if rec.damaged > 0 {
        problems.push(format!("{} records cannot be parsed", rec.damaged));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let cams = recovered_ledgers(rec.frames, rec.gaps)
        .into_iter()
        .map(|(cam, l)| CameraStatus::of(&cam, &l, now, None, None))
        .collect();
    Ok((status_json(dir, store.disk_bytes(), false, cams), problems))
}

impl CameraStatus {
    fn of(
        camera: &CameraId,
        l: &CameraLedger,
        now_us: u64,
        route: Option<&'static str>,
        frames_evicted: Option<u64>,
    ) -> Self {
        Self {
            camera: camera.to_string(),
            frames: l.len() as u64,
            bytes: l.live_bytes(),
            oldest_age_s: l
                .oldest_capture_us()
                .map(|t| now_us.saturating_sub(t) as f64 / 1e6),
            first_seq: l.first_seq(),
            last_seq: l.last_seq(),
            evicted_pending: l
                .pending_gaps()
                .map(|(f, g)| (f, g.last, g.reason))
                .collect(),
            route,
            frames_evicted,
        }
    }
}

/// The JSON of `spool status`, from a running agent or an opened spool.
pub fn status_json(
    dir: &Path,
    disk_bytes: u64,
    running: bool,
    mut cams: Vec<CameraStatus>,
) -> serde_json::Value {
    cams.sort_by(|a, b| a.camera.cmp(&b.camera));
    serde_json::json!({
        "dir": dir.display().to_string(),
        "agent_running": running,
        "disk_bytes": disk_bytes,
        "live_bytes": cams.iter().map(|c| c.bytes).sum::<u64>(),
        "free_bytes": store::free_bytes(dir),
        "cameras": cams.iter().map(|c| serde_json::json!({
            "camera": c.camera,
            "frames": c.frames,
            "bytes": c.bytes,
            "oldest_age_s": c.oldest_age_s,
            "first_seq": c.first_seq,
            "last_seq": c.last_seq,
            "route": c.route,
            "frames_evicted_since_start": c.frames_evicted,
            "evicted_unreported": c.evicted_pending.iter().map(|(f, l, r)| serde_json::json!({
                "first": f, "last": l, "reason": r.as_str()
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

impl<S: FrameSink> Shared<S> {
    fn cfg(&self) -> Arc<SpoolConfig> {
        self.cfg.read().expect("spool cfg").clone()
    }

    fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Closes the current write generation before a flush; returns it.
    /// Frames written from now on belong to the next one.
    fn seal_generation(&self) -> u64 {
        let mut g = self.write_gen.write().expect("gen");
        *g += 1;
        *g - 1
    }

    fn durable_gen(&self) -> u64 {
        *self.durable_tx.borrow()
    }

    /// Writes a frame to the store; returns (generation, bytes).
    fn put(&self, meta: &FrameMeta, payload: &[u8]) -> Result<(u64, u64), StoreError> {
        let gen_guard = self.write_gen.read().expect("gen");
        let bytes = self.store.put_frame(meta, payload)?;
        let gen = *gen_guard;
        drop(gen_guard);
        self.dirty.notify_one();
        Ok((gen, bytes))
    }

    /// Writes `frame` into `st` (store + ledger + cache). The caller holds the lane lock.
    fn spool_frame(
        &self,
        lane: &Lane,
        st: &mut LaneState,
        meta: &FrameMeta,
        payload: &Arc<Vec<u8>>,
        in_flight: bool,
    ) -> Result<u64, StoreError> {
        let (gen, bytes) = self.put(meta, payload)?;
        st.high = Some(st.high.map_or(meta.seq, |h| h.max(meta.seq)));
        st.ledger.insert(
            meta.seq,
            Entry {
                bytes,
                keyframe: meta.keyframe,
                capture_us: meta.capture_us,
                gen,
                in_flight,
            },
        );
        if st.cache_bytes + payload.len() as u64 <= CACHE_BYTES {
            st.cache_bytes += payload.len() as u64;
            st.cache.insert(meta.seq, (meta.clone(), payload.clone()));
        }
        lane.stats.frames_spooled.fetch_add(1, Relaxed);
        metrics::counter!("camfleet_agent_frames_spooled_total", "camera" => lane.camera.to_string())
            .increment(1);
        Ok(gen)
    }

    fn lanes(&self) -> Vec<Arc<Lane>> {
        self.lanes
            .lock()
            .expect("lanes")
            .values()
            .cloned()
            .collect()
    }

    fn live_bytes(&self) -> u64 {
        self.lanes()
            .iter()
            .map(|l| l.state.lock().expect("lane").ledger.live_bytes())
            .sum()
    }

    /// Is there room for `incoming` more bytes under the live limit? Evicts
    /// whole oldest GOPs until there is; false if eviction cannot make room.
    fn make_room(&self, incoming: u64) -> bool {
        let (limit, reason) = {
            let b = self.budget.lock().expect("budget");
            (b.live_limit, b.reason)
        };
        let mut live = self.live_bytes();
        while live + incoming > limit {
            match self.evict_oldest(reason, None) {
                Some(bytes) => live = live.saturating_sub(bytes),
                None => return false,
            }
        }
        true
    }

    /// Re-measures the files and free space and moves the live limit.
    fn remeasure(&self, disk: u64, free: u64) {
        let live = self.live_bytes();
        let (max, floor) = (self.cfg().max_bytes, self.cfg().min_free_bytes);
        let mut b = self.budget.lock().expect("budget");
        let (grew, falling) = (disk > b.disk, free < b.free);
        let mut limit = b.live_limit;
        // sled cleans old segments with a lag, so under fast churn its files
        // keep growing for a while after the live data stops growing: from
        // 80% of the budget on, growth takes the limit below the live bytes
        // by as much. Files that did not grow reuse freed space: the limit
        // may climb back, 10% per measurement.
        let growth = disk.saturating_sub(b.disk);
        if disk > max / 5 * 4 && grew {
            limit = limit.min(live.saturating_sub(growth));
            b.reason = GapReason::Budget;
        } else if !grew && free > floor {
            limit += limit / 10;
        }
        if free < floor && falling {
            limit = limit.min(live * 4 / 5);
            b.reason = GapReason::DiskFloor;
        }
        let normal = normal_live_limit(&self.cfg(), disk, free);
        if normal < limit {
            limit = normal;
            b.reason = limit_reason(&self.cfg(), disk, free);
        }
        b.live_limit = limit.max(1 << 20);
        tracing::debug!(disk, free, live, live_limit = b.live_limit, "spool budget");
        b.disk = disk;
        b.free = free;
        b.measured_at = Instant::now();
    }

    /// Evicts the globally oldest evictable unit (or, with `older_than_us`,
    /// only one whose first frame is older). Returns the bytes evicted, or
    /// `None` if nothing could be.
    fn evict_oldest(&self, reason: GapReason, older_than_us: Option<u64>) -> Option<u64> {
        let lanes = self.lanes();
        let mut best: Option<(u64, Arc<Lane>)> = None;
        for lane in &lanes {
            let st = lane.state.lock().expect("lane");
            if let Some(r) = st.ledger.evictable() {
                let t = st.ledger.get(*r.start()).map_or(u64::MAX, |e| e.capture_us);
                if best.as_ref().is_none_or(|(bt, _)| t < *bt) {
                    best = Some((t, lane.clone()));
                }
            }
        }
        let (t, lane) = best?;
        if older_than_us.is_some_and(|limit| t >= limit) {
            return None;
        }
        let mut st = lane.state.lock().expect("lane");
        let range = st.ledger.evictable()?;
        let seqs: Vec<u64> = st
            .ledger
            .frames()
            .filter(|(s, _)| range.contains(s))
            .map(|(s, _)| s)
            .collect();
        if let Err(e) = self.store.remove_frames(&lane.camera, &seqs) {
            tracing::error!(camera = %lane.camera, error = %e, "spool eviction failed");
            return None;
        }
        let (frames, bytes, gap) = st.ledger.evict(range.clone(), reason);
        for s in &seqs {
            if let Some((_, p)) = st.cache.remove(s) {
                st.cache_bytes -= p.len() as u64;
            }
        }
        drop(st);
        self.record_gap(&lane.camera, &gap);
        lane.stats.frames_evicted.fetch_add(frames, Relaxed);
        metrics::counter!("camfleet_agent_frames_evicted_total", "camera" => lane.camera.to_string(), "reason" => reason.as_str())
            .increment(frames);
        tracing::warn!(camera = %lane.camera, first = range.start(), last = range.end(), frames, reason = reason.as_str(), "spool full: evicted the oldest GOP");
        self.dirty.notify_one();
        Some(bytes)
    }

    fn record_gap(&self, camera: &CameraId, gap: &ledger::RecordedGap) {
        let res = self
            .store
            .put_gap(camera, gap.first, gap.last, gap.reason)
            .and_then(|()| self.store.remove_gaps(camera, &gap.absorbed));
        if let Err(e) = res {
            tracing::error!(%camera, error = %e, "cannot record an evicted range");
        }
    }

    /// Unacknowledged direct frames go into the spool (a switch, or shutdown).
    fn spool_in_flight(&self, lane: &Lane, st: &mut LaneState) {
        let mut pending = std::mem::take(&mut st.direct);
        for d in pending.iter_mut() {
            if !d.spooled {
                match self.spool_frame(lane, st, &d.meta, &d.payload, true) {
                    Ok(gen) => {
                        d.spooled = true;
                        if let Some(reply) = d.reply.take() {
                            tokio::spawn(reply_when_durable(
                                self.durable_tx.subscribe(),
                                gen,
                                reply,
                            ));
                        }
                    }
                    Err(e) => tracing::error!(camera = %lane.camera, seq = d.meta.seq, error = %e,
                        "cannot spool an unacknowledged frame; it depends on Kafka alone"),
                }
            }
        }
        st.direct = pending;
    }

    fn switch_to_spool(&self, lane: &Lane, st: &mut LaneState, why: &str) {
        if st.route == Route::Spool {
            return;
        }
        st.route = Route::Spool;
        tracing::warn!(camera = %lane.camera, unacknowledged = st.direct.len(), why, "Kafka is not keeping up: spooling to disk");
        self.spool_in_flight(lane, st);
    }
}

async fn reply_when_durable(
    mut durable: watch::Receiver<u64>,
    gen: u64,
    reply: oneshot::Sender<Result<Delivery, SinkError>>,
) {
    let _ = durable.wait_for(|d| *d >= gen).await;
    let _ = reply.send(Ok(Delivery::Spooled));
}

impl<S: FrameSink> FrameSink for SpoolSink<S> {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        _evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let sh = &self.shared;
        let lane = self.lane(&meta.camera);
        let payload = Arc::new(payload.to_vec());
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut st = lane.state.lock().expect("lane");
            if st.route == Route::Direct {
                let now = Instant::now();
                let too_old = st.direct.front().is_some_and(|d| {
                    now - d.sent_at > Duration::from_millis(sh.cfg().switch_after_ms)
                });
                if too_old {
                    sh.switch_to_spool(
                        &lane,
                        &mut st,
                        "a frame waited longer than switch_after_ms",
                    );
                } else if st.direct_bytes + payload.len() as u64 > sh.cfg().max_in_flight_bytes {
                    sh.switch_to_spool(
                        &lane,
                        &mut st,
                        "unacknowledged bytes above max_in_flight_bytes",
                    );
                }
            }
            if st.route == Route::Direct {
                if let Some(seq) = st.seq.as_mut() {
                    // One fsync per lease, not per frame.
                    tokio::task::block_in_place(|| seq.lease(meta.seq, true))
                        .map_err(|e| SinkError::Setup(e.to_string()))?;
                }
                st.direct_bytes += payload.len() as u64;
                st.direct.push_back(DirectFrame {
                    meta: meta.clone(),
                    payload: payload.clone(),
                    sent_at: Instant::now(),
                    spooled: false,
                    reply: Some(reply_tx),
                });
            } else {
                if let Some(seq) = st.seq.as_mut() {
                    tokio::task::block_in_place(|| seq.lease(meta.seq, false))
                        .map_err(|e| SinkError::Setup(e.to_string()))?;
                }
                let drop_frame = if st.dropping && !meta.keyframe {
                    true
                } else {
                    drop(st);
                    let room = sh.make_room(payload.len() as u64 + 64);
                    st = lane.state.lock().expect("lane");
                    st.dropping = !room;
                    !room
                };
                if drop_frame {
                    // No room even after evicting everything evictable: this
                    // frame (and the rest of its GOP) is lost, visibly.
                    let gap = st.ledger.add_gap(meta.seq, meta.seq, GapReason::Budget);
                    st.ledger.evicted_frames += 1;
                    sh.record_gap(&meta.camera, &gap);
                    lane.stats.frames_evicted.fetch_add(1, Relaxed);
                    metrics::counter!("camfleet_agent_frames_evicted_total", "camera" => meta.camera.to_string(), "reason" => "budget").increment(1);
                    let (camera, seq) = (meta.camera.to_string(), meta.seq);
                    return Ok(Box::pin(
                        async move { Err(SinkError::Evicted { camera, seq }) },
                    ));
                }
                let gen = sh
                    .spool_frame(&lane, &mut st, meta, &payload, false)
                    .map_err(|e| {
                        lane.stats.frames_failed.fetch_add(1, Relaxed);
                        SinkError::Delivery {
                            camera: meta.camera.to_string(),
                            seq: meta.seq,
                            kind: ErrorKind::Other,
                            message: format!("cannot spool: {e}"),
                        }
                    })?;
                drop(st);
                lane.wake.notify_one();
                let mut durable = sh.durable_tx.subscribe();
                return Ok(Box::pin(async move {
                    let _ = durable.wait_for(|d| *d >= gen).await;
                    Ok(Delivery::Spooled)
                }));
            }
        }
        match sh.inner.enqueue(meta, &payload, &[]).await {
            Ok(ack) => {
                let _ = lane.direct_tx.send((meta.seq, ack));
            }
            Err(e) => {
                // Refused locally (e.g. a fatal producer state): keep it on disk.
                let mut st = lane.state.lock().expect("lane");
                sh.switch_to_spool(&lane, &mut st, "the producer refused a frame");
                tracing::warn!(error = %e, "frame refused by the producer; spooled");
                let _ = lane
                    .direct_tx
                    .send((meta.seq, Box::pin(async move { Err(e) })));
            }
        }
        Ok(Box::pin(async move {
            reply_rx.await.unwrap_or_else(|_| {
                Err(SinkError::Delivery {
                    camera: String::new(),
                    seq: 0,
                    kind: ErrorKind::Other,
                    message: "spool worker stopped".into(),
                })
            })
        }))
    }

    async fn flush(&self, timeout: Duration) -> Result<(), SinkError> {
        let sh = &self.shared;
        sh.closing.store(true, Relaxed);
        let deadline = Instant::now() + timeout;
        let lanes = sh.lanes();
        // Keep sending (direct acks and drains) until everything is in Kafka,
        // the link is known down, nothing has been acknowledged for a while
        // (a black-holed link), or time is up.
        let mut best = u64::MAX;
        let mut progress_at = Instant::now();
        while Instant::now() < deadline && progress_at.elapsed() < STALLED {
            let mut outstanding = 0;
            let busy = lanes.iter().fold(false, |busy, l| {
                let st = l.state.lock().expect("lane");
                outstanding += (st.direct.len() + st.ledger.len()) as u64;
                let link_down = st.retry_at.is_some();
                busy || !st.direct.is_empty() || (!st.ledger.is_empty() && !link_down)
            });
            if !busy {
                break;
            }
            if outstanding < best {
                best = outstanding;
                progress_at = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Whatever Kafka has not acknowledged stays in the spool for the next start.
        for l in &lanes {
            let mut st = l.state.lock().expect("lane");
            sh.spool_in_flight(l, &mut st);
        }
        let store = sh.store.clone();
        let gen = sh.seal_generation();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| SinkError::Setup(format!("spool flush task: {e}")))?
            .map_err(|e| SinkError::Setup(format!("spool flush: {e}")))?;
        sh.durable_tx.send_replace(gen);
        Ok(())
    }
}

/// Group commit: fsync at most every `flush_every_ms`, then publish the
/// durable generation.
async fn flusher<S: FrameSink>(sh: Arc<Shared<S>>) {
    let every = Duration::from_millis(sh.cfg().flush_every_ms());
    let mut last = Instant::now() - every;
    loop {
        sh.dirty.notified().await;
        let wait = (last + every).saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let gen = sh.seal_generation();
        let store = sh.store.clone();
        last = Instant::now();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {
                sh.durable_tx.send_replace(gen);
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool flush failed; retrying");
                sh.dirty.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => tracing::error!(error = %e, "spool flush task failed"),
        }
    }
}

/// Measures disk use and free space, evicts by age and size, exports gauges,
/// and switches lanes whose direct frames wait too long.
async fn keeper<S: FrameSink>(sh: Arc<Shared<S>>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let measure = sh.budget.lock().expect("budget").measured_at.elapsed() >= MEASURE_EVERY;
        if measure {
            let store = sh.store.clone();
            let (disk, free) =
                tokio::task::spawn_blocking(move || (store.disk_bytes(), store.free_bytes()))
                    .await
                    .unwrap_or((0, u64::MAX));
            sh.remeasure(disk, free);
            // sled's files only grow while open; when they are mostly
            // garbage near the budget, rewrite the live records (a pause of
            // the store proportional to the live data).
            let live = sh.live_bytes();
            if disk > sh.cfg().max_bytes / 10 * 9 && disk > 3 * live + (16 << 20) {
                let store = sh.store.clone();
                match tokio::task::spawn_blocking(move || store.reclaim()).await {
                    Ok(Ok((before, after))) => {
                        tracing::info!(
                            before,
                            after,
                            live,
                            "spool files rewritten to give back space"
                        );
                        sh.remeasure(after, free + before.saturating_sub(after));
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "spool reclaim failed"),
                    Err(e) => tracing::error!(error = %e, "spool reclaim task failed"),
                }
            }
            metrics::gauge!("camfleet_agent_spool_bytes").set(disk as f64);
            metrics::gauge!("camfleet_agent_spool_free_bytes").set(free as f64);
        }
        // Age first, then size and the disk floor.
        let max_age_us = sh.cfg().max_age_s * 1_000_000;
        let limit = sh.now_us().saturating_sub(max_age_us);
        while sh.evict_oldest(GapReason::Age, Some(limit)).is_some() {}
        sh.make_room(0);

        let lanes = sh.lanes();
        let now_us = sh.now_us();
        let mut oldest = None::<u64>;
        let switch_after = Duration::from_millis(sh.cfg().switch_after_ms);
        for lane in lanes {
            let mut st = lane.state.lock().expect("lane");
            if let Some(t) = st.ledger.oldest_capture_us() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
            if st.route == Route::Direct
                && st
                    .direct
                    .front()
                    .is_some_and(|d| d.sent_at.elapsed() > switch_after)
            {
                sh.switch_to_spool(&lane, &mut st, "a frame waited longer than switch_after_ms");
                drop(st);
                lane.wake.notify_one();
            }
        }
        metrics::gauge!("camfleet_agent_spool_oldest_age_seconds")
            .set(oldest.map_or(0.0, |t| now_us.saturating_sub(t) as f64 / 1e6));
    }
}

type DrainAck = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, Vec<u64>, Result<Delivery, SinkError>)> + Send>,
>;
type DirectAck =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Result<Delivery, SinkError>)> + Send>>;

/// Per-camera worker: resolves direct deliveries in order and drains the spool.
async fn worker<S: FrameSink>(
    sh: Arc<Shared<S>>,
    lane: Arc<Lane>,
    mut direct_rx: mpsc::UnboundedReceiver<(u64, AckFuture)>,
) {
    // Recovered frames and gaps must all be in the ledger before the first send.
    let _ = sh.ready.subscribe().wait_for(|r| *r).await;
    let mut direct_acks: FuturesOrdered<DirectAck> = FuturesOrdered::new();
    let mut drain_acks: FuturesOrdered<DrainAck> = FuturesOrdered::new();
    let mut durable = sh.durable_tx.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Fill the drain window.
        if drain_acks.len() < DRAIN_WINDOW_FRAMES {
            let batch = next_to_drain(&sh, &lane, drain_acks.len());
            for (meta, payload, gaps) in batch {
                let seq = meta.seq;
                let ranges: Vec<RangeInclusive<u64>> = gaps.iter().map(|(f, l)| *f..=*l).collect();
                let firsts: Vec<u64> = gaps.iter().map(|(f, _)| *f).collect();
                let fut: DrainAck = match sh.inner.enqueue(&meta, &payload, &ranges).await {
                    Ok(ack) => Box::pin(async move { (seq, firsts, ack.await) }),
                    Err(e) => Box::pin(async move { (seq, firsts, Err(e)) }),
                };
                drain_acks.push_back(fut);
            }
        }
        tokio::select! {
            msg = direct_rx.recv() => match msg {
                Some((seq, ack)) => direct_acks.push_back(Box::pin(async move { (seq, ack.await) })),
                None => return,
            },
            Some((seq, res)) = direct_acks.next(), if !direct_acks.is_empty() => direct_done(&sh, &lane, seq, res),
            Some((seq, firsts, res)) = drain_acks.next(), if !drain_acks.is_empty() => drain_done(&sh, &lane, seq, firsts, res),
            _ = durable.changed() => {}
            () = lane.wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}

/// A frame leaving the spool: metadata, payload, and the evicted ranges
/// (first, last) it announces.
type Outgoing = (FrameMeta, Arc<Vec<u8>>, Vec<(u64, u64)>);

/// Frames to send from the spool now: only when nothing direct is in flight,
/// the link is not in back-off, and the frames are durable.
fn next_to_drain<S: FrameSink>(sh: &Shared<S>, lane: &Lane, in_flight: usize) -> Vec<Outgoing> {
    let mut st = lane.state.lock().expect("lane");
    if st.route != Route::Spool || !st.direct.is_empty() || in_flight >= DRAIN_WINDOW_FRAMES {
        return vec![];
    }
    if let Some(t) = st.retry_at {
        // After a failure, resend only once every earlier send has resolved,
        // so a resent frame can never land behind a later one.
        if Instant::now() < t || in_flight > 0 {
            return vec![];
        }
        st.retry_at = None;
    }
    let max = DRAIN_WINDOW_FRAMES - in_flight;
    let seqs = st.ledger.sendable(sh.durable_gen(), max);
    let mut out = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let frame = match st.cache.get(&seq) {
            Some((m, p)) => Some((m.clone(), p.clone())),
            None => match sh.store.get_frame(&lane.camera, seq) {
                Ok(Some((m, p))) => Some((m, Arc::new(p))),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(camera = %lane.camera, seq, error = %e, "damaged spool record dropped");
                    None
                }
            },
        };
        let Some((meta, payload)) = frame else {
            // Gone or damaged: forget it rather than block the camera.
            st.ledger.remove(seq);
            let _ = sh.store.remove_frames(&lane.camera, &[seq]);
            lane.stats.frames_failed.fetch_add(1, Relaxed);
            continue;
        };
        let gaps = st
            .ledger
            .gap_before(seq)
            .into_iter()
            .map(|(f, g)| (f, g.last))
            .collect();
        st.ledger.set_in_flight(seq, true);
        out.push((meta, payload, gaps));
    }
    out
}

fn direct_done<S: FrameSink>(
    sh: &Shared<S>,
    lane: &Lane,
    seq: u64,
    res: Result<Delivery, SinkError>,
) {
    let mut st = lane.state.lock().expect("lane");
    let Some(pos) = st.direct.iter().position(|d| d.meta.seq == seq) else {
        return;
    };
    let mut d = st.direct.remove(pos).expect("position is valid");
    st.direct_bytes -= d.payload.len() as u64;
    match res {
        Ok(delivery) => {
            if d.spooled {
                // Spooled at a switch and delivered after all.
                remove_spooled(sh, lane, &mut st, &[seq]);
                lane.stats.frames_drained.fetch_add(1, Relaxed);
            }
            if let Some(r) = d.reply.take() {
                let _ = r.send(Ok(delivery));
            }
        }
        Err(e) => {
            tracing::warn!(camera = %lane.camera, seq, error = %e, "delivery failed; the frame stays in the spool");
            sh.switch_to_spool(lane, &mut st, "a delivery failed");
            if !d.spooled {
                match sh.spool_frame(lane, &mut st, &d.meta, &d.payload, false) {
                    Ok(gen) => {
                        if let Some(r) = d.reply.take() {
                            tokio::spawn(reply_when_durable(sh.durable_tx.subscribe(), gen, r));
                        }
                    }
                    Err(se) => {
                        lane.stats.frames_failed.fetch_add(1, Relaxed);
                        if let Some(r) = d.reply.take() {
                            let _ = r.send(Err(SinkError::Delivery {
                                camera: lane.camera.to_string(),
                                seq,
                                kind: e.kind().unwrap_or(ErrorKind::Other),
                                message: format!("{e}; and cannot spool: {se}"),
                            }));
                        }
                    }
                }
            } else {
                st.ledger.set_in_flight(seq, false);
            }
        }
    }
    maybe_direct(sh, lane, &mut st);
    drop(st);
    lane.wake.notify_one();
}

/// Back to sending directly once nothing is spooled or in flight (`outage` mode).
fn maybe_direct<S: FrameSink>(sh: &Shared<S>, lane: &Lane, st: &mut LaneState) {
    let idle = st.ledger.is_empty() && st.direct.is_empty();
    if idle
        && st.route == Route::Spool
        && sh.cfg().mode == SpoolMode::Outage
        && !sh.closing.load(Relaxed)
    {
        st.route = Route::Direct;
        tracing::info!(camera = %lane.camera, "spool drained: sending directly again");
    }
}

fn remove_spooled<S: FrameSink>(sh: &Shared<S>, lane: &Lane, st: &mut LaneState, seqs: &[u64]) {
    if let Err(e) = sh.store.remove_frames(&lane.camera, seqs) {
        tracing::error!(camera = %lane.camera, error = %e, "cannot delete sent frames from the spool (they may be sent again)");
    }
    for s in seqs {
        st.ledger.remove(*s);
        if let Some((_, p)) = st.cache.remove(s) {
            st.cache_bytes -= p.len() as u64;
        }
    }
}

fn drain_done<S: FrameSink>(
    sh: &Shared<S>,
    lane: &Lane,
    seq: u64,
    gap_firsts: Vec<u64>,
    res: Result<Delivery, SinkError>,
) {
    let mut st = lane.state.lock().expect("lane");
    match res {
        Ok(_) => {
            remove_spooled(sh, lane, &mut st, &[seq]);
            if !gap_firsts.is_empty() {
                st.ledger.gaps_reported(seq);
                let _ = sh.store.remove_gaps(&lane.camera, &gap_firsts);
            }
            lane.stats.frames_drained.fetch_add(1, Relaxed);
            metrics::counter!("camfleet_agent_frames_drained_total", "camera" => lane.camera.to_string()).increment(1);
            st.retry_delay = Duration::from_millis(250);
            maybe_direct(sh, lane, &mut st);
        }
        Err(SinkError::Refused { message, .. }) => {
            // Retrying cannot fix it (e.g. larger than the broker accepts).
            tracing::error!(camera = %lane.camera, seq, error = %message, "Kafka refused a spooled frame; dropped");
            remove_spooled(sh, lane, &mut st, &[seq]);
            lane.stats.frames_failed.fetch_add(1, Relaxed);
        }
        Err(e) => {
            st.ledger.set_in_flight(seq, false);
            if st.retry_at.is_none() {
                tracing::warn!(camera = %lane.camera, seq, error = %e, retry_in_ms = st.retry_delay.as_millis() as u64, "drain paused");
                st.retry_at = Some(Instant::now() + st.retry_delay);
                st.retry_delay = (st.retry_delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests;
