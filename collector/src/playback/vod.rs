//! The VOD media playlist of a list of archived segments (sans-I/O).

use crate::archive::index::SegmentRow;
use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt::Write;

/// A new timeline starts where frames are missing (a sequence gap) or a new
/// stream epoch begins (the agent's encoder restarted and its media clock
/// with it): `EXT-X-DISCONTINUITY`. Hours join without one.
fn continues(prev: &SegmentRow, next: &SegmentRow) -> bool {
    next.epoch == prev.epoch && next.first_seq == prev.last_seq + 1
}

/// `segments` in capture order; each is listed as `seg/<name>` where
/// `name_of` gives its name below the camera.
pub fn render<'a>(
    segments: &'a [SegmentRow],
    name_of: impl Fn(&'a SegmentRow) -> &'a str,
) -> String {
    let secs = |s: &SegmentRow| s.media_duration_us as f64 / 1e6;
    let longest = segments.iter().map(secs).fold(1.0f64, f64::max);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n");
    let _ = writeln!(out, "#EXT-X-TARGETDURATION:{}", longest.ceil() as u64);
    out.push_str("#EXT-X-MEDIA-SEQUENCE:0\n");
    let mut prev: Option<&SegmentRow> = None;
    for s in segments {
        let joined = prev.is_some_and(|p| continues(p, s));
        if prev.is_some() && !joined {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if !joined {
            // Capture time of the first frame: players map the playhead to
            // wall-clock time with it (the page's timeline does).
            let t: DateTime<Utc> =
                DateTime::from_timestamp_micros(s.start_capture_us).unwrap_or_default();
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                t.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        let _ = writeln!(out, "#EXTINF:{:.3},\nseg/{}", secs(s), name_of(s));
        prev = Some(s);
    }
    out.push_str("#EXT-X-ENDLIST\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(hour: &str, first_seq: u64, frames: u32, epoch: u64, start_s: i64) -> SegmentRow {
        SegmentRow {
            camera: "s/c".into(),
            first_seq,
            last_seq: first_seq + frames as u64 - 1,
            start_capture_us: start_s * 1_000_000,
            end_capture_us: start_s * 1_000_000 + frames as i64 * 1_000_000 / 15,
            media_duration_us: frames as i64 * 1_000_000 / 15,
            frames,
            keyframes: 1,
            bytes: 1,
            path: format!("s/c/{hour}/{first_seq:020}.ts"),
            epoch,
            width: 1,
            height: 1,
            complete: true,
        }
    }

    #[test]
    fn gaps_and_epoch_changes_are_discontinuities_and_hours_join() {
        let segs = [
            seg("2026/11/30/18", 0, 15, 7, 1_796_065_198),
            // Next hour, same epoch, next frame: one timeline.
            seg("2026/11/30/19", 15, 30, 7, 1_796_065_199),
            // frames 45..60 missing
            seg("2026/11/30/19", 60, 15, 7, 1_796_065_202),
            // contiguous numbers, new epoch (media clock restarted)
            seg("2026/11/30/19", 75, 15, 8, 1_796_065_203),
        ];
        let text = render(&segs, |s| &s.path[4..]);
        assert_eq!(
            text,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-TARGETDURATION:2\n\
             #EXT-X-MEDIA-SEQUENCE:0\n\
             #EXT-X-PROGRAM-DATE-TIME:2026-11-30T18:59:58.000Z\n\
             #EXTINF:1.000,\nseg/2026/11/30/18/00000000000000000000.ts\n\
             #EXTINF:2.000,\nseg/2026/11/30/19/00000000000000000015.ts\n\
             #EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T19:00:02.000Z\n\
             #EXTINF:1.000,\nseg/2026/11/30/19/00000000000000000060.ts\n\
             #EXT-X-DISCONTINUITY\n#EXT-X-PROGRAM-DATE-TIME:2026-11-30T19:00:03.000Z\n\
             #EXTINF:1.000,\nseg/2026/11/30/19/00000000000000000075.ts\n\
             #EXT-X-ENDLIST\n"
        );
    }
}
