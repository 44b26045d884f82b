//! Per-camera live state: the segments and parts of the live playlist, and
//! the camera's health. Sans-I/O apart from the watch channel that wakes
//! blocked playlist and part requests.
//!
//! Cut rule (deterministic, so a name always means the same bytes):
//! * a segment starts at every IDR and holds one GOP;
//! * within it, a part closes as soon as its frames reach `part_target`
//!   (by the frames' nominal duration), and never exceeds it;
//! * segment bytes = its parts' bytes, concatenated; each part is a
//!   self-contained MPEG-TS (PAT/PMT first), so a player may start on any
//!   independent part and the segment stays a valid TS.
//!
//! A break in the stream (a new epoch, a sequence gap from the agent, or a
//! frame the live processor skipped because it fell behind) closes the open
//! segment; frames are then dropped until the next IDR, whose segment
//! carries `EXT-X-DISCONTINUITY`.

use crate::archive::mpegts::{mux_segment, TsFrame};
use bytes::{Bytes, BytesMut};
use camfleet_shared::wire::FrameMeta;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One partial segment (LL-HLS `EXT-X-PART`).
#[derive(Clone, Debug)]
pub struct Part {
    pub duration_s: f64,
    /// Starts with an IDR.
    pub independent: bool,
    pub bytes: Bytes,
}

/// One segment of the live playlist: one GOP.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Media sequence number in this instance's playlist.
    pub msn: u64,
    pub epoch: u64,
    /// Sequence number of the segment's IDR: with `epoch`, its name.
    pub first_seq: u64,
    /// Capture time of the IDR (`EXT-X-PROGRAM-DATE-TIME`).
    pub capture_us: u64,
    pub discontinuity: bool,
    pub parts: Vec<Part>,
    pub duration_s: f64,
    /// Whole segment (empty while it is open).
    pub bytes: Bytes,
}

impl Segment {
    /// The name in URLs: `<epoch>-<first seq>` (unique per camera).
    pub fn name(&self) -> String {
        format!("{}-{}", self.epoch, self.first_seq)
    }
}

/// Per-camera health shown on the page and in `/api/cameras`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    pub frames: u64,
    pub bytes: u64,
    /// Frames per second over the last few seconds of arrivals.
    pub fps: f64,
    pub bitrate_bps: f64,
    /// Sequence gaps seen (frames the agent evicted or lost).
    pub gaps: u64,
    /// Frames the live processor skipped because it fell behind.
    pub skipped: u64,
    pub epoch: u64,
    pub width: u32,
    pub height: u32,
    /// Capture time of the newest frame (µs since the Unix epoch).
    pub last_capture_us: u64,
}

/// Arrivals kept for the fps and bitrate estimate.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// The live state of one camera.
pub struct CameraLive {
    pub partition: i32,
    segments: VecDeque<Segment>,
    open: Option<Segment>,
    pending: Vec<(u64, Bytes, bool)>,
    pending_duration_s: f64,
    next_msn: u64,
    /// Discontinuities among segments dropped off the front.
    discontinuity_seq: u64,
    last: Option<(u64, u64)>,
    need_idr: bool,
    break_pending: bool,
    health: Health,
    arrivals: VecDeque<(Instant, usize)>,
    last_arrival: Option<Instant>,
    part_target_s: f64,
    kept_segments: usize,
}

/// What a frame did to the camera's live state.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// A part or segment was published.
    Published,
    /// Kept in the open part.
    Buffered,
    /// Dropped: waiting for an IDR after a break, or a replayed frame.
    Dropped,
}

impl CameraLive {
    /// `kept_segments` closed segments stay fetchable (twice the playlist
    /// window, so a client a little behind still finds what it listed).
    pub fn new(partition: i32, part_target_ms: u64, kept_segments: usize) -> Self {
        Self {
            partition,
            segments: VecDeque::new(),
            open: None,
            pending: Vec::new(),
            pending_duration_s: 0.0,
            next_msn: 0,
            discontinuity_seq: 0,
            last: None,
            need_idr: true,
            break_pending: false,
            health: Health::default(),
            arrivals: VecDeque::new(),
            last_arrival: None,
            part_target_s: part_target_ms as f64 / 1000.0,
            kept_segments,
        }
    }

    pub fn part_target_s(&self) -> f64 {
        self.part_target_s
    }

    pub fn push(&mut self, meta: &FrameMeta, annex_b: &Bytes, now: Instant) -> Pushed {
        if let Some((epoch, seq)) = self.last {
            if epoch == meta.epoch && meta.seq <= seq {
                // Replayed after a rebalance or restart: already shown.
                return Pushed::Dropped;
            }
        }
        self.note_health(meta, annex_b.len(), now);
        let contiguous = self
            .last
            .is_some_and(|(epoch, seq)| epoch == meta.epoch && seq + 1 == meta.seq);
        if self.last.is_some() && !contiguous {
            if self.last.is_some_and(|(epoch, _)| epoch == meta.epoch) {
                self.health.gaps += 1;
            }
            self.break_stream();
        }
        self.last = Some((meta.epoch, meta.seq));
        let mut published = false;
        if meta.keyframe {
            published |= self.close_open();
            self.open = Some(Segment {
                msn: self.next_msn,
                epoch: meta.epoch,
                first_seq: meta.seq,
                capture_us: meta.capture_us,
                discontinuity: std::mem::take(&mut self.break_pending),
                parts: Vec::new(),
                duration_s: 0.0,
                bytes: Bytes::new(),
            });
            self.next_msn += 1;
            self.need_idr = false;
        } else if self.need_idr {
            return Pushed::Dropped;
        }
        let frame_s = meta.fps.frame_ticks_90k() as f64 / 90_000.0;
        if self.part_target_s > 0.0
            && !self.pending.is_empty()
            && self.pending_duration_s + frame_s > self.part_target_s + 1e-6
        {
            published |= self.flush_part();
        }
        self.pending
            .push((meta.pts_90k, annex_b.clone(), meta.keyframe));
        self.pending_duration_s += frame_s;
        if self.part_target_s > 0.0 && self.pending_duration_s + 1e-6 >= self.part_target_s {
            published |= self.flush_part();
        }
        if published {
            Pushed::Published
        } else {
            Pushed::Buffered
        }
    }

    /// A frame of this camera was skipped (the processor fell behind): the
    /// stream cannot be decoded until the next IDR.
    pub fn skipped(&mut self) {
        self.health.skipped += 1;
        self.break_stream();
    }

    fn break_stream(&mut self) {
        self.close_open();
        self.need_idr = true;
        self.break_pending = true;
    }

    fn note_health(&mut self, meta: &FrameMeta, len: usize, now: Instant) {
        let h = &mut self.health;
        h.frames += 1;
        h.bytes += len as u64;
        h.epoch = meta.epoch;
        h.width = meta.width;
        h.height = meta.height;
        h.last_capture_us = meta.capture_us;
        self.last_arrival = Some(now);
        self.arrivals.push_back((now, len));
        while self
            .arrivals
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
        {
            self.arrivals.pop_front();
        }
    }

    /// Health as of `now` (rates over the recent arrivals).
    pub fn health(&self, now: Instant) -> (Health, Option<Duration>) {
        let mut h = self.health.clone();
        if let (Some((first, _)), Some((last, _))) = (self.arrivals.front(), self.arrivals.back()) {
            let span = last.duration_since(*first).as_secs_f64();
            if span > 0.0 && self.arrivals.len() > 1 {
                h.fps = (self.arrivals.len() - 1) as f64 / span;
                let bytes: usize = self.arrivals.iter().skip(1).map(|(_, n)| n).sum();
                h.bitrate_bps = bytes as f64 * 8.0 / span;
            }
        }
        (h, self.last_arrival.map(|t| now.duration_since(t)))
    }

    /// Publishes the pending frames as a part of the open segment.
    fn flush_part(&mut self) -> bool {
        let Some(open) = self.open.as_mut() else {
            self.pending.clear();
            self.pending_duration_s = 0.0;
            return false;
        };
        if self.pending.is_empty() {
            return false;
        }
        let frames: Vec<TsFrame<'_>> = self
            .pending
            .iter()
            .map(|(pts, data, key)| TsFrame {
                pts_90k: *pts,
                keyframe: *key,
                annex_b: data,
            })
            .collect();
        let bytes = Bytes::from(mux_segment(&frames));
        let independent = self.pending[0].2;
        open.parts.push(Part {
            duration_s: self.pending_duration_s,
            independent,
            bytes,
        });
        open.duration_s += self.pending_duration_s;
        self.pending.clear();
        self.pending_duration_s = 0.0;
        true
    }

    /// Closes the open segment (its last part may be short).
    fn close_open(&mut self) -> bool {
        self.flush_part();
        let Some(mut seg) = self.open.take() else {
            return false;
        };
        if seg.parts.is_empty() {
            return false;
        }
        let mut all = BytesMut::with_capacity(seg.parts.iter().map(|p| p.bytes.len()).sum());
        for p in &seg.parts {
            all.extend_from_slice(&p.bytes);
        }
        seg.bytes = all.freeze();
        self.segments.push_back(seg);
        while self.segments.len() > self.kept_segments {
            if let Some(old) = self.segments.pop_front() {
                if old.discontinuity {
                    self.discontinuity_seq += 1;
                }
            }
        }
        true
    }

    /// Closed segments, oldest first.
    pub fn segments(&self) -> &VecDeque<Segment> {
        &self.segments
    }

    /// The open segment (published parts so far), if any.
    pub fn open(&self) -> Option<&Segment> {
        self.open.as_ref()
    }

    /// Discontinuities among segments before `segments()[0]`.
    pub fn discontinuity_seq(&self) -> u64 {
        self.discontinuity_seq
    }

    /// A closed segment by name.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().rev().find(|s| s.name() == name)
    }

    /// A part by segment name and index, if published; `Err(true)` when it
    /// may still come (the open segment's next part), `Err(false)` never.
    pub fn part(&self, name: &str, index: usize) -> Result<&Part, bool> {
        if let Some(open) = self.open.as_ref().filter(|s| s.name() == name) {
            return open.parts.get(index).ok_or(index == open.parts.len());
        }
        self.segment(name)
            .and_then(|s| s.parts.get(index))
            .ok_or(false)
    }

    /// Whether a playlist holding part `part` of segment `msn` (or later)
    /// exists; `part` None = the whole segment `msn`.
    pub fn has(&self, msn: u64, part: Option<usize>) -> bool {
        if let Some(open) = &self.open {
            if open.msn > msn || (open.msn == msn && part.is_some_and(|p| open.parts.len() > p)) {
                return true;
            }
        }
        self.segments.back().is_some_and(|s| s.msn >= msn)
    }

    /// Highest msn any playlist may ask to block for (spec: two ahead).
    pub fn next_msn(&self) -> u64 {
        self.next_msn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::{Codec, Rational};
    use camfleet_shared::CameraId;

    fn meta(seq: u64, key: bool, epoch: u64) -> FrameMeta {
        FrameMeta {
            camera: CameraId::new("site/cam").unwrap(),
            seq,
            capture_us: 1_700_000_000_000_000 + seq * 40_000,
            pts_90k: seq * 3600,
            keyframe: key,
            width: 64,
            height: 48,
            fps: Rational::new(25, 1).unwrap(),
            codec: Codec::H264,
            epoch,
        }
    }

    fn feed(live: &mut CameraLive, seqs: impl Iterator<Item = u64>, gop: u64, epoch: u64) {
        let t = Instant::now();
        for s in seqs {
            live.push(
                &meta(s, s % gop == 0, epoch),
                &Bytes::from_static(&[0, 0, 0, 1, 0x65, 1]),
                t,
            );
        }
    }

    #[test]
    fn segments_are_gops_and_parts_never_exceed_the_target() {
        // 25 fps, 200 ms parts = 5 frames; GOP 12 frames = 5 + 5 + 2.
        let mut live = CameraLive::new(0, 200, 10);
        feed(&mut live, 0..37, 12, 1);
        let segs = live.segments();
        assert_eq!(segs.len(), 3);
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(s.msn, i as u64);
            assert_eq!(s.first_seq, 12 * i as u64);
            let durations: Vec<f64> = s.parts.iter().map(|p| p.duration_s).collect();
            assert_eq!(durations.len(), 3, "{durations:?}");
            assert!((durations[0] - 0.2).abs() < 1e-9 && (durations[2] - 0.08).abs() < 1e-9);
            assert!(s.parts[0].independent && !s.parts[1].independent);
            assert!((s.duration_s - 0.48).abs() < 1e-9);
            let concat: Vec<u8> = s.parts.iter().flat_map(|p| p.bytes.to_vec()).collect();
            assert_eq!(concat, s.bytes.to_vec());
            assert_eq!(s.bytes.len() % 188, 0);
        }
        // Frame 36 opened segment 3 with one pending frame, no part yet.
        assert_eq!(live.open().unwrap().msn, 3);
        assert!(live.open().unwrap().parts.is_empty());
        assert!(live.part("1-36", 0).unwrap_err(), "the next part may come");
        assert!(!live.part("1-24", 5).unwrap_err(), "never");
        assert!(live.has(2, None) && live.has(2, Some(2)) && !live.has(3, Some(0)));
    }

    #[test]
    fn a_gap_or_new_epoch_waits_for_an_idr_and_marks_a_discontinuity() {
        let mut live = CameraLive::new(0, 0, 10);
        feed(&mut live, 0..15, 10, 1);
        // Gap: 15..=17 missing; 18, 19 dropped until the IDR at 20.
        feed(&mut live, 18..25, 10, 1);
        // A replayed frame changes nothing.
        feed(&mut live, 3..4, 10, 1);
        // New epoch starting at 0.
        feed(&mut live, 0..11, 10, 2);
        let segs: Vec<(String, bool)> = live
            .segments()
            .iter()
            .map(|s| (s.name(), s.discontinuity))
            .collect();
        assert_eq!(
            segs,
            vec![
                ("1-0".to_string(), false),
                ("1-10".to_string(), false),
                ("1-20".to_string(), true),
                ("2-0".to_string(), true),
            ]
        );
        assert_eq!(
            live.segments()[1].parts.len(),
            1,
            "no parts: one per segment"
        );
        let (health, _) = live.health(Instant::now());
        assert_eq!(health.gaps, 1);
        assert_eq!(health.epoch, 2);
    }

    #[test]
    fn old_segments_fall_off_and_count_their_discontinuities() {
        let mut live = CameraLive::new(0, 0, 2);
        feed(&mut live, 0..10, 5, 1);
        feed(&mut live, 0..21, 5, 2);
        assert_eq!(live.segments().len(), 2);
        assert_eq!(live.segments()[0].name(), "2-10");
        assert_eq!(live.discontinuity_seq(), 1);
    }
}
