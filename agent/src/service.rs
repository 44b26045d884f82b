//! The systemd service protocol (`sd_notify(3)`), driven by the frame path.
//!
//! * `READY=1` once **every** camera has handed at least one frame to the
//!   sink (Kafka's queue, or the spool when the broker is away): "started"
//!   means video flows, not merely that the process runs. Until then
//!   `STATUS=` names the cameras still waiting.
//! * `WATCHDOG=1` every `WATCHDOG_USEC / 2`, but only while no camera
//!   pipeline is stalled. A camera is stalled when its run is active (the
//!   source is being opened or streams) and it has handed no frame to the
//!   sink for longer than that half period. A camera waiting out its restart
//!   backoff, or whose finite source ended, is not stalled: its supervisor
//!   is doing its job. So a wedged capture read, encoder or sink stops the
//!   pings and systemd restarts the agent (`WatchdogSec=` in the unit).
//! * `STOPPING=1` on the first SIGTERM, before the ordered drain.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op.
//! Architecture Invariant: this module only reads the cameras' [`Pulse`]s;
//! it never touches a pipeline.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How often readiness is checked before `READY=1`.
const READY_POLL: Duration = Duration::from_millis(100);

/// A camera pipeline's sign of life, written by the frame path.
pub struct Pulse {
    origin: Instant,
    /// A run is active: opening the source, or streaming.
    running: AtomicBool,
    /// Frames handed to the sink by this process (every run).
    frames: AtomicU64,
    /// Milliseconds after `origin` of the last frame or run start.
    last_ms: AtomicU64,
}

impl Default for Pulse {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            running: AtomicBool::new(false),
            frames: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Pulse {
    fn touch(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Relaxed);
    }

    /// A run starts (before the source is opened).
    pub fn run_started(&self) {
        self.touch();
        self.running.store(true, Relaxed);
    }

    /// A run ended (failed, finished or stopped).
    pub fn run_ended(&self) {
        self.running.store(false, Relaxed);
    }

    /// A frame was accepted by the sink.
    pub fn frame(&self) {
        self.frames.fetch_add(1, Relaxed);
        self.touch();
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Relaxed)
    }

    /// A run is active and nothing moved for longer than `limit`.
    pub fn stalled(&self, limit: Duration) -> bool {
        let idle =
            (self.origin.elapsed().as_millis() as u64).saturating_sub(self.last_ms.load(Relaxed));
        self.running.load(Relaxed) && idle > limit.as_millis() as u64
    }
}

fn notify(states: &[NotifyState]) {
    // A lost notification is harmless (systemd times the start out, or the
    // watchdog fires); it must never stop the video.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// `STOPPING=1`: the ordered shutdown began.
pub fn stopping() {
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining encoders and flushing the spool"),
    ]);
}

/// Sends `READY=1` and the watchdog pings for the running cameras until
/// dropped (abort the task). The watchdog period comes from `WATCHDOG_USEC`.
/// The registry is read at every check: fleet configs add and remove cameras.
pub async fn notify_loop(registry: crate::fleet::CameraRegistry) {
    let half = sd_notify::watchdog_enabled().map(|w| w / 2);
    let mut ready = false;
    let mut shown = String::new();
    let mut ready_poll = tokio::time::interval(READY_POLL);
    // The first ping is due one half-period after start, when a camera had
    // the time to open its source and hand a frame on.
    let period = half.unwrap_or(Duration::from_secs(3600));
    let mut watchdog = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if ready && half.is_none() {
            // Ready, and systemd asked for no watchdog: nothing left to say.
            return;
        }
        tokio::select! {
            _ = ready_poll.tick(), if !ready => {
                let cameras = registry.lock().expect("camera registry").clone();
                let waiting: Vec<&str> = cameras
                    .iter()
                    .filter(|(_, s)| s.pulse.frames() == 0)
                    .map(|(id, _)| id.as_str())
                    .collect();
                if waiting.is_empty() {
                    ready = true;
                    let status = format!("streaming {} cameras", cameras.len());
                    tracing::info!("ready: every camera handed a frame to the sink");
                    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
                } else {
                    let status = format!("waiting for a first frame from {}", waiting.join(", "));
                    if status != shown {
                        notify(&[NotifyState::Status(&status)]);
                        shown = status;
                    }
                }
            }
            _ = watchdog.tick(), if half.is_some() => {
                let limit = half.expect("watchdog enabled");
                let cameras = registry.lock().expect("camera registry").clone();
                let stalled: Vec<&str> = cameras
                    .iter()
                    .filter(|(_, s)| s.pulse.stalled(limit))
                    .map(|(id, _)| id.as_str())
                    .collect();
                if stalled.is_empty() {
                    notify(&[NotifyState::Watchdog]);
                } else {
                    let status = format!("stalled (no frame for {limit:?}): {}", stalled.join(", "));
                    tracing::error!(cameras = ?stalled, "pipeline stalled: withholding the watchdog ping");
                    notify(&[NotifyState::Status(&status)]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_camera_without_frames_stalls_and_a_waiting_one_does_not() {
        let limit = Duration::from_millis(30);
        let p = Pulse::default();
        std::thread::sleep(limit * 2);
        assert!(!p.stalled(limit), "not running: waiting for a restart");
        p.run_started();
        assert!(!p.stalled(limit), "just started opening its source");
        std::thread::sleep(limit * 2);
        assert!(p.stalled(limit), "opened long ago, no frame since");
        p.frame();
        assert!(!p.stalled(limit));
        assert_eq!(p.frames(), 1);
        std::thread::sleep(limit * 2);
        assert!(p.stalled(limit));
        p.run_ended();
        assert!(!p.stalled(limit), "the run failed: the supervisor retries");
    }
}
