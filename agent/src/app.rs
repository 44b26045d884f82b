//! Wires the agent's stages for each camera, with bounded queues between them:
//!
//! ```text
//! capture thread --(4 raw frames)--> encode thread --(64 frames)--> send task --(4096 acks)--> ack task
//! ```
//!
//! * A live source is never stalled: when the encoder falls behind, the
//!   capture thread drops the newest raw frame and counts it. A file or unpaced
//!   source blocks instead.
//! * Sequence numbers are issued by the encode thread, in order, only to
//!   frames that were encoded, continuing where the spool and the sequence
//!   state say the previous run stopped.
//! * The sink is the disk spool wrapping Kafka (`crate::spool`).
//! * Shutdown order: stop capture -> drain encoders -> enqueue the rest ->
//!   flush to Kafka (bounded; what is not acknowledged stays in the spool) ->
//!   record exact sequence state.

use crate::encode::H264Encoder;
use crate::sink::{AckFuture, Delivery, FrameSink, SinkError};
use crate::source::{self, FrameSource, SourceError};
use crate::spool::{SpoolError, SpoolSink};
use crate::stats::CameraStats;
use camfleet_shared::clock::{Clock, SystemClock};
use camfleet_shared::config::{AgentConfig, CameraConfig};
use camfleet_shared::wire::{Codec, FrameMeta};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Time allowed for Kafka to acknowledge what is queued at shutdown; what is
/// not acknowledged by then stays in the spool. With capture and encoder
/// stops, the agent exits within 10 s of SIGTERM.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(7);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    // The inner error is part of the message (not a `source`), so a report
    // that prints the cause chain does not say it twice.
    #[error("camera {camera}: {error}")]
    Source { camera: String, error: SourceError },
    #[error("camera {camera}: {error}")]
    Encoder {
        camera: String,
        error: crate::encode::EncodeError,
    },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// One camera's outcome, printed as JSON at exit.
pub struct CameraReport {
    pub camera: String,
    pub stats: Arc<CameraStats>,
    pub spool: Option<Arc<crate::spool::Lane>>,
    pub seq_first: Option<u64>,
    pub seq_next: u64,
    pub epoch: u64,
}

impl CameraReport {
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self
            .stats
            .summary(&self.camera, self.seq_first, self.seq_next, self.epoch);
        let s = self.spool.as_ref().map(|l| &l.stats);
        let get = |f: fn(&crate::spool::LaneStats) -> u64| s.map_or(0, f);
        v["frames_spooled"] = get(|s| s.frames_spooled.load(Relaxed)).into();
        v["frames_drained"] = get(|s| s.frames_drained.load(Relaxed)).into();
        v["frames_evicted"] = get(|s| s.frames_evicted.load(Relaxed)).into();
        v["frames_failed"] = (self.stats.frames_failed.load(Relaxed)
            + get(|s| s.frames_failed.load(Relaxed)))
        .into();
        v
    }
}

struct EncodedFrame {
    meta: FrameMeta,
    payload: Vec<u8>,
}

/// Runs every camera until each source ends or `shutdown` resolves.
pub async fn run<S: FrameSink>(
    config: AgentConfig,
    sink: Arc<SpoolSink<S>>,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<CameraReport>, AgentError> {
    let stop = Arc::new(AtomicBool::new(false));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut cameras = Vec::new();
    // Open everything first, so a bad camera fails the start before any video flows.
    for cam in &config.cameras {
        let src = source::open(&cam.source).map_err(|error| AgentError::Source {
            camera: cam.id.to_string(),
            error,
        })?;
        let encoder =
            H264Encoder::new(src.format(), &cam.encoder).map_err(|error| AgentError::Encoder {
                camera: cam.id.to_string(),
                error,
            })?;
        let start = sink.open_camera(&config.data_dir, &cam.id)?;
        cameras.push((cam.clone(), src, encoder, start));
    }
    let mut handles = Vec::new();
    for (cam, src, encoder, start) in cameras {
        let stats = Arc::new(CameraStats::default());
        handles.push(tokio::spawn(run_camera(
            cam,
            src,
            encoder,
            start,
            sink.clone(),
            stats,
            clock.clone(),
            stop.clone(),
        )));
    }
    let all = futures_join(handles);
    tokio::pin!(all);
    let ended = tokio::select! {
        ended = &mut all => ended,
        () = shutdown => {
            tracing::info!("shutdown: stopping capture, draining encoders, flushing to Kafka");
            stop.store(true, Relaxed);
            all.await
        }
    };
    let ended = ended?;
    // Every encoder has stopped: send what Kafka will take within the
    // bound; the rest stays in the spool for the next start.
    if let Err(e) = sink.flush(SHUTDOWN_FLUSH).await {
        tracing::error!(error = %e, "spool flush at shutdown incomplete");
    }
    let mut reports = Vec::new();
    for (report, acks) in ended {
        // Every reply was settled by the flush; bounded in case one was not.
        if tokio::time::timeout(Duration::from_secs(1), acks)
            .await
            .is_err()
        {
            tracing::warn!(camera = %report.camera, "acknowledgements still pending at exit");
        }
        let id = camfleet_shared::CameraId::new(&report.camera).expect("camera ids are validated");
        sink.close_camera(&id, report.seq_next)?;
        reports.push(report);
    }
    Ok(reports)
}

type Ended = (CameraReport, tokio::task::JoinHandle<()>);

async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<Result<Ended, AgentError>>>,
) -> Result<Vec<Ended>, AgentError> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("camera task panicked")?);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn run_camera<S: FrameSink>(
    cam: CameraConfig,
    mut src: Box<dyn FrameSource>,
    mut encoder: H264Encoder,
    start: crate::spool::CameraStart,
    sink: Arc<SpoolSink<S>>,
    stats: Arc<CameraStats>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
) -> Result<Ended, AgentError> {
    let format = src.format();
    let epoch = start.epoch;
    let camera = cam.id.to_string();
    tracing::info!(%camera, width = format.width, height = format.height, fps = %format.fps, epoch, "camera started");

    // Capture thread. Picture buffers go back from the encoder for reuse.
    let (raw_tx, raw_rx) = std_mpsc::sync_channel::<(crate::source::RawFrame, u64)>(4);
    let (recycle_tx, recycle_rx) = std_mpsc::sync_channel::<Vec<u8>>(8);
    let capture = {
        let (stats, stop, clock, camera) =
            (stats.clone(), stop.clone(), clock.clone(), camera.clone());
        let max_frames = cam.max_frames;
        std::thread::Builder::new()
            .name(format!("capture {camera}"))
            .spawn(move || -> Result<(), SourceError> {
                let live = src.is_live();
                let mut produced = 0u64;
                let mut spare = None;
                while !stop.load(Relaxed) && max_frames.is_none_or(|m| produced < m) {
                    let buf = spare
                        .take()
                        .or_else(|| recycle_rx.try_recv().ok())
                        .unwrap_or_default();
                    let Some(frame) = src.next_frame(buf)? else {
                        break;
                    };
                    let captured_us = frame.captured_us.unwrap_or_else(|| clock.now_us());
                    stats.frames_captured.fetch_add(1, Relaxed);
                    produced += 1;
                    if live {
                        match raw_tx.try_send((frame, captured_us)) {
                            Ok(()) => {}
                            Err(std_mpsc::TrySendError::Full((frame, _))) => {
                                stats.frames_dropped_busy.fetch_add(1, Relaxed);
                                spare = Some(frame.i420);
                            }
                            Err(std_mpsc::TrySendError::Disconnected(_)) => break,
                        }
                    } else if raw_tx.send((frame, captured_us)).is_err() {
                        break;
                    }
                }
                tracing::debug!(%camera, produced, "capture ended");
                Ok(())
            })
            .expect("spawn capture thread")
    };

    // Encode thread: issues sequence numbers.
    let (enc_tx, mut enc_rx) = mpsc::channel::<EncodedFrame>(64);
    let encode = {
        let stats = stats.clone();
        let id = cam.id.clone();
        std::thread::Builder::new()
            .name(format!("encode {camera}"))
            .spawn(move || -> u64 {
                let mut next_seq = start.first_seq;
                let mut first_index = None;
                while let Ok((frame, capture_us)) = raw_rx.recv() {
                    let t = Instant::now();
                    let out = match encoder.encode(frame.index, &frame.i420) {
                        Ok(out) => out,
                        Err(e) => {
                            stats.encode_errors.fetch_add(1, Relaxed);
                            tracing::warn!(camera = %id, error = %e, "frame not encoded");
                            continue;
                        }
                    };
                    stats
                        .encode_ns
                        .fetch_add(t.elapsed().as_nanos() as u64, Relaxed);
                    let _ = recycle_tx.try_send(frame.i420);
                    // Media time counts from the first frame of this epoch.
                    let base = *first_index.get_or_insert(frame.index);
                    let meta = FrameMeta {
                        camera: id.clone(),
                        seq: next_seq,
                        capture_us,
                        pts_90k: format.fps.pts_90k(frame.index - base),
                        keyframe: out.keyframe,
                        width: format.width,
                        height: format.height,
                        fps: format.fps,
                        codec: Codec::H264,
                        epoch,
                    };
                    next_seq += 1;
                    stats.frames_encoded.fetch_add(1, Relaxed);
                    stats
                        .keyframes_encoded
                        .fetch_add(out.keyframe as u64, Relaxed);
                    stats
                        .bytes_encoded
                        .fetch_add(out.annex_b.len() as u64, Relaxed);
                    if enc_tx
                        .blocking_send(EncodedFrame {
                            meta,
                            payload: out.annex_b,
                        })
                        .is_err()
                    {
                        break;
                    }
                }
                next_seq
            })
            .expect("spawn encode thread")
    };

    // Ack task: awaits deliveries in order, so counters and latency are exact.
    let (ack_tx, mut ack_rx) = mpsc::channel::<(AckFuture, u64)>(4096);
    let ack_task = {
        let (stats, clock) = (stats.clone(), clock.clone());
        tokio::spawn(async move {
            while let Some((ack, capture_us)) = ack_rx.recv().await {
                match ack.await {
                    Ok(Delivery::Kafka { .. }) => {
                        stats.frames_acked.fetch_add(1, Relaxed);
                        stats.record_ack_latency(clock.now_us().saturating_sub(capture_us));
                    }
                    // Counted by the spool (spooled now; drained or evicted later).
                    Ok(Delivery::Spooled) | Err(SinkError::Evicted { .. }) => {}
                    Err(e) => {
                        stats.frames_failed.fetch_add(1, Relaxed);
                        tracing::error!(error = %e, "frame lost: not acknowledged");
                    }
                }
            }
        })
    };

    let mut seq_first = None;
    while let Some(frame) = enc_rx.recv().await {
        seq_first.get_or_insert(frame.meta.seq);
        match sink.enqueue(&frame.meta, &frame.payload, &[]).await {
            Ok(ack) => {
                if ack_tx.send((ack, frame.meta.capture_us)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                stats.frames_failed.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "frame lost: not enqueued");
            }
        }
    }
    drop(ack_tx);
    let capture_result = tokio::task::spawn_blocking(move || capture.join())
        .await
        .expect("join capture");
    let seq_next = tokio::task::spawn_blocking(move || encode.join())
        .await
        .expect("join encode")
        .expect("encode thread panicked");
    match capture_result {
        Ok(Err(e)) => {
            return Err(AgentError::Source {
                camera: camera.clone(),
                error: e,
            })
        }
        Err(_) => panic!("capture thread panicked"),
        Ok(Ok(())) => {}
    }
    tracing::info!(%camera, "camera stopped");
    let spool = sink.lane_stats(&cam.id);
    Ok((
        CameraReport {
            camera,
            stats,
            spool,
            seq_first,
            seq_next,
            epoch,
        },
        ack_task,
    ))
}
