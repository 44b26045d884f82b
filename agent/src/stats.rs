//! Per-camera counters, readable while the pipeline runs and summarised at exit.

use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Latency samples kept per camera (about 2 hours at 30 fps); later samples
/// are counted but not kept, so memory stays bounded.
const MAX_LATENCY_SAMPLES: usize = 200_000;

#[derive(Default)]
pub struct CameraStats {
    pub frames_captured: AtomicU64,
    /// Frames a live source produced while the encoder was still busy.
    pub frames_dropped_busy: AtomicU64,
    pub frames_encoded: AtomicU64,
    pub keyframes_encoded: AtomicU64,
    pub bytes_encoded: AtomicU64,
    pub frames_acked: AtomicU64,
    pub frames_failed: AtomicU64,
    pub encode_errors: AtomicU64,
    /// Nanoseconds spent inside the encoder.
    pub encode_ns: AtomicU64,
    ack_latency_us: Mutex<Vec<u32>>,
}

impl CameraStats {
    pub fn record_ack_latency(&self, us: u64) {
        let mut v = self.ack_latency_us.lock().expect("stats lock");
        if v.len() < MAX_LATENCY_SAMPLES {
            v.push(us.min(u32::MAX as u64) as u32);
        }
    }

    /// Capture -> acknowledgement latency percentiles in µs: (p50, p99, max).
    pub fn ack_latency_us(&self) -> Option<(u32, u32, u32)> {
        let mut v = self.ack_latency_us.lock().expect("stats lock").clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Some((at(0.5), at(0.99), *v.last().expect("not empty")))
    }

    pub fn summary(
        &self,
        camera: &str,
        seq_first: Option<u64>,
        seq_next: u64,
        epoch: u64,
    ) -> serde_json::Value {
        let lat = self.ack_latency_us();
        json!({
            "camera": camera,
            "epoch": epoch,
            "seq_first": seq_first,
            "seq_next": seq_next,
            "frames_captured": self.frames_captured.load(Relaxed),
            "frames_dropped_busy": self.frames_dropped_busy.load(Relaxed),
            "frames_encoded": self.frames_encoded.load(Relaxed),
            "keyframes_encoded": self.keyframes_encoded.load(Relaxed),
            "bytes_encoded": self.bytes_encoded.load(Relaxed),
            "frames_acked": self.frames_acked.load(Relaxed),
            "frames_failed": self.frames_failed.load(Relaxed),
            "encode_errors": self.encode_errors.load(Relaxed),
            "encode_ms_total": self.encode_ns.load(Relaxed) / 1_000_000,
            "ack_latency_us_p50": lat.map(|l| l.0),
            "ack_latency_us_p99": lat.map(|l| l.1),
            "ack_latency_us_max": lat.map(|l| l.2),
        })
    }
}
