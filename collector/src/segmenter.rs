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
//! segments with identical names. The one time-based exception is
//! [`Segmenter::close_idle`] (a camera that stopped sending), which the
//! consumer uses to write out the tail of a quiet stream.

use camfleet_shared::wire::FrameMeta;
use camfleet_shared::CameraId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A frame as the segmenter keeps it, with where it came from in Kafka.
#[derive(Clone, Debug)]
pub struct SegmentFrame {
    pub meta: FrameMeta,
    pub annex_b: Vec<u8>,
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
    Idle,
    Shutdown,
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
        });
        open.bytes += frame.annex_b.len();
        open.last_arrival = now;
        open.frames.push(frame);
        closed
    }

    /// Closes segments that received no frame for the idle time.
    pub fn close_idle(&mut self, now: Instant) -> Vec<Segment> {
        let idle: Vec<CameraId> = self
            .open
            .iter()
            .filter(|(_, o)| now.duration_since(o.last_arrival) >= self.policy.idle)
            .map(|(c, _)| c.clone())
            .collect();
        idle.iter()
            .filter_map(|c| self.close(c, CutReason::Idle))
            .collect()
    }

    /// Closes every open segment (graceful shutdown).
    pub fn close_all(&mut self) -> Vec<Segment> {
        let all: Vec<CameraId> = self.open.keys().cloned().collect();
        all.iter()
            .filter_map(|c| self.close(c, CutReason::Shutdown))
            .collect()
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
            annex_b: vec![0; 100],
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

    /// Segment first sequence numbers for a 30 fps camera with an IDR every `gop`.
    fn cuts(frames: impl Iterator<Item = SegmentFrame>) -> Vec<(u64, usize, CutReason)> {
        let mut s = Segmenter::new(policy());
        let now = Instant::now();
        let mut out: Vec<_> = frames
            .filter_map(|f| s.push(f, now))
            .map(|seg| (seg.first().meta.seq, seg.frames.len(), seg.reason))
            .collect();
        out.extend(
            s.close_all()
                .into_iter()
                .map(|seg| (seg.first().meta.seq, seg.frames.len(), seg.reason)),
        );
        out
    }

    #[test]
    fn cuts_at_the_first_keyframe_past_the_target() {
        // GOP 45 frames (1.5 s): the cut waits for the IDR at 90 (3 s).
        let got = cuts((0..200).map(|i| frame("s/a", i, i % 45 == 0, 1, i as i64)));
        assert_eq!(
            got,
            [
                (0, 90, CutReason::Duration),
                (90, 90, CutReason::Duration),
                (180, 20, CutReason::Shutdown)
            ]
        );
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
                (0, 10, CutReason::Gap),
                (12, 3, CutReason::Epoch),
                (15, 5, CutReason::Shutdown)
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

    #[test]
    fn idle_cameras_are_closed() {
        let mut s = Segmenter::new(policy());
        let t0 = Instant::now();
        s.push(frame("s/a", 0, true, 1, 0), t0);
        assert!(s.close_idle(t0 + Duration::from_secs(1)).is_empty());
        let closed = s.close_idle(t0 + Duration::from_secs(6));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].reason, CutReason::Idle);
    }
}
