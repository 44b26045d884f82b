//! A camera's pipeline as an object that starts, stops and restarts alone.
//!
//! ```text
//!  supervisor task (one per camera, until stopped)
//!    run 1: capture thread --(4 raw)--> encode thread --(64 encoded)--> send loop --+
//!    backoff                                                                        |
//!    run 2: ...                                                                     v
//!                                                  ack task (one per camera, 4096 pending)
//! ```
//!
//! * A *run* opens the source and the encoder, starts a new stream epoch (its
//!   first sequence number comes from the spool and the sequence state),
//!   streams until the source ends, fails, or a stop is asked, and then
//!   records the exact next sequence number.
//! * A failed run (device gone, file missing or malformed, encoder failing)
//!   is logged, counted (`camfleet_agent_camera_restarts_total`) and started
//!   again after an exponential backoff ([`Backoff`]); other cameras never
//!   notice, and nothing already handed to the sink is lost.
//! * A live source is never stalled: when the encoder falls behind, the
//!   capture thread drops the newest raw frame and counts it. A file or
//!   unpaced source blocks instead.
//! * Sequence numbers are issued by the encode thread, in order, only to
//!   frames that were encoded.
//!
//! Architecture Invariant: a camera's failure is contained in its supervisor;
//! `Camera::start` never fails and the agent never exits because a camera does.

use crate::encode::{self, EncodeError, H264Encoder, RateCap};
use crate::scale::{ScaleError, Scaler};
use crate::sink::{AckFuture, Delivery, FrameSink, SinkError};
use crate::source::{self, FrameSource, RawFrame, SourceError};
use crate::spool::{Lane, LaneStats, SpoolError, SpoolSink};
use crate::stats::CameraStats;
use camfleet_shared::clock::Clock;
use camfleet_shared::config::{CameraConfig, SourceConfig};
use camfleet_shared::wire::{Codec, FrameMeta};
use camfleet_shared::CameraId;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Consecutive encoder failures after which the run is restarted (a fresh
/// encoder), rather than skipping pictures forever.
const MAX_CONSECUTIVE_ENCODE_ERRORS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Encoder(#[from] EncodeError),
    #[error("encoder failed on {count} pictures in a row; last: {last}")]
    EncoderFailing { count: u32, last: EncodeError },
    #[error(transparent)]
    Scale(#[from] ScaleError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Opens sources; the seam that lets tests drive failures and recoveries.
pub trait SourceOpener: Send + Sync {
    fn open(&self, config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError>;
}

/// The real sources: test pattern, Y4M file, V4L2 device.
pub struct SystemSources;

impl SourceOpener for SystemSources {
    fn open(&self, config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
        source::open(config)
    }
}

/// What every camera pipeline of an agent shares.
pub struct CameraContext<S: FrameSink> {
    pub sink: Arc<SpoolSink<S>>,
    pub data_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
    pub sources: Arc<dyn SourceOpener>,
}

/// Exponential restart delay: 0.5 s, 1 s, 2 s, ... up to 30 s; back to 0.5 s
/// after a run that streamed for at least [`Backoff::STABLE`].
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(30);
    pub const STABLE: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay before the next attempt, given how long the failed run lasted.
    pub fn after_failure(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::STABLE {
            self.next = Self::FIRST;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A stop request: a flag for the capture thread, a watch for async waits.
pub struct Stop {
    flag: AtomicBool,
    tx: watch::Sender<bool>,
}

impl Stop {
    pub fn new() -> Self {
        Self {
            flag: AtomicBool::new(false),
            tx: watch::channel(false).0,
        }
    }

    pub fn set(&self) {
        self.flag.store(true, Relaxed);
        self.tx.send_replace(true);
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Relaxed)
    }

    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

/// One camera's outcome, printed as JSON at exit.
pub struct CameraReport {
    pub camera: String,
    pub stats: Arc<CameraStats>,
    pub spool: Option<Arc<Lane>>,
    /// First sequence number sent by this process (any run).
    pub seq_first: Option<u64>,
    /// Next sequence number after the last run.
    pub seq_next: u64,
    /// Epoch of the last run.
    pub epoch: u64,
}

impl CameraReport {
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self
            .stats
            .summary(&self.camera, self.seq_first, self.seq_next, self.epoch);
        let s = self.spool.as_ref().map(|l| &l.stats);
        let get = |f: fn(&LaneStats) -> u64| s.map_or(0, f);
        v["frames_spooled"] = get(|s| s.frames_spooled.load(Relaxed)).into();
        v["frames_drained"] = get(|s| s.frames_drained.load(Relaxed)).into();
        v["frames_evicted"] = get(|s| s.frames_evicted.load(Relaxed)).into();
        v["frames_failed"] =
            (self.stats.frames_failed.get() + get(|s| s.frames_failed.load(Relaxed))).into();
        v
    }
}

/// What a stopped camera leaves: its report, and its ack task, which ends
/// once every frame handed to the sink has settled.
pub struct CameraEnd {
    pub report: CameraReport,
    pub acks: tokio::task::JoinHandle<()>,
}

/// A running camera pipeline.
pub struct Camera {
    pub id: CameraId,
    pub stats: Arc<CameraStats>,
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<CameraEnd>,
}

impl Camera {
    /// Starts the camera's supervisor; failures to open anything are retried
    /// in there, so this never fails.
    pub fn start<S: FrameSink>(config: CameraConfig, ctx: Arc<CameraContext<S>>) -> Self {
        let stats = Arc::new(CameraStats::new(config.id.as_str()));
        let stop = Arc::new(Stop::new());
        let id = config.id.clone();
        let task = tokio::spawn(supervise(config, ctx, stats.clone(), stop.clone()));
        Self {
            id,
            stats,
            stop,
            task,
        }
    }

    /// Asks the pipeline to stop: capture ends, queued pictures are encoded
    /// and handed to the sink. Returns at once; [`Camera::join`] waits.
    pub fn stop(&self) {
        self.stop.set();
    }

    pub fn stop_handle(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// The pipeline has ended (its source ended or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub async fn join(self) -> CameraEnd {
        self.task.await.expect("camera supervisor panicked")
    }
}

/// Sequence numbers issued across the runs of one camera.
#[derive(Default)]
struct Issued {
    first: Option<u64>,
    next: u64,
    epoch: u64,
}

enum RunEnd {
    /// A finite source ended, or `max_frames` were produced.
    Finished,
    Stopped,
}

async fn supervise<S: FrameSink>(
    config: CameraConfig,
    ctx: Arc<CameraContext<S>>,
    stats: Arc<CameraStats>,
    stop: Arc<Stop>,
) -> CameraEnd {
    let camera = config.id.to_string();
    let (ack_tx, ack_rx) = mpsc::channel::<(AckFuture, u64)>(4096);
    let acks = tokio::spawn(settle_acks(ack_rx, stats.clone(), ctx.clock.clone()));
    let produced = Arc::new(AtomicU64::new(0));
    let mut issued = Issued::default();
    let mut backoff = Backoff::new();
    while !stop.is_set() {
        let started = Instant::now();
        stats.pulse.run_started();
        let outcome = run_once(
            &config,
            &ctx,
            &stats,
            &stop,
            &ack_tx,
            &produced,
            &mut issued,
        )
        .await;
        stats.pulse.run_ended();
        stats.set_up(false);
        match outcome {
            Ok(RunEnd::Finished | RunEnd::Stopped) => break,
            Err(error) => {
                stats.restarts.add(1);
                let delay = backoff.after_failure(started.elapsed());
                tracing::error!(%camera, %error, retry_in_ms = delay.as_millis() as u64,
                    "camera failed; the other cameras go on, this one is retried");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.wait() => break,
                }
            }
        }
    }
    drop(ack_tx);
    tracing::info!(%camera, "camera stopped");
    CameraEnd {
        report: CameraReport {
            camera,
            spool: ctx.sink.lane_stats(&config.id),
            stats,
            seq_first: issued.first,
            seq_next: issued.next,
            epoch: issued.epoch,
        },
        acks,
    }
}

/// Awaits deliveries in order, so counters and latency are exact.
async fn settle_acks(
    mut rx: mpsc::Receiver<(AckFuture, u64)>,
    stats: Arc<CameraStats>,
    clock: Arc<dyn Clock>,
) {
    while let Some((ack, capture_us)) = rx.recv().await {
        stats.queue_unacked.set(rx.len() as f64);
        match ack.await {
            Ok(Delivery::Kafka { .. }) => {
                stats.frames_acked.add(1);
                stats.record_ack_latency(clock.now_us().saturating_sub(capture_us));
            }
            // Counted by the spool (spooled now; drained or evicted later).
            Ok(Delivery::Spooled) | Err(SinkError::Evicted { .. }) => {}
            Err(e) => {
                stats.frames_failed.add(1);
                tracing::error!(error = %e, "frame lost: not acknowledged");
            }
        }
    }
}

struct EncodedFrame {
    meta: FrameMeta,
    payload: Vec<u8>,
}

/// One run: open, stream, close. Sequence numbers issued are recorded
/// exactly whatever the outcome.
async fn run_once<S: FrameSink>(
    config: &CameraConfig,
    ctx: &Arc<CameraContext<S>>,
    stats: &Arc<CameraStats>,
    stop: &Arc<Stop>,
    ack_tx: &mpsc::Sender<(AckFuture, u64)>,
    produced: &Arc<AtomicU64>,
    issued: &mut Issued,
) -> Result<RunEnd, CameraError> {
    let camera = config.id.to_string();
    // Opening a device can block (a USB camera being enumerated).
    let src = {
        let (sources, source) = (ctx.sources.clone(), config.source.clone());
        tokio::task::spawn_blocking(move || sources.open(&source))
            .await
            .expect("source open panicked")?
    };
    let input = src.format();
    let output = encode::output_format(input, &config.encoder);
    let encoder = H264Encoder::new(output, &config.encoder)?;
    let scaler = ((input.width, input.height) != (output.width, output.height))
        .then(|| Scaler::new(input, output));
    let start = ctx.sink.open_camera(&ctx.data_dir, &config.id)?;
    issued.first.get_or_insert(start.first_seq);
    issued.epoch = start.epoch;
    tracing::info!(%camera, source = %format!("{}x{}@{}", input.width, input.height, input.fps),
        sent = %format!("{}x{}@{}", output.width, output.height, output.fps),
        epoch = start.epoch, first_seq = start.first_seq, "camera streaming");
    stats.set_up(true);

    // Four raw frames (266 ms at 15 fps) absorb encoder stalls on a busy box.
    let (raw_tx, raw_rx) = std_mpsc::sync_channel::<(RawFrame, u64)>(4);
    let (recycle_tx, recycle_rx) = std_mpsc::sync_channel::<Vec<u8>>(8);
    let capture = spawn_capture(
        config,
        src,
        RateCap::new(input.fps, output.fps),
        stats.clone(),
        stop.clone(),
        ctx.clock.clone(),
        produced.clone(),
        raw_tx,
        recycle_rx,
    );
    let (enc_tx, mut enc_rx) = mpsc::channel::<EncodedFrame>(64);
    let encode = {
        let stats = stats.clone();
        let id = config.id.clone();
        let mut encoder = encoder;
        let mut scaler = scaler;
        std::thread::Builder::new()
            .name(format!("encode {camera}"))
            .spawn(move || -> (u64, Result<(), CameraError>) {
                let mut next_seq = start.first_seq;
                let mut first_index = None;
                let mut scaled = Vec::new();
                let mut failures = 0u32;
                while let Ok((frame, capture_us)) = raw_rx.recv() {
                    stats.queue_raw.decrement(1.0);
                    let t = Instant::now();
                    let picture = match scaler.as_mut() {
                        Some(s) => {
                            if let Err(e) = s.scale(&frame.i420, &mut scaled) {
                                return (next_seq, Err(e.into()));
                            }
                            &scaled
                        }
                        None => &frame.i420,
                    };
                    let out = match encoder.encode(frame.index, picture) {
                        Ok(out) => out,
                        Err(e) => {
                            stats.encode_errors.add(1);
                            failures += 1;
                            tracing::warn!(camera = %id, error = %e, "frame not encoded");
                            if failures >= MAX_CONSECUTIVE_ENCODE_ERRORS {
                                let failing = CameraError::EncoderFailing {
                                    count: failures,
                                    last: e,
                                };
                                return (next_seq, Err(failing));
                            }
                            continue;
                        }
                    };
                    failures = 0;
                    stats.record_encode(t.elapsed().as_nanos() as u64);
                    let _ = recycle_tx.try_send(frame.i420);
                    // Media time counts from the first frame of this epoch, in
                    // source time, so a thinned stream keeps real timing.
                    let base = *first_index.get_or_insert(frame.index);
                    let meta = FrameMeta {
                        camera: id.clone(),
                        seq: next_seq,
                        capture_us,
                        pts_90k: input.fps.pts_90k(frame.index - base),
                        keyframe: out.keyframe,
                        width: output.width,
                        height: output.height,
                        fps: output.fps,
                        codec: Codec::H264,
                        epoch: start.epoch,
                    };
                    next_seq += 1;
                    stats.frames_encoded.add(1);
                    stats.keyframes_encoded.add(out.keyframe as u64);
                    stats.bytes_encoded.add(out.annex_b.len() as u64);
                    let encoded = EncodedFrame {
                        meta,
                        payload: out.annex_b,
                    };
                    if enc_tx.blocking_send(encoded).is_err() {
                        break;
                    }
                }
                (next_seq, Ok(()))
            })
            .expect("spawn encode thread")
    };

    while let Some(frame) = enc_rx.recv().await {
        stats.queue_encoded.set(enc_rx.len() as f64);
        match ctx.sink.enqueue(&frame.meta, &frame.payload, &[]).await {
            Ok(ack) => {
                stats.pulse.frame();
                if ack_tx.send((ack, frame.meta.capture_us)).await.is_err() {
                    break;
                }
                stats
                    .queue_unacked
                    .set((ack_tx.max_capacity() - ack_tx.capacity()) as f64);
            }
            Err(e) => {
                stats.frames_failed.add(1);
                tracing::error!(%camera, error = %e, "frame lost: not enqueued");
            }
        }
    }
    let capture_end = tokio::task::spawn_blocking(move || capture.join())
        .await
        .expect("join capture")
        .expect("capture thread panicked");
    let (seq_next, encode_end) = tokio::task::spawn_blocking(move || encode.join())
        .await
        .expect("join encode")
        .expect("encode thread panicked");
    stats.queue_raw.set(0.0);
    issued.next = seq_next;
    ctx.sink.close_camera(&config.id, seq_next)?;
    encode_end?;
    match capture_end? {
        CaptureEnd::Stopped => Ok(RunEnd::Stopped),
        CaptureEnd::Finished => Ok(RunEnd::Finished),
    }
}

enum CaptureEnd {
    Stopped,
    Finished,
}

#[allow(clippy::too_many_arguments)]
fn spawn_capture(
    config: &CameraConfig,
    mut src: Box<dyn FrameSource>,
    cap: RateCap,
    stats: Arc<CameraStats>,
    stop: Arc<Stop>,
    clock: Arc<dyn Clock>,
    produced: Arc<AtomicU64>,
    raw_tx: std_mpsc::SyncSender<(RawFrame, u64)>,
    recycle_rx: std_mpsc::Receiver<Vec<u8>>,
) -> std::thread::JoinHandle<Result<CaptureEnd, SourceError>> {
    let camera = config.id.to_string();
    let max_frames = config.max_frames;
    std::thread::Builder::new()
        .name(format!("capture {camera}"))
        .spawn(move || {
            let live = src.is_live();
            let mut spare = None;
            loop {
                if stop.is_set() {
                    return Ok(CaptureEnd::Stopped);
                }
                if max_frames.is_some_and(|m| produced.load(Relaxed) >= m) {
                    return Ok(CaptureEnd::Finished);
                }
                let buf = spare
                    .take()
                    .or_else(|| recycle_rx.try_recv().ok())
                    .unwrap_or_default();
                let Some(frame) = src.next_frame(buf)? else {
                    return Ok(CaptureEnd::Finished);
                };
                let captured_us = frame.captured_us.unwrap_or_else(|| clock.now_us());
                stats.frames_captured.add(1);
                produced.fetch_add(1, Relaxed);
                if !cap.keep(frame.index) {
                    stats.frames_thinned.add(1);
                    spare = Some(frame.i420);
                    continue;
                }
                // Counted before the send: the encoder may take it at once.
                stats.queue_raw.increment(1.0);
                if live {
                    match raw_tx.try_send((frame, captured_us)) {
                        Ok(()) => {}
                        Err(std_mpsc::TrySendError::Full((frame, _))) => {
                            stats.queue_raw.decrement(1.0);
                            stats.frames_dropped_busy.add(1);
                            spare = Some(frame.i420);
                        }
                        Err(std_mpsc::TrySendError::Disconnected(_)) => {
                            return Ok(CaptureEnd::Stopped)
                        }
                    }
                } else if raw_tx.send((frame, captured_us)).is_err() {
                    return Ok(CaptureEnd::Stopped);
                }
            }
        })
        .expect("spawn capture thread")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Recorder;
    use crate::source::test_pattern::TestPattern;
    use crate::source::VideoFormat;
    use camfleet_shared::clock::SystemClock;
    use camfleet_shared::config::{AgentConfig, SpoolConfig};
    use camfleet_shared::wire::Rational;
    use std::sync::Mutex;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets_after_a_stable_run() {
        let mut b = Backoff::new();
        let short = Duration::from_secs(1);
        let got: Vec<u64> = (0..9)
            .map(|_| b.after_failure(short).as_millis() as u64)
            .collect();
        assert_eq!(
            got,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.after_failure(Backoff::STABLE), Backoff::FIRST);
        assert_eq!(b.after_failure(short), Duration::from_secs(1));
    }

    /// A source that fails after `fail_after` frames, like an unplugged device.
    struct Unplugged {
        inner: TestPattern,
        fail_after: u64,
        given: u64,
    }

    impl FrameSource for Unplugged {
        fn format(&self) -> VideoFormat {
            self.inner.format()
        }
        fn next_frame(&mut self, buf: Vec<u8>) -> Result<Option<RawFrame>, SourceError> {
            if self.given == self.fail_after {
                return Err(SourceError::Io {
                    path: "/dev/video9".into(),
                    error: std::io::Error::from_raw_os_error(libc::ENODEV),
                });
            }
            self.given += 1;
            self.inner.next_frame(buf)
        }
        fn is_live(&self) -> bool {
            true
        }
    }

    /// Camera "flaky" (the 96-wide source) is missing for two opens, then
    /// streams 20 frames and is unplugged, then works; "steady" just works.
    struct Scripted {
        flaky_opens: Mutex<u32>,
    }

    impl SourceOpener for Scripted {
        fn open(&self, config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
            let SourceConfig::TestPattern { width, .. } = config else {
                unreachable!("tests use test patterns")
            };
            let pattern = TestPattern::new(*width, 64, Rational::new(30, 1).unwrap(), true);
            if *width != 96 {
                return Ok(Box::new(pattern));
            }
            let mut opens = self.flaky_opens.lock().unwrap();
            *opens += 1;
            match *opens {
                1 | 2 => Err(SourceError::Io {
                    path: "/dev/video9".into(),
                    error: std::io::Error::from(std::io::ErrorKind::NotFound),
                }),
                3 => Ok(Box::new(Unplugged {
                    inner: pattern,
                    fail_after: 20,
                    given: 0,
                })),
                _ => Ok(Box::new(pattern)),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_camera_is_retried_while_the_other_keeps_streaming() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::from_toml(&format!(
            r#"
            data_dir = "{}"
            kafka = {{ bootstrap_servers = "127.0.0.1:9" }}
            [[camera]]
            id = "s/steady"
            source = {{ kind = "test_pattern", width = 64, height = 64 }}
            max_frames = 150
            [[camera]]
            id = "s/flaky"
            source = {{ kind = "test_pattern", width = 96, height = 64 }}
            max_frames = 60
            "#,
            dir.path().display()
        ))
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        let spool_cfg = SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        };
        let sink = SpoolSink::open(
            &spool_cfg,
            &dir.path().join("spool"),
            recorder.clone(),
            Arc::new(SystemClock),
        )
        .unwrap();
        let sources = Arc::new(Scripted {
            flaky_opens: Mutex::new(0),
        });
        let reports = crate::app::run_with(
            config,
            sink,
            Arc::new(SystemClock),
            sources.clone(),
            std::future::pending(),
        )
        .await;

        let frames = recorder.frames.lock().unwrap().clone();
        let of = |cam: &str| -> Vec<FrameMeta> {
            frames
                .iter()
                .filter(|f| f.camera.as_str() == cam)
                .cloned()
                .collect()
        };
        // The steady camera: every frame, one epoch, no pause longer than a
        // few frame times while the other camera failed three times.
        let steady = of("s/steady");
        assert_eq!(steady.len(), 150);
        assert!(steady.iter().all(|f| f.epoch == steady[0].epoch));
        let longest_pause = steady
            .windows(2)
            .map(|w| w[1].capture_us - w[0].capture_us)
            .max()
            .unwrap();
        assert!(
            longest_pause < 300_000,
            "steady camera paused {longest_pause} µs"
        );

        // The flaky camera: opened 4 times (2 failed opens, 1 unplug), a new
        // epoch per run, each starting with a keyframe, numbers contiguous.
        let flaky = of("s/flaky");
        assert_eq!(*sources.flaky_opens.lock().unwrap(), 4);
        let report = reports.iter().find(|r| r.camera == "s/flaky").unwrap();
        assert_eq!(report.stats.restarts.get(), 3);
        assert_eq!(flaky.len(), 60, "20 before the unplug, 40 after");
        let seqs: Vec<u64> = flaky.iter().map(|f| f.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(flaky[20].epoch, flaky[0].epoch + 1);
        assert!(flaky[0].keyframe && flaky[20].keyframe);
        assert_eq!(report.seq_next, seqs[59] + 1);
    }
}
