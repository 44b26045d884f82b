//! Per-camera counters: exported on `/metrics` (Prometheus, names
//! `camfleet_agent_*`, the camera as a label) and summarised as JSON at exit.
//!
//! Each counter is an atomic for the summary plus a `metrics` handle resolved
//! once per camera, so counting a frame is two atomic adds, never a registry
//! lookup.

use metrics::{Counter, Gauge, Histogram};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Latency samples kept per camera for the exit summary (about 2 hours at
/// 30 fps); later samples still go to the histogram, so memory stays bounded.
const MAX_LATENCY_SAMPLES: usize = 200_000;

/// A counter seen both by the exit summary and by Prometheus.
pub struct Count {
    value: AtomicU64,
    exported: Counter,
}

impl Count {
    fn new(exported: Counter) -> Self {
        Self {
            value: AtomicU64::new(0),
            exported,
        }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        self.exported.increment(n);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

pub struct CameraStats {
    pub frames_captured: Count,
    /// Frames a live source produced while the encoder was still busy.
    pub frames_dropped_busy: Count,
    /// Frames left out on purpose to honour the encoder's `max_fps`.
    pub frames_thinned: Count,
    pub frames_encoded: Count,
    pub keyframes_encoded: Count,
    pub bytes_encoded: Count,
    pub frames_acked: Count,
    pub frames_failed: Count,
    pub encode_errors: Count,
    /// Times the pipeline failed (source, encoder) and was started again.
    pub restarts: Count,
    /// Nanoseconds spent inside the encoder.
    pub encode_ns: AtomicU64,
    /// 1 while the pipeline streams, 0 while it waits to be restarted.
    up: Gauge,
    up_now: std::sync::atomic::AtomicBool,
    /// Raw pictures waiting for the encoder, encoded frames waiting to be
    /// handed to the sink, and frames handed over but not yet acknowledged.
    pub queue_raw: Gauge,
    pub queue_encoded: Gauge,
    pub queue_unacked: Gauge,
    /// Frames handed to the sink and run state, for systemd (`crate::service`).
    pub pulse: crate::service::Pulse,
    encode_seconds: Histogram,
    ack_seconds: Histogram,
    ack_latency_us: Mutex<Vec<u32>>,
}

/// Registers help texts and histogram buckets' names (call once, with the exporter).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    for (name, help) in [
        (
            "camfleet_agent_frames_captured_total",
            "Pictures the source produced",
        ),
        (
            "camfleet_agent_frames_dropped_total",
            "Pictures not encoded, by reason (encoder_busy: a live source outran the encoder)",
        ),
        (
            "camfleet_agent_frames_thinned_total",
            "Pictures left out to honour the encoder's max_fps",
        ),
        ("camfleet_agent_frames_encoded_total", "Frames encoded"),
        (
            "camfleet_agent_keyframes_encoded_total",
            "IDR frames encoded",
        ),
        (
            "camfleet_agent_encoded_bytes_total",
            "Bytes of H.264 produced",
        ),
        (
            "camfleet_agent_frames_acked_total",
            "Frames Kafka acknowledged when sent directly",
        ),
        (
            "camfleet_agent_frames_failed_total",
            "Frames lost (neither acknowledged nor spooled)",
        ),
        (
            "camfleet_agent_encode_errors_total",
            "Pictures the encoder failed on",
        ),
        (
            "camfleet_agent_camera_restarts_total",
            "Times a camera pipeline failed and was started again",
        ),
    ] {
        describe_counter!(name, help);
    }
    describe_gauge!(
        "camfleet_agent_camera_up",
        "1 while a camera streams, 0 while it waits to restart"
    );
    describe_gauge!(
        "camfleet_agent_queue_frames",
        "Frames waiting per pipeline queue (raw: for the encoder; encoded: for the sink; unacked: for Kafka)"
    );
    describe_histogram!(
        "camfleet_agent_encode_seconds",
        Unit::Seconds,
        "Time to encode one picture"
    );
    describe_histogram!(
        "camfleet_agent_capture_to_ack_seconds",
        Unit::Seconds,
        "Capture to Kafka acknowledgement, for frames sent directly"
    );
    describe_gauge!(
        "camfleet_agent_build_info",
        "Always 1; labels carry the version"
    );
    metrics::gauge!("camfleet_agent_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

impl CameraStats {
    pub fn new(camera: &str) -> Self {
        let cam = camera.to_string();
        let count =
            |name: &'static str| Count::new(metrics::counter!(name, "camera" => cam.clone()));
        let queue = |q: &'static str| metrics::gauge!("camfleet_agent_queue_frames", "camera" => cam.clone(), "queue" => q);
        Self {
            frames_captured: count("camfleet_agent_frames_captured_total"),
            frames_dropped_busy: Count::new(metrics::counter!(
                "camfleet_agent_frames_dropped_total",
                "camera" => cam.clone(),
                "reason" => "encoder_busy"
            )),
            frames_thinned: count("camfleet_agent_frames_thinned_total"),
            frames_encoded: count("camfleet_agent_frames_encoded_total"),
            keyframes_encoded: count("camfleet_agent_keyframes_encoded_total"),
            bytes_encoded: count("camfleet_agent_encoded_bytes_total"),
            frames_acked: count("camfleet_agent_frames_acked_total"),
            frames_failed: count("camfleet_agent_frames_failed_total"),
            encode_errors: count("camfleet_agent_encode_errors_total"),
            restarts: count("camfleet_agent_camera_restarts_total"),
            encode_ns: AtomicU64::new(0),
            up: metrics::gauge!("camfleet_agent_camera_up", "camera" => cam.clone()),
            up_now: std::sync::atomic::AtomicBool::new(false),
            queue_raw: queue("raw"),
            queue_encoded: queue("encoded"),
            queue_unacked: queue("unacked"),
            pulse: crate::service::Pulse::default(),
            encode_seconds: metrics::histogram!("camfleet_agent_encode_seconds", "camera" => cam.clone()),
            ack_seconds: metrics::histogram!("camfleet_agent_capture_to_ack_seconds", "camera" => cam),
            ack_latency_us: Mutex::new(Vec::new()),
        }
    }

    pub fn set_up(&self, up: bool) {
        self.up_now.store(up, Relaxed);
        self.up.set(if up { 1.0 } else { 0.0 });
    }

    pub fn is_up(&self) -> bool {
        self.up_now.load(Relaxed)
    }

    pub fn record_encode(&self, ns: u64) {
        self.encode_ns.fetch_add(ns, Relaxed);
        self.encode_seconds.record(ns as f64 / 1e9);
    }

    pub fn record_ack_latency(&self, us: u64) {
        self.ack_seconds.record(us as f64 / 1e6);
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
            "frames_captured": self.frames_captured.get(),
            "frames_dropped_busy": self.frames_dropped_busy.get(),
            "frames_thinned": self.frames_thinned.get(),
            "frames_encoded": self.frames_encoded.get(),
            "keyframes_encoded": self.keyframes_encoded.get(),
            "bytes_encoded": self.bytes_encoded.get(),
            "frames_acked": self.frames_acked.get(),
            "frames_failed": self.frames_failed.get(),
            "encode_errors": self.encode_errors.get(),
            "restarts": self.restarts.get(),
            "encode_ms_total": self.encode_ns.load(Relaxed) / 1_000_000,
            "ack_latency_us_p50": lat.map(|l| l.0),
            "ack_latency_us_p99": lat.map(|l| l.1),
            "ack_latency_us_max": lat.map(|l| l.2),
        })
    }
}
