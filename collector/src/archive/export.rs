//! Export of a time range as one MPEG-TS stream (sans-I/O): `archive
//! export` writes it to a file, the HTTP export endpoint streams it.
//!
//! Each segment is demuxed, its frames outside the range dropped (the start
//! moves back to the keyframe at or before `from`, so the output starts
//! decodable), timestamps rebased so the output plays as one continuous
//! timeline (also across an epoch change, where the agent's media clock
//! restarts, and across gaps), and muxed again. One segment is in memory at
//! a time.

use super::index::SegmentRow;
use super::mpegts;

/// The export of one range, fed segment by segment in archive order.
pub struct RangeExport {
    from_us: i64,
    to_us: i64,
    timeline: Timeline,
    first_kf_seen: bool,
    frames_out: u64,
}

impl RangeExport {
    pub fn new(from_us: i64, to_us: i64) -> Self {
        Self {
            from_us,
            to_us,
            timeline: Timeline::default(),
            first_kf_seen: false,
            frames_out: 0,
        }
    }

    /// The MPEG-TS bytes that `row` (whose file holds `bytes`) adds to the
    /// export; empty when none of its frames are in the range.
    pub fn segment(
        &mut self,
        row: &SegmentRow,
        bytes: &[u8],
    ) -> Result<Vec<u8>, mpegts::DemuxError> {
        let frames = mpegts::demux_segment(bytes)?;
        let keep = trim(row, &frames, self.from_us, self.to_us);
        let kept: Vec<&mpegts::DemuxedFrame> = frames[keep].iter().collect();
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        if !self.first_kf_seen && !kept[0].keyframe {
            // The segment opens mid-GOP only after a gap in the stream
            // itself; skip to its first keyframe so the export starts decodable.
            tracing::warn!(path = %row.path, "segment starts without a keyframe; skipping to the first one");
        }
        let start = if self.first_kf_seen {
            0
        } else {
            kept.iter().position(|f| f.keyframe).unwrap_or(kept.len())
        };
        let kept = &kept[start..];
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        self.first_kf_seen = true;
        let frame_ticks =
            (row.media_duration_us.max(1) as u64 * 90 / 1000) / row.frames.max(1) as u64;
        let ts_frames: Vec<mpegts::TsFrame<'_>> = kept
            .iter()
            .map(|f| mpegts::TsFrame {
                pts_90k: self.timeline.map(row, f.pts_90k, frame_ticks.max(1)),
                keyframe: f.keyframe,
                annex_b: &f.annex_b,
            })
            .collect();
        self.frames_out += ts_frames.len() as u64;
        Ok(mpegts::mux_segment(&ts_frames))
    }

    /// Frames written so far.
    pub fn frames_out(&self) -> u64 {
        self.frames_out
    }

    /// Seconds of video written so far.
    pub fn duration_s(&self) -> f64 {
        self.timeline.out_ticks_end as f64 / 90_000.0
    }
}

/// The frames of a segment to keep for `[from, to)`: from the last keyframe
/// at or before `from` (each frame's capture time is estimated from the
/// segment's start and the frame's media time) to the last frame before `to`.
pub fn trim(
    row: &SegmentRow,
    frames: &[mpegts::DemuxedFrame],
    from_us: i64,
    to_us: i64,
) -> std::ops::Range<usize> {
    let Some(first) = frames.first() else {
        return 0..0;
    };
    let at = |f: &mpegts::DemuxedFrame| {
        let ticks = f.pts_90k.wrapping_sub(first.pts_90k) & ((1 << 33) - 1);
        row.start_capture_us + (ticks * 1000 / 90) as i64
    };
    let mut start = 0;
    for (i, f) in frames.iter().enumerate() {
        if f.keyframe && at(f) <= from_us {
            start = i;
        }
    }
    let end = frames
        .iter()
        .rposition(|f| at(f) < to_us)
        .map_or(0, |i| i + 1);
    start..end.max(start)
}

/// Maps each segment's media time onto one continuous output timeline.
#[derive(Default)]
struct Timeline {
    /// (epoch, last sequence number, last input PTS) of the previous segment.
    prev: Option<(u64, u64, u64)>,
    /// Output PTS of the previous frame, and where the next would fall.
    last_out: Option<u64>,
    out_ticks_end: u64,
    /// Input PTS of the segment's first frame, and its output PTS.
    base: (u64, u64),
    segment: Option<u64>,
}

impl Timeline {
    fn map(&mut self, row: &SegmentRow, pts_in: u64, frame_ticks: u64) -> u64 {
        const MASK: u64 = (1 << 33) - 1;
        if self.segment != Some(row.first_seq) {
            // A new segment: continue the previous one's clock if it follows
            // it directly in the same epoch, else start right after it.
            let out = match (self.prev, self.last_out) {
                (Some((epoch, last_seq, last_pts)), Some(last_out))
                    if epoch == row.epoch && last_seq + 1 == row.first_seq =>
                {
                    let d = pts_in.wrapping_sub(last_pts) & MASK;
                    last_out
                        + if d > 0 && d < 10 * 90_000 {
                            d
                        } else {
                            frame_ticks
                        }
                }
                (_, Some(last_out)) => last_out + frame_ticks,
                _ => 0,
            };
            self.base = (pts_in, out);
            self.segment = Some(row.first_seq);
        }
        let out = self.base.1 + (pts_in.wrapping_sub(self.base.0) & MASK);
        self.last_out = Some(out);
        self.out_ticks_end = out + frame_ticks;
        self.prev = Some((row.epoch, row.last_seq, pts_in));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(first: u64, frames: u32, epoch: u64, start_us: i64) -> SegmentRow {
        SegmentRow {
            camera: "s/c".into(),
            first_seq: first,
            last_seq: first + frames as u64 - 1,
            start_capture_us: start_us,
            end_capture_us: start_us + frames as i64 * 100_000,
            media_duration_us: frames as i64 * 100_000,
            frames,
            keyframes: 1,
            bytes: 1,
            path: String::new(),
            epoch,
            width: 1,
            height: 1,
            complete: true,
        }
    }

    fn frames(n: u64, gop: u64, pts0: u64) -> Vec<mpegts::DemuxedFrame> {
        (0..n)
            .map(|i| mpegts::DemuxedFrame {
                pts_90k: pts0 + i * 9000,
                keyframe: i % gop == 0,
                annex_b: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn trim_starts_at_the_keyframe_before_from_and_ends_before_to() {
        // 10 fps, 40 frames, keyframes every 10 (1 s); segment starts at t=0.
        let r = row(0, 40, 1, 0);
        let f = frames(40, 10, 500);
        assert_eq!(trim(&r, &f, 1_500_000, 3_050_000), 10..31);
        assert_eq!(trim(&r, &f, 0, 10_000_000), 0..40);
        assert_eq!(
            trim(&r, &f, -2_000_000, -1_000_000).len(),
            0,
            "before the start"
        );
    }

    #[test]
    fn the_timeline_is_continuous_across_segments_and_epochs() {
        let mut t = Timeline::default();
        let a = row(0, 3, 1, 0);
        let b = row(3, 3, 1, 0);
        let c = row(6, 3, 2, 0); // new epoch: media clock restarted
        let mut out = Vec::new();
        for (r, pts) in [(&a, 1000u64), (&b, 28_000), (&c, 0)] {
            for i in 0..3 {
                out.push(t.map(r, pts + i * 9000, 9000));
            }
        }
        assert_eq!(out, (0..9).map(|i| i * 9000).collect::<Vec<_>>());
    }
}
