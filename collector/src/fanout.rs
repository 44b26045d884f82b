//! Fan-out of consumed frames to independent processors (inference, live
//! view, ...), each on its own task behind its own bounded queue, beside the
//! archive, which runs in the consume loop.
//!
//! ```text
//! consume loop --(parse, reassemble, continuity)--> frame
//!     |-- archive (in line: segmenter -> archive)
//!     |-- queue(N) --> processor task "inference"
//!     '-- queue(N) --> processor task "..."
//! commit(p) = min(archive's safe offset, every processor's safe offset, consumed)
//! ```
//!
//! * A processor sees the frames of its partitions in partition order, once
//!   per consumption (a replay after a restart or a rebalance shows them
//!   again: at-least-once).
//! * `Lossy` processors (inference, live view) never slow the loop: when
//!   their queue is full the frame is skipped for them and counted
//!   (`camfleet_collector_processor_frames_skipped_total{processor}`).
//!   `Lossless` ones make the loop wait for room (Kafka holds the backlog).
//! * A processor finishes frames in order and may fail one: the runner
//!   retries it with backoff (0.2 s doubling to 30 s), never drops it.
//!
//! Architecture Invariant: a partition's offset is committed only below
//! frames every processor has finished (made durable or produced) or skipped
//! on purpose. [`Progress`] tracks, per partition, the frames handed to a
//! processor and not yet finished; the oldest one bounds the commit. A stuck
//! processor holds back the commit of the partition it is stuck on, and of
//! other partitions only as far as their frames queued behind it; it never
//! holds back the archive.

use bytes::Bytes;
use camfleet_shared::wire::FrameMeta;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One whole frame as consumed, shared by every processor.
#[derive(Debug)]
pub struct Frame {
    pub meta: FrameMeta,
    pub annex_b: Bytes,
    pub partition: i32,
    /// Offset of the frame's first record.
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Skip frames (counted) when the processor falls behind.
    Lossy,
    /// Hold the consume loop when the processor falls behind.
    Lossless,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProcessorError(pub String);

pub type ProcessFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProcessorError>> + Send + 'a>>;

/// A consumer of every frame, beside the archive.
pub trait Processor: Send + 'static {
    fn name(&self) -> &'static str;
    fn delivery(&self) -> Delivery;
    /// Handles one frame; returns once its outcome is durable or produced.
    /// An error makes the runner retry the same frame after a backoff.
    fn process<'a>(&'a mut self, frame: &'a Frame) -> ProcessFuture<'a>;
    /// A frame skipped because the queue was full (lossy processors).
    fn skipped(&mut self, _frame: &Frame) {}
    /// The partition moved to another instance: drop its state.
    fn revoke(&mut self, _partition: i32) {}
}

/// One frame handed to a processor and not yet finished: its first offset,
/// and whether it is finished (skipped frames are finished at once).
#[derive(Debug)]
struct Outstanding {
    offset: i64,
    done: bool,
}

/// Per-partition in-flight frames of one processor.
#[derive(Default, Debug)]
pub struct Progress {
    parts: HashMap<i32, (u64, VecDeque<Outstanding>)>,
}

impl Progress {
    /// Records a frame handed over (or skipped); returns the partition's
    /// assignment stamp the completion must carry.
    fn push(&mut self, partition: i32, offset: i64, done: bool) -> u64 {
        let (stamp, q) = self.parts.entry(partition).or_default();
        q.push_back(Outstanding { offset, done });
        Self::pop_done(q);
        *stamp
    }

    /// The processor finished its oldest unfinished frame of `partition`.
    fn finish(&mut self, partition: i32, stamp: u64) {
        let Some((current, q)) = self.parts.get_mut(&partition) else {
            return;
        };
        // A completion from before a revocation is not about these frames.
        if *current != stamp {
            return;
        }
        if let Some(o) = q.iter_mut().find(|o| !o.done) {
            o.done = true;
        }
        Self::pop_done(q);
    }

    fn pop_done(q: &mut VecDeque<Outstanding>) {
        while q.front().is_some_and(|o| o.done) {
            q.pop_front();
        }
    }

    /// Offset below which every frame of `partition` is finished; `None`
    /// when nothing is outstanding (no constraint).
    pub fn safe(&self, partition: i32) -> Option<i64> {
        self.parts
            .get(&partition)
            .and_then(|(_, q)| q.front().map(|o| o.offset))
    }

    fn revoke(&mut self, partition: i32) {
        let (stamp, q) = self.parts.entry(partition).or_default();
        *stamp += 1;
        q.clear();
    }
}

struct Job {
    frame: Arc<Frame>,
    stamp: u64,
}

enum Control {
    Revoke(i32),
}

struct Lane {
    name: &'static str,
    delivery: Delivery,
    tx: mpsc::Sender<Job>,
    control: mpsc::UnboundedSender<Control>,
    progress: Arc<Mutex<Progress>>,
    skipped_tx: mpsc::UnboundedSender<Arc<Frame>>,
}

/// The processors of one collector.
#[derive(Default)]
pub struct FanOut {
    lanes: Vec<Lane>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    stop: Option<watch::Sender<bool>>,
}

impl FanOut {
    /// Starts a task per processor, each with a queue of `queue_frames`.
    pub fn start(processors: Vec<Box<dyn Processor>>, queue_frames: usize) -> Self {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut out = Self {
            stop: Some(stop_tx),
            ..Self::default()
        };
        for p in processors {
            let (tx, rx) = mpsc::channel(queue_frames.max(1));
            let (control, control_rx) = mpsc::unbounded_channel();
            let (skipped_tx, skipped_rx) = mpsc::unbounded_channel();
            let progress = Arc::new(Mutex::new(Progress::default()));
            let name = p.name();
            describe(name);
            out.lanes.push(Lane {
                name,
                delivery: p.delivery(),
                tx,
                control,
                progress: progress.clone(),
                skipped_tx,
            });
            out.tasks.push(tokio::spawn(run_processor(
                p,
                rx,
                control_rx,
                skipped_rx,
                progress,
                stop_rx.clone(),
            )));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Hands `frame` to every processor, in order per partition.
    pub async fn dispatch(&self, frame: Frame) {
        let frame = Arc::new(frame);
        let (p, offset) = (frame.partition, frame.offset);
        for lane in &self.lanes {
            let permit = match lane.delivery {
                Delivery::Lossless => lane.tx.reserve().await.ok(),
                Delivery::Lossy => match lane.tx.try_reserve() {
                    Ok(permit) => Some(permit),
                    Err(mpsc::error::TrySendError::Full(())) => {
                        metrics::counter!("camfleet_collector_processor_frames_skipped_total", "processor" => lane.name)
                            .increment(1);
                        // Finished at once, but behind what is still queued.
                        lane.progress
                            .lock()
                            .expect("progress")
                            .push(p, offset, true);
                        let _ = lane.skipped_tx.send(frame.clone());
                        None
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => None,
                },
            };
            if let Some(permit) = permit {
                // Recorded before the send: the processor may finish it at once.
                let stamp = lane
                    .progress
                    .lock()
                    .expect("progress")
                    .push(p, offset, false);
                permit.send(Job {
                    frame: frame.clone(),
                    stamp,
                });
            }
        }
    }

    /// The lowest offset of `partition` some processor has not finished.
    pub fn safe(&self, partition: i32) -> Option<i64> {
        self.lanes
            .iter()
            .filter_map(|l| l.progress.lock().expect("progress").safe(partition))
            .min()
    }

    pub fn revoke(&self, partition: i32) {
        for lane in &self.lanes {
            lane.progress.lock().expect("progress").revoke(partition);
            let _ = lane.control.send(Control::Revoke(partition));
        }
    }

    /// Stops the processors (what they have not finished stays uncommitted
    /// and is replayed by the next owner), waiting up to `budget`.
    pub async fn stop(mut self, budget: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        self.lanes.clear();
        let all = futures::future::join_all(self.tasks.drain(..));
        if tokio::time::timeout(budget, all).await.is_err() {
            tracing::warn!("processors still busy at shutdown; their frames will be replayed");
        }
    }
}

fn describe(name: &'static str) {
    metrics::describe_counter!(
        "camfleet_collector_processor_frames_total",
        "Frames a processor finished"
    );
    metrics::describe_counter!(
        "camfleet_collector_processor_frames_skipped_total",
        "Frames a lossy processor skipped because it was behind"
    );
    metrics::describe_counter!(
        "camfleet_collector_processor_errors_total",
        "Processor failures (the frame is retried)"
    );
    metrics::counter!("camfleet_collector_processor_frames_total", "processor" => name)
        .increment(0);
    metrics::counter!("camfleet_collector_processor_frames_skipped_total", "processor" => name)
        .increment(0);
    metrics::counter!("camfleet_collector_processor_errors_total", "processor" => name)
        .increment(0);
}

async fn run_processor(
    mut processor: Box<dyn Processor>,
    mut rx: mpsc::Receiver<Job>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut skipped: mpsc::UnboundedReceiver<Arc<Frame>>,
    progress: Arc<Mutex<Progress>>,
    mut stop: watch::Receiver<bool>,
) {
    let name = processor.name();
    let done = metrics::counter!("camfleet_collector_processor_frames_total", "processor" => name);
    let errors =
        metrics::counter!("camfleet_collector_processor_errors_total", "processor" => name);
    let mut revoked: HashMap<i32, ()> = HashMap::new();
    loop {
        let job = tokio::select! {
            biased;
            _ = stop.changed() => return,
            Some(c) = control.recv() => {
                let Control::Revoke(p) = c;
                processor.revoke(p);
                revoked.insert(p, ());
                continue;
            }
            Some(f) = skipped.recv() => {
                processor.skipped(&f);
                continue;
            }
            job = rx.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let p = job.frame.partition;
        let mut backoff = Duration::from_millis(200);
        loop {
            // A frame of a partition revoked after it was queued is not ours.
            let stale = progress
                .lock()
                .expect("progress")
                .parts
                .get(&p)
                .is_some_and(|(stamp, _)| *stamp != job.stamp);
            if stale {
                break;
            }
            match processor.process(&job.frame).await {
                Ok(()) => {
                    done.increment(1);
                    progress.lock().expect("progress").finish(p, job.stamp);
                    break;
                }
                Err(e) => {
                    errors.increment(1);
                    tracing::warn!(processor = name, camera = %job.frame.meta.camera,
                        seq = job.frame.meta.seq, error = %e, retry_in_ms = backoff.as_millis() as u64,
                        "processor failed; retrying the frame");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bounds_the_commit_by_the_oldest_unfinished_frame() {
        let mut p = Progress::default();
        assert_eq!(p.safe(0), None);
        let s = p.push(0, 10, false);
        p.push(0, 12, false);
        p.push(0, 13, true); // skipped: finished at once, but behind 10 and 12
        assert_eq!(p.safe(0), Some(10));
        p.finish(0, s);
        assert_eq!(p.safe(0), Some(12));
        p.finish(0, s);
        assert_eq!(p.safe(0), None, "12 finished, 13 was skipped");
        // Other partitions are independent.
        p.push(1, 5, false);
        assert_eq!((p.safe(0), p.safe(1)), (None, Some(5)));
    }

    #[test]
    fn a_completion_from_before_a_revocation_is_ignored() {
        let mut p = Progress::default();
        let old = p.push(0, 10, false);
        p.revoke(0);
        let new = p.push(0, 50, false);
        p.finish(0, old);
        assert_eq!(p.safe(0), Some(50));
        p.finish(0, new);
        assert_eq!(p.safe(0), None);
    }
}
