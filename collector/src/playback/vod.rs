//! The VOD media playlist of a list of archived segments (sans-I/O).

use super::ArchivedSegment;
use std::fmt::Write;

/// A new timeline starts where frames are missing (a sequence gap) or the
/// media time jumps (a new stream epoch): `EXT-X-DISCONTINUITY`.
fn continues(prev: &ArchivedSegment, next: &ArchivedSegment) -> bool {
    let expected_pts = prev.first_pts_90k + (prev.duration_s * 90_000.0).round() as u64;
    let tolerance = 9_000; // 100 ms
    next.first_seq == prev.first_seq + prev.frames
        && next.first_pts_90k.abs_diff(expected_pts) <= tolerance
}

pub fn render(segments: &[ArchivedSegment]) -> String {
    let longest = segments.iter().map(|s| s.duration_s).fold(1.0f64, f64::max);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", longest.ceil() as u64);
    out.push_str("#EXT-X-MEDIA-SEQUENCE:0\n");
    let mut prev: Option<&ArchivedSegment> = None;
    for s in segments {
        if prev.is_some_and(|p| !continues(p, s)) {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(out, "#EXTINF:{:.3},\nseg/{}", s.duration_s, s.name);
        prev = Some(s);
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(name: &str, first_seq: u64, frames: u64, pts: u64) -> ArchivedSegment {
        ArchivedSegment {
            name: name.into(),
            first_seq,
            frames,
            first_pts_90k: pts,
            duration_s: frames as f64 / 15.0,
            hour_start_us: 0,
            bytes: 0,
            modified_ns: 0,
        }
    }

    #[test]
    fn gaps_and_time_jumps_are_discontinuities() {
        let segs = [
            seg("2026/11/30/18/00000000000000000000.ts", 0, 15, 0),
            seg("2026/11/30/18/00000000000000000015.ts", 15, 30, 90_000),
            // frames 45..60 missing
            seg("2026/11/30/18/00000000000000000060.ts", 60, 15, 360_000),
            // contiguous numbers, media time reset (new epoch)
            seg("2026/11/30/19/00000000000000000075.ts", 75, 15, 0),
        ];
        let text = render(&segs);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXTINF:1.000,\nseg/2026/11/30/18/00000000000000000000.ts\n\
             #EXTINF:2.000,\nseg/2026/11/30/18/00000000000000000015.ts\n\
             #EXT-X-DISCONTINUITY\n#EXTINF:1.000,\nseg/2026/11/30/18/00000000000000000060.ts\n\
             #EXT-X-DISCONTINUITY\n#EXTINF:1.000,\nseg/2026/11/30/19/00000000000000000075.ts\n\
             #EXT-X-ENDLIST\n"
        );
    }
}
