//! Retraining inside the collector: after `retrain_after_labels` new labels
//! for a camera, or every `retrain_interval_s` for a camera that got any new
//! label since its last training (docs/learning.md "Schedule").
//!
//! The labels counted are the ones this instance's table writer made durable
//! (ops labels from `camfleet.labels.v1` and its own stillness labels), so
//! the instance that records a camera's labels trains it. Should two
//! instances both train one camera (its ops labels and its features on
//! partitions held by different instances), the second candidate must still
//! beat the first at the gate: wasted work, never a worse model.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Labels made durable per camera (`site/camera`) since last taken; shared
/// by the table writer (adds) and the schedule (takes).
#[derive(Default)]
pub struct LabelCounts(Mutex<BTreeMap<String, u64>>);

impl LabelCounts {
    pub fn add(&self, camera: &str, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(camera.to_string()).or_default() += n;
    }
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The decision, sans I/O: which cameras are due now.
pub struct Schedule {
    after_labels: u64,
    interval: Option<Duration>,
    /// New labels per camera since its last training.
    pending: BTreeMap<String, u64>,
    last_trained: BTreeMap<String, Instant>,
    started: Instant,
}

impl Schedule {
    pub fn new(after_labels: u64, interval_s: u64, now: Instant) -> Self {
        Self {
            after_labels,
            interval: (interval_s > 0).then(|| Duration::from_secs(interval_s)),
            pending: BTreeMap::new(),
            last_trained: BTreeMap::new(),
            started: now,
        }
    }

    /// Adds newly counted labels; returns the cameras to train now (and
    /// treats them as trained at `now`).
    pub fn due(&mut self, new: BTreeMap<String, u64>, now: Instant) -> Vec<String> {
        for (camera, n) in new {
            *self.pending.entry(camera).or_default() += n;
        }
        let mut out = Vec::new();
        for (camera, n) in &self.pending {
            let since = self
                .last_trained
                .get(camera)
                .copied()
                .unwrap_or(self.started);
            let by_count = self.after_labels > 0 && *n >= self.after_labels;
            let by_time = *n > 0
                && self
                    .interval
                    .is_some_and(|i| now.duration_since(since) >= i);
            if by_count || by_time {
                out.push(camera.clone());
            }
        }
        for camera in &out {
            self.pending.remove(camera);
            self.last_trained.insert(camera.clone(), now);
        }
        out
    }
}

/// Runs the schedule until `shutdown`: every `check` it takes the counts and
/// trains the cameras that are due, through the same path as
/// `camfleet-collector train --camera C` (gate included).
pub async fn run(
    config: std::path::PathBuf,
    learning: camfleet_shared::config::LearningConfig,
    counts: Arc<LabelCounts>,
    check: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut schedule = Schedule::new(
        learning.retrain_after_labels,
        learning.retrain_interval_s,
        Instant::now(),
    );
    let trainings = metrics::counter!("camfleet_collector_learning_trainings_total");
    let shadow_check = Duration::from_secs(learning.shadow_check_s);
    let mut last_shadow_check = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(check.min(shadow_check)) => {}
            _ = shutdown.changed() => return,
        }
        // The live gate of candidates in shadow (docs/learning.md "Live
        // shadow"); decisions are logged like trainings.
        if last_shadow_check.elapsed() >= shadow_check {
            last_shadow_check = Instant::now();
            match super::cli::live_gate_outcomes(&config).await {
                Ok(outcomes) => {
                    for (decision, line) in outcomes {
                        if decision == super::evaluate::LiveDecision::Wait {
                            tracing::debug!(outcome = %line, "live gate");
                        } else {
                            tracing::info!(outcome = %line, "live gate");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "live gate"),
            }
        }
        for camera in schedule.due(counts.take(), Instant::now()) {
            trainings.increment(1);
            let args = super::cli::TrainArgs {
                config: config.clone(),
                camera: Some(camera.clone()),
                dry_run: false,
                labels: None,
                frames: None,
            };
            match super::cli::train_outcomes(args).await {
                Ok(lines) => {
                    for line in lines {
                        tracing::info!(%camera, outcome = %line, "scheduled training");
                    }
                }
                Err(e) => tracing::warn!(%camera, error = %format!("{e:#}"), "scheduled training"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
    }

    #[test]
    fn trains_a_camera_after_enough_labels_or_after_the_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(10, 3600, t0);
        assert!(s.due(counts(&[("s/a", 6), ("s/b", 2)]), t0).is_empty());
        // s/a reaches 10 labels: only s/a, and its count restarts.
        assert_eq!(
            s.due(counts(&[("s/a", 4)]), t0 + Duration::from_secs(1)),
            ["s/a"]
        );
        assert!(s
            .due(counts(&[("s/a", 9)]), t0 + Duration::from_secs(2))
            .is_empty());
        // An hour after the start, s/b (2 labels) is due by time; s/a was
        // trained 1 s after the start, so not yet.
        let hour = t0 + Duration::from_secs(3600);
        assert_eq!(s.due(BTreeMap::new(), hour), ["s/b"]);
        assert_eq!(
            s.due(BTreeMap::new(), hour + Duration::from_secs(1)),
            ["s/a"]
        );
        // Nothing new: nothing due, however long.
        assert!(s
            .due(BTreeMap::new(), hour + Duration::from_secs(100_000))
            .is_empty());
    }

    #[test]
    fn zero_turns_a_trigger_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(0, 0, t0);
        assert!(s
            .due(
                counts(&[("s/a", 1_000_000)]),
                t0 + Duration::from_secs(1_000_000)
            )
            .is_empty());
    }
}
