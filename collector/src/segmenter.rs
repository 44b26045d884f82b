//! Groups each camera's frames into archive segments (sans-I/O).
//!
//! Cut rule, applied before adding frame `f` to the camera's open segment `S`:
//! close `S` when
//! 1. `f` is a keyframe and `f.pts - S.first_pts >= target` (the normal case:
//!    segments are GOP-aligned and start with an IDR, so each plays alone), or
//! 2. `f.epoch != S.epoch` (a new encoder: new SPS/PPS and media clock), or
//! 3. `f.seq != S.last_seq + 1` (a gap: never stitch across missing frames), or
//! 4. `S` would exceed `max_bytes`.
//!
//! Architecture Invariant: the cut depends only on the frames, never on
//! arrival time, so a replay from any segment start rebuilds byte-identical
//! segments with identical names, and every segment starts where the stream
//! allows decoding to start (an IDR, unless the stream itself has a gap or
//! starts mid-GOP).
//!
//! Time only decides when an *open* segment is also written early, as a
//! snapshot under its final name ([`Segmenter::due_snapshots`]): a camera
//! that went quiet, or a shutdown. A snapshot does not close the segment;
//! when the segment closes, the full file replaces the snapshot.

use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a frame's bytes are while its segment waits to be written.
///
/// The collector moves them out of memory into a spill file (`crate::spill`)
/// as they arrive, so memory holds only the frames' metadata: open segments
/// of hundreds of cameras would otherwise hold ~1 MB each (4 s at 2 Mbit/s).
#[derive(Clone, Debug)]
pub enum FrameData {
    Memory(bytes::Bytes),
    /// `len` bytes at `offset` in an unnamed temporary file, which the
    /// kernel frees when its last handle (the last frame) is dropped.
    Spilled {
        file: Arc<std::fs::File>,
        offset: u64,
        len: u32,
    },
}

impl FrameData {
    pub fn len(&self) -> usize {
        match self {
            Self::Memory(b) => b.len(),
            Self::Spilled { len, .. } => *len as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A frame as the segmenter keeps it, with where it came from in Kafka.
#[derive(Clone, Debug)]
pub struct SegmentFrame {
    pub meta: FrameMeta,
    pub annex_b: FrameData,
    pub partition: i32,
    /// Offset of the frame's first record (its first chunk).
    pub offset: i64,
}

/// A run of one camera's frames, closed and ready to archive.
#[derive(Debug)]
pub struct Segment {
    pub camera: CameraId,
    pub frames: Vec<SegmentFrame>,
    pub reason: CutReason,
    /// How many leading frames an earlier snapshot already made durable.
    pub snapshotted: usize,
}

impl Segment {
    pub fn first(&self) -> &SegmentFrame {
        &self.frames[0]
    }
    pub fn last(&self) -> &SegmentFrame {
        self.frames.last().expect("segments are never empty")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutReason {
    Duration,
    Epoch,
    Gap,
    Size,
}

#[derive(Clone, Copy, Debug)]
pub struct SegmentPolicy {
    pub target_90k: u64,
    pub max_bytes: usize,
    pub idle: Duration,
}

struct Open {
    frames: Vec<SegmentFrame>,
    bytes: usize,
    last_arrival: Instant,
    /// Frames written by the last snapshot.
    snapshotted: usize,
}

pub struct Segmenter {
    policy: SegmentPolicy,
    open: HashMap<CameraId, Open>,
}

impl Segmenter {
    pub fn new(policy: SegmentPolicy) -> Self {
        Self {
            policy,
            open: HashMap::new(),
        }
    }

    /// Adds a frame; returns the segment it closed, if any.
    pub fn push(&mut self, frame: SegmentFrame, now: Instant) -> Option<Segment> {
        let camera = frame.meta.camera.clone();
        let mut closed = None;
        if let Some(open) = self.open.get(&camera) {
            let first = &open.frames[0].meta;
            let last = &open
                .frames
                .last()
                .expect("open segments are never empty")
                .meta;
            let f = &frame.meta;
            let reason = if f.epoch != first.epoch {
                Some(CutReason::Epoch)
            } else if f.seq != last.seq + 1 {
                Some(CutReason::Gap)
            } else if f.keyframe
                && f.pts_90k.saturating_sub(first.pts_90k) >= self.policy.target_90k
            {
                Some(CutReason::Duration)
            } else if open.bytes + frame.annex_b.len() > self.policy.max_bytes {
                Some(CutReason::Size)
            } else {
                None
            };
            if let Some(reason) = reason {
                closed = self.close(&camera, reason);
            }
        }
        let open = self.open.entry(camera).or_insert_with(|| Open {
            frames: Vec::new(),
            bytes: 0,
            last_arrival: now,
            snapshotted: 0,
        });
        open.bytes += frame.annex_b.len();
        open.last_arrival = now;
        open.frames.push(frame);
        closed
    }

    /// Cameras whose open segment received no frame for the idle time and
    /// holds frames no snapshot has written yet. With `now = None`, every open
    /// segment with such frames (shutdown).
    pub fn due_snapshots(&self, now: Option<Instant>) -> Vec<CameraId> {
        let mut due: Vec<CameraId> = self
            .open
            .iter()
            .filter(|(_, o)| o.snapshotted < o.frames.len())
            .filter(|(_, o)| {
                now.is_none_or(|now| now.duration_since(o.last_arrival) >= self.policy.idle)
            })
            .map(|(c, _)| c.clone())
            .collect();
        due.sort();
        due
    }

    /// The frames of a camera's open segment, so far.
    pub fn open_frames(&self, camera: &CameraId) -> Option<&[SegmentFrame]> {
        self.open.get(camera).map(|o| &o.frames[..])
    }

    /// The same, to move their bytes out of memory (`crate::spill`).
    pub fn open_frames_mut(&mut self, camera: &CameraId) -> Option<&mut [SegmentFrame]> {
        self.open.get_mut(camera).map(|o| &mut o.frames[..])
    }

    /// How many frames of the camera's open segment a snapshot has written.
    pub fn snapshotted(&self, camera: &CameraId) -> usize {
        self.open.get(camera).map_or(0, |o| o.snapshotted)
    }

    /// Records that a snapshot wrote the first `frames` frames.
    pub fn mark_snapshotted(&mut self, camera: &CameraId, frames: usize) {
        if let Some(o) = self.open.get_mut(camera) {
            o.snapshotted = o.snapshotted.max(frames);
        }
    }

    /// Forgets the open segments of `partition` (it was revoked: the next owner
    /// replays them from the committed offset).
    pub fn discard_partition(&mut self, partition: i32) -> usize {
        let before = self.open.len();
        self.open.retain(|_, o| o.frames[0].partition != partition);
        before - self.open.len()
    }

    /// The lowest Kafka offset still needed by an open segment of `partition`.
    pub fn lowest_open_offset(&self, partition: i32) -> Option<i64> {
        self.open
            .values()
            .filter(|o| o.frames[0].partition == partition)
            .map(|o| o.frames[0].offset)
            .min()
    }

    pub fn open_segments(&self) -> usize {
        self.open.len()
    }

    fn close(&mut self, camera: &CameraId, reason: CutReason) -> Option<Segment> {
        self.open.remove(camera).map(|o| Segment {
            camera: camera.clone(),
            frames: o.frames,
            reason,
            snapshotted: o.snapshotted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::{Codec, Rational};

    fn frame(cam: &str, seq: u64, keyframe: bool, epoch: u64, offset: i64) -> SegmentFrame {
        let fps = Rational::new(30, 1).unwrap();
        SegmentFrame {
            meta: FrameMeta {
                camera: CameraId::new(cam).unwrap(),
                seq,
                capture_us: 0,
                pts_90k: fps.pts_90k(seq),
                keyframe,
                width: 320,
                height: 240,
                fps,
                codec: Codec::H264,
                epoch,
            },
            annex_b: FrameData::Memory(vec![0; 100].into()),
            partition: 0,
            offset,
        }
    }

    fn policy() -> SegmentPolicy {
        SegmentPolicy {
            target_90k: 2 * 90_000,
            max_bytes: 1 << 20,
            idle: Duration::from_secs(5),
        }
    }

    /// (first seq, frames, reason) of each closed segment, then the open one
    /// with reason `None`.
    fn cuts(frames: impl Iterator<Item = SegmentFrame>) -> Vec<(u64, usize, Option<CutReason>)> {
        let mut s = Segmenter::new(policy());
        let now = Instant::now();
        let mut out: Vec<_> = frames
            .filter_map(|f| s.push(f, now))
            .map(|seg| (seg.first().meta.seq, seg.frames.len(), Some(seg.reason)))
            .collect();
        for cam in s.due_snapshots(None) {
            let open = s.open_frames(&cam).unwrap();
            out.push((open[0].meta.seq, open.len(), None));
        }
        out
    }

    #[test]
    fn cuts_at_the_first_keyframe_past_the_target() {
        // GOP 45 frames (1.5 s): the cut waits for the IDR at 90 (3 s).
        let got = cuts((0..200).map(|i| frame("s/a", i, i % 45 == 0, 1, i as i64)));
        let d = Some(CutReason::Duration);
        assert_eq!(got, [(0, 90, d), (90, 90, d), (180, 20, None)]);
    }

    #[test]
    fn a_replay_from_a_segment_start_rebuilds_the_same_segments() {
        let all = cuts((0..200).map(|i| frame("s/a", i, i % 45 == 0, 1, i as i64)));
        let replay = cuts((90..200).map(|i| frame("s/a", i, i % 45 == 0, 1, i as i64)));
        assert_eq!(all[1..], replay[..]);
    }

    #[test]
    fn epoch_change_and_gap_start_new_segments() {
        let frames = (0..10)
            .map(|i| frame("s/a", i, i == 0, 1, i as i64))
            .chain((12..15).map(|i| frame("s/a", i, false, 1, i as i64)))
            .chain((15..20).map(|i| frame("s/a", i, i == 15, 2, i as i64)));
        assert_eq!(
            cuts(frames),
            [
                (0, 10, Some(CutReason::Gap)),
                (12, 3, Some(CutReason::Epoch)),
                (15, 5, None)
            ]
        );
    }

    #[test]
    fn cameras_are_independent_and_commit_point_is_the_oldest_open_start() {
        let mut s = Segmenter::new(policy());
        let now = Instant::now();
        s.push(frame("s/a", 0, true, 1, 10), now);
        s.push(frame("s/b", 0, true, 1, 11), now);
        s.push(frame("s/a", 1, false, 1, 12), now);
        assert_eq!(s.lowest_open_offset(0), Some(10));
        assert_eq!(s.lowest_open_offset(1), None);
        assert_eq!(s.discard_partition(0), 2);
        assert_eq!(s.lowest_open_offset(0), None);
    }

    /// A quiet camera gets a snapshot, but its segment stays open: the cut
    /// (and so the next segment's first frame) does not depend on the pause.
    #[test]
    fn a_pause_snapshots_the_open_segment_without_cutting_it() {
        let mut s = Segmenter::new(policy());
        let t0 = Instant::now();
        let cam = CameraId::new("s/a").unwrap();
        for i in 0..10 {
            assert!(s
                .push(frame("s/a", i, i % 45 == 0, 1, i as i64), t0)
                .is_none());
        }
        assert!(s
            .due_snapshots(Some(t0 + Duration::from_secs(1)))
            .is_empty());
        let late = t0 + Duration::from_secs(6);
        assert_eq!(s.due_snapshots(Some(late)), std::slice::from_ref(&cam));
        s.mark_snapshotted(&cam, 10);
        assert!(
            s.due_snapshots(Some(late)).is_empty(),
            "nothing new to write"
        );
        // The stream resumes: same segment, cut at the usual keyframe.
        let mut closed = None;
        for i in 10..100 {
            closed = closed.or(s.push(frame("s/a", i, i % 45 == 0, 1, i as i64), late));
        }
        let seg = closed.expect("cut at the IDR of frame 90");
        assert_eq!(
            (seg.first().meta.seq, seg.frames.len(), seg.snapshotted),
            (0, 90, 10)
        );
        assert_eq!(
            s.due_snapshots(None),
            [cam],
            "frames 90.. are not written yet"
        );
    }
}
