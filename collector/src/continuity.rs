//! Per-camera sequence bookkeeping (sans-I/O): gaps, duplicates, and the
//! archived watermark that makes replays idempotent.
//!
//! The watermark of a camera is the highest sequence number already durable in
//! the archive. It travels with the Kafka offset commit of the camera's
//! partition (commit metadata, see `consume::encode_watermarks`), so whichever
//! collector instance owns the partition next skips exactly the frames that
//! are already archived.
//!
//! A gap can be explained by the agent: when its spool evicts whole GOPs it
//! lists the evicted numbers in `cf.evicted` on the next frame it sends;
//! [`split_gap`] tells those apart from numbers lost for unknown reasons.

use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A frame to archive; `missing` frames were skipped before it (0 = contiguous).
    Accept { missing: u64 },
    /// Already in the archive (a replay after restart or rebalance).
    Archived,
    /// Seen before in this run (a duplicate record).
    Duplicate,
}

/// The missing numbers of one sequence gap, split by what the agent said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GapSplit {
    /// Parts of the gap the agent reported as evicted at the edge: sorted,
    /// disjoint, not adjacent.
    pub evicted: Vec<RangeInclusive<u64>>,
    /// How many numbers `evicted` covers.
    pub evicted_frames: u64,
    /// Missing numbers nobody accounted for (lost or unknown).
    pub unexplained: u64,
}

/// Splits the gap just before frame `seq` (`Verdict::Accept { missing }`,
/// i.e. the numbers `seq - missing ..= seq - 1`) into the numbers covered by
/// the frame's `cf.evicted` ranges and the rest.
///
/// Only numbers inside the gap count: ranges (or parts of them) outside it,
/// e.g. already seen before a replay, are ignored, and a number listed by
/// several overlapping ranges counts once.
pub fn split_gap(seq: u64, missing: u64, evicted: &[RangeInclusive<u64>]) -> GapSplit {
    let missing = missing.min(seq);
    if missing == 0 {
        return GapSplit::default();
    }
    let (lo, hi) = (seq - missing, seq - 1);
    let mut clipped: Vec<(u64, u64)> = evicted
        .iter()
        .map(|r| ((*r.start()).max(lo), (*r.end()).min(hi)))
        .filter(|(a, b)| a <= b)
        .collect();
    clipped.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(clipped.len());
    for (a, b) in clipped {
        match merged.last_mut() {
            Some((_, end)) if a <= end.saturating_add(1) => *end = (*end).max(b),
            _ => merged.push((a, b)),
        }
    }
    let evicted_frames: u64 = merged.iter().map(|(a, b)| b - a + 1).sum();
    GapSplit {
        evicted: merged.into_iter().map(|(a, b)| a..=b).collect(),
        evicted_frames,
        unexplained: missing - evicted_frames,
    }
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

    /// The gap before frame 300 with 120 missing is 180..=299.
    #[test]
    fn gap_exactly_evicted() {
        let s = split_gap(300, 120, &[180..=299]);
        assert_eq!(s.evicted, vec![180..=299]);
        assert_eq!((s.evicted_frames, s.unexplained), (120, 0));
    }

    #[test]
    fn ranges_partly_outside_the_gap_are_clipped() {
        // 170..=179 was seen before the gap, 300 is the carrying frame itself.
        let s = split_gap(300, 120, &[170..=200, 290..=310]);
        assert_eq!(s.evicted, vec![180..=200, 290..=299]);
        assert_eq!((s.evicted_frames, s.unexplained), (31, 89));
    }

    #[test]
    fn ranges_outside_the_gap_count_nothing() {
        // E.g. replayed: the eviction was already counted at an earlier gap.
        let s = split_gap(300, 10, &[120..=179, 240..=289, 300..=400]);
        assert_eq!(
            s,
            GapSplit {
                evicted: vec![],
                evicted_frames: 0,
                unexplained: 10
            }
        );
    }

    #[test]
    fn several_ranges() {
        let s = split_gap(300, 180, &[240..=299, 120..=179]);
        assert_eq!(s.evicted, vec![120..=179, 240..=299]);
        assert_eq!((s.evicted_frames, s.unexplained), (120, 60));
    }

    #[test]
    fn no_ranges_or_no_gap() {
        let s = split_gap(300, 5, &[]);
        assert_eq!((s.evicted_frames, s.unexplained), (0, 5));
        assert!(s.evicted.is_empty());
        assert_eq!(split_gap(300, 0, &[1..=299]), GapSplit::default());
    }

    #[test]
    fn overlapping_and_adjacent_ranges_count_each_number_once() {
        let s = split_gap(100, 99, &[10..=20, 15..=30, 20..=20, 31..=40, 60..=60]);
        assert_eq!(s.evicted, vec![10..=40, 60..=60]);
        assert_eq!((s.evicted_frames, s.unexplained), (32, 67));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let s = split_gap(u64::MAX, u64::MAX, &[0..=u64::MAX, 0..=u64::MAX]);
        assert_eq!(s.evicted, vec![0..=u64::MAX - 1]);
        assert_eq!((s.evicted_frames, s.unexplained), (u64::MAX, 0));
    }
}
