//! The collector's health, as told to systemd (`sd_notify(3)`) and to
//! Kubernetes probes (`/healthz`, `/readyz`, see `crate::http`).
//!
//! * Ready: the consumer joined its group and received an assignment (an
//!   empty one counts: a spare instance in a group with fewer partitions
//!   than collectors is still a healthy member). `READY=1` is sent once.
//! * Live: the consume loop turned within [`STALL_LIMIT`]. The loop turns at
//!   least every 500 ms while idle and after every record; it stops turning
//!   only when an archive write, a processor queue or a commit hangs.
//! * `WATCHDOG=1` is sent from the consume loop itself, at most every
//!   `WATCHDOG_USEC / 2`, so a hung loop stops the pings.
//! * `STOPPING=1` on the first SIGTERM; readiness turns false.

use sd_notify::NotifyState;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The consume loop is considered hung when it has not turned for this long
/// (`/healthz` answers 503 after it). Archive writes to a slow HDFS can hold
/// one turn for seconds, so this is generous.
pub const STALL_LIMIT: Duration = Duration::from_secs(30);

pub struct ServiceState {
    origin: Instant,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    ping_every: Option<Duration>,
    joined: AtomicBool,
    stopping: AtomicBool,
    /// Milliseconds after `origin` of the last loop turn and the last ping.
    last_turn_ms: AtomicU64,
    last_ping_ms: AtomicU64,
}

impl ServiceState {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Self {
        Self {
            origin: Instant::now(),
            ping_every: sd_notify::watchdog_enabled().map(|w| w / 2),
            joined: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            last_turn_ms: AtomicU64::new(0),
            last_ping_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The consumer received its (possibly empty) assignment: `READY=1`.
    pub fn joined(&self) {
        if !self.joined.swap(true, Relaxed) {
            tracing::info!("ready: joined the consumer group");
            notify(&[
                NotifyState::Ready,
                NotifyState::Status("consuming: joined the consumer group"),
            ]);
        }
    }

    /// One turn of the consume loop; pings the watchdog when due.
    pub fn turned(&self) {
        let now = self.now_ms();
        self.last_turn_ms.store(now, Relaxed);
        if let Some(every) = self.ping_every {
            if now.saturating_sub(self.last_ping_ms.load(Relaxed)) >= every.as_millis() as u64 {
                self.last_ping_ms.store(now, Relaxed);
                notify(&[NotifyState::Watchdog]);
            }
        }
    }

    /// The ordered shutdown began: `STOPPING=1`, no longer ready.
    pub fn stopping(&self) {
        self.stopping.store(true, Relaxed);
        notify(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: writing open segments, committing"),
        ]);
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.stopping.load(Relaxed) {
            Some("shutting down")
        } else if !self.joined.load(Relaxed) {
            Some("not yet a member of the consumer group")
        } else {
            None
        }
    }

    /// `None` when live, else for how long the consume loop has not turned.
    pub fn stalled_for(&self) -> Option<Duration> {
        let idle = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_turn_ms.load(Relaxed)),
        );
        (idle > STALL_LIMIT).then_some(idle)
    }
}

fn notify(states: &[NotifyState]) {
    // A lost notification is harmless (systemd times out the start or the
    // watchdog fires); it must never stop consumption.
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}
