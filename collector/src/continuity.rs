//! Per-camera sequence bookkeeping (sans-I/O): gaps, duplicates, and the
//! archived watermark that makes replays idempotent.
//!
//! The watermark of a camera is the highest sequence number already durable in
//! the archive. It travels with the Kafka offset commit of the camera's
//! partition (commit metadata, see `consume::encode_watermarks`), so whichever
//! collector instance owns the partition next skips exactly the frames that
//! are already archived.

use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A frame to archive; `missing` frames were skipped before it (0 = contiguous).
    Accept { missing: u64 },
    /// Already in the archive (a replay after restart or rebalance).
    Archived,
    /// Seen before in this run (a duplicate record).
    Duplicate,
}

#[derive(Default)]
struct CameraState {
    partition: i32,
    last_seq: Option<u64>,
    watermark: Option<u64>,
}

#[derive(Default)]
pub struct Continuity {
    cameras: HashMap<CameraId, CameraState>,
}

impl Continuity {
    pub fn check(&mut self, meta: &FrameMeta, partition: i32) -> Verdict {
        let s = self.cameras.entry(meta.camera.clone()).or_default();
        s.partition = partition;
        if s.watermark.is_some_and(|w| meta.seq <= w) {
            return Verdict::Archived;
        }
        let previous = s.last_seq.or(s.watermark);
        if s.last_seq.is_some_and(|l| meta.seq <= l) {
            return Verdict::Duplicate;
        }
        s.last_seq = Some(meta.seq);
        let missing = previous.map_or(0, |p| meta.seq.saturating_sub(p + 1));
        Verdict::Accept { missing }
    }

    /// Records that everything up to `seq` of `camera` is archived.
    pub fn archived(&mut self, camera: &CameraId, seq: u64) {
        if let Some(s) = self.cameras.get_mut(camera) {
            s.watermark = Some(s.watermark.map_or(seq, |w| w.max(seq)));
        }
    }

    /// Watermarks of the cameras in `partition`, for its commit metadata.
    pub fn watermarks(&self, partition: i32) -> BTreeMap<String, u64> {
        self.cameras
            .iter()
            .filter(|(_, s)| s.partition == partition)
            .filter_map(|(c, s)| Some((c.to_string(), s.watermark?)))
            .collect()
    }

    /// Seeds watermarks read from a partition's committed metadata.
    pub fn load(&mut self, partition: i32, watermarks: BTreeMap<CameraId, u64>) {
        for (camera, seq) in watermarks {
            let s = self.cameras.entry(camera).or_default();
            s.partition = partition;
            s.watermark = Some(s.watermark.map_or(seq, |w| w.max(seq)));
        }
    }

    /// Forgets the cameras of a revoked partition.
    pub fn discard_partition(&mut self, partition: i32) {
        self.cameras.retain(|_, s| s.partition != partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::{Codec, Rational};

    fn meta(seq: u64) -> FrameMeta {
        FrameMeta {
            camera: CameraId::new("s/a").unwrap(),
            seq,
            capture_us: 0,
            pts_90k: 0,
            keyframe: false,
            width: 2,
            height: 2,
            fps: Rational::new(1, 1).unwrap(),
            codec: Codec::H264,
            epoch: 1,
        }
    }

    #[test]
    fn counts_gaps_and_duplicates() {
        let mut c = Continuity::default();
        assert_eq!(c.check(&meta(5), 0), Verdict::Accept { missing: 0 });
        assert_eq!(c.check(&meta(6), 0), Verdict::Accept { missing: 0 });
        assert_eq!(c.check(&meta(9), 0), Verdict::Accept { missing: 2 });
        assert_eq!(c.check(&meta(9), 0), Verdict::Duplicate);
    }

    #[test]
    fn replayed_frames_below_the_watermark_are_skipped() {
        let mut c = Continuity::default();
        let cam = CameraId::new("s/a").unwrap();
        c.load(3, BTreeMap::from([(cam.clone(), 10)]));
        assert_eq!(c.check(&meta(7), 3), Verdict::Archived);
        assert_eq!(c.check(&meta(10), 3), Verdict::Archived);
        assert_eq!(c.check(&meta(11), 3), Verdict::Accept { missing: 0 });
        c.archived(&cam, 11);
        assert_eq!(c.watermarks(3), BTreeMap::from([("s/a".to_string(), 11)]));
        c.discard_partition(3);
        assert!(c.watermarks(3).is_empty());
    }
}
