//! The live view's fan-out processor: copies each frame into the camera's
//! live state. Lossy: when it falls behind, frames are skipped (counted)
//! and the camera's live stream resumes at the next IDR.

use super::hub::{CameraLive, Pushed};
use super::LiveHub;
use crate::fanout::{Delivery, Frame, ProcessFuture, Processor};
use std::sync::Arc;
use std::time::Instant;

pub struct LiveProcessor {
    hub: Arc<LiveHub>,
}

impl LiveProcessor {
    pub fn new(hub: Arc<LiveHub>) -> Self {
        Self { hub }
    }
}

impl Processor for LiveProcessor {
    fn name(&self) -> &'static str {
        "live"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Lossy
    }

    fn process<'a>(&'a mut self, frame: &'a Frame) -> ProcessFuture<'a> {
        let pushed = {
            let config = &self.hub.config;
            let mut cameras = self.hub.cameras();
            let live = cameras.entry(frame.meta.camera.clone()).or_insert_with(|| {
                CameraLive::new(
                    frame.partition,
                    config.part_target_ms,
                    config.playlist_segments * 2,
                )
            });
            live.partition = frame.partition;
            live.push(&frame.meta, &frame.annex_b, Instant::now())
        };
        if pushed == Pushed::Published {
            metrics::counter!("camfleet_collector_live_parts_published_total").increment(1);
            self.hub.notify();
        }
        Box::pin(async { Ok(()) })
    }

    fn skipped(&mut self, frame: &Frame) {
        if let Some(live) = self.hub.cameras().get_mut(&frame.meta.camera) {
            live.skipped();
        }
    }

    fn revoke(&mut self, partition: i32) {
        // Another instance serves these cameras now; a stale playlist here
        // would look live while it no longer moves.
        self.hub.cameras().retain(|_, c| c.partition != partition);
        self.hub.notify();
    }
}
