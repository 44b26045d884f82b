//! Live view: per-camera live HLS (plain and LL-HLS) made from the frames
//! the collector consumes, with no re-encoding, and the recent detections
//! the ops page draws over the video (docs/live.md).
//!
//! ```text
//! fan-out --(lossy queue)--> LiveProcessor --push--> LiveHub: CameraLive per camera
//!                                                      |  (segments, parts, health)
//! camfleet.detections.v1 --> detections listener -----'  (recent records per camera)
//! HTTP (crate::http) reads the hub; blocked requests wait on its watch channel
//! ```
//!
//! Architecture Invariant: the live view is a `Lossy` processor: it never
//! holds back the consume loop, the archive or a commit for longer than it
//! takes to copy a frame into memory. What it serves is rebuilt from Kafka
//! after a restart, never stored.

pub mod detections;
pub mod fleet;
pub mod hub;
pub mod playlist;
pub mod processor;

use camfleet_shared::config::LiveConfig;
use camfleet_shared::CameraId;
use hub::CameraLive;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// One detection record as published (JSON), kept for the page.
#[derive(Clone, Debug)]
pub struct DetectionEntry {
    pub capture_us: u64,
    pub json: Arc<str>,
}

/// Everything the live routes read; shared by the processor, the
/// detections listener and the HTTP server.
pub struct LiveHub {
    pub config: LiveConfig,
    // std Mutex: every critical section is a few pointer moves or one
    // playlist render, never held across an await.
    cameras: Mutex<HashMap<CameraId, CameraLive>>,
    detections: Mutex<HashMap<CameraId, VecDeque<DetectionEntry>>>,
    detections_listening: AtomicBool,
    changed: watch::Sender<u64>,
    /// Fleet status and the other instances' cameras (`[live.fleet]`).
    pub fleet: std::sync::OnceLock<Arc<fleet::FleetView>>,
}

impl LiveHub {
    pub fn new(config: LiveConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            cameras: Mutex::new(HashMap::new()),
            detections: Mutex::new(HashMap::new()),
            detections_listening: AtomicBool::new(false),
            changed: watch::channel(0).0,
            fleet: std::sync::OnceLock::new(),
        })
    }

    pub fn cameras(&self) -> MutexGuard<'_, HashMap<CameraId, CameraLive>> {
        self.cameras.lock().expect("live cameras")
    }

    /// Wakes requests blocked on a playlist or part.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn add_detection(&self, camera: CameraId, entry: DetectionEntry) {
        let mut all = self.detections.lock().expect("live detections");
        let q = all.entry(camera).or_default();
        q.push_back(entry);
        while q.len() > self.config.detections_kept {
            q.pop_front();
        }
    }

    /// Detection records of `camera` captured after `since_us`, oldest first.
    pub fn detections_since(&self, camera: &CameraId, since_us: u64) -> Vec<DetectionEntry> {
        let all = self.detections.lock().expect("live detections");
        all.get(camera)
            .map(|q| {
                q.iter()
                    .filter(|d| d.capture_us > since_us)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether detection records are being read (inference may still
    /// publish none: then the page says so).
    pub fn detections_listening(&self) -> bool {
        self.detections_listening.load(Ordering::Relaxed)
    }

    pub(crate) fn set_detections_listening(&self, on: bool) {
        self.detections_listening.store(on, Ordering::Relaxed);
    }
}

/// Adds the live processor to `processors` and starts the detections
/// listener (unless `[live] detections_topic` is empty).
pub fn start(
    hub: Arc<LiveHub>,
    kafka: &camfleet_shared::config::CollectorKafkaConfig,
    processors: &mut Vec<Box<dyn crate::fanout::Processor>>,
) -> Result<(), rdkafka::error::KafkaError> {
    if !hub.config.detections_topic.is_empty() {
        let topic = hub.config.detections_topic.clone();
        detections::spawn(hub.clone(), kafka, &topic)?;
    }
    processors.push(Box::new(processor::LiveProcessor::new(hub)));
    Ok(())
}

/// Starts the fleet link of `[live.fleet]`, if configured.
pub fn start_fleet(hub: &Arc<LiveHub>) -> Result<(), fleet::FleetError> {
    if let Some(cfg) = &hub.config.fleet {
        let view = fleet::start(cfg, hub.clone())?;
        let _ = hub.fleet.set(view);
    }
    Ok(())
}
