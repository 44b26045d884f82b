//! The live media playlist (RFC 8216 + the LL-HLS additions), rendered from
//! a camera's [`CameraLive`]. Sans-I/O.
//!
//! * Segments are named `seg/<epoch>-<first seq>.ts` and parts
//!   `part/<epoch>-<first seq>.<index>.ts`: a name always means the same
//!   bytes, so caches may keep them forever; only the playlist changes.
//! * `EXT-X-PROGRAM-DATE-TIME` is the capture time of each segment's IDR,
//!   so a player (hls.js `playingDate`) knows the capture time of the
//!   picture on screen: the page lines detections up with it.
//! * Parts are listed for the last [`PART_SEGMENTS`] segments and the open
//!   one, with a preload hint for the next part (LL-HLS); players without
//!   LL-HLS support ignore those tags and play the whole segments.

use super::hub::CameraLive;
use std::fmt::Write;

/// Closed segments whose parts are still listed.
pub const PART_SEGMENTS: usize = 2;

/// Renders the playlist with the last `window` closed segments (plus the
/// open one's parts). `None` before the first segment has a part.
pub fn render(live: &CameraLive, window: usize) -> Option<String> {
    let closed = live.segments();
    let skip = closed.len().saturating_sub(window);
    let listed: Vec<_> = closed.iter().skip(skip).collect();
    let open = live.open().filter(|o| !o.parts.is_empty());
    let first = listed.first().copied().or(open)?;
    let part_target = live.part_target_s();
    let parts = part_target > 0.0;
    let longest = listed
        .iter()
        .map(|s| s.duration_s)
        .chain(open.map(|o| o.duration_s))
        .fold(1.0f64, f64::max);
    let dropped_discontinuities =
        closed.iter().take(skip).filter(|s| s.discontinuity).count() as u64;
    let mut out = String::with_capacity(1024);
    out.push_str("#EXTM3U\n#EXT-X-VERSION:6\n");
    let _ = writeln!(
        out,
        "#EXT-X-TARGETDURATION:{}",
        longest.round().max(1.0) as u64
    );
    if parts {
        // PART-HOLD-BACK: two part targets, the minimum RFC 8216bis 4.4.3.8
        // allows (it recommends three). hls.js's low-latency target is this
        // hold-back, so each part target it saves is one part of glass-to-
        // glass latency: 842 ms p50 at 2x against 1019 ms at 3x on the
        // `live` bench (docs/live.md "Latency"). Our parts are cut from a
        // local Kafka stream and never arrive late, which is the jitter the
        // third part exists to absorb.
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
            part_target * 2.0
        );
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
    }
    let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
    let _ = writeln!(
        out,
        "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
        live.discontinuity_seq() + dropped_discontinuities
    );
    let with_parts_from = listed.len().saturating_sub(PART_SEGMENTS);
    for (i, seg) in listed.iter().enumerate() {
        if seg.discontinuity {
            out.push_str("#EXT-X-DISCONTINUITY\n");
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            program_date_time(seg.capture_us)
        );
        if parts && i >= with_parts_from {
            write_parts(&mut out, &seg.name(), &seg.parts);
        }
        let _ = writeln!(out, "#EXTINF:{:.3},\nseg/{}.ts", seg.duration_s, seg.name());
    }
    if let Some(open) = live.open() {
        if parts {
            if !open.parts.is_empty() {
                if open.discontinuity {
                    out.push_str("#EXT-X-DISCONTINUITY\n");
                }
                let _ = writeln!(
                    out,
                    "#EXT-X-PROGRAM-DATE-TIME:{}",
                    program_date_time(open.capture_us)
                );
                write_parts(&mut out, &open.name(), &open.parts);
            }
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/{}.{}.ts\"",
                open.name(),
                open.parts.len()
            );
        }
    }
    Some(out)
}

fn write_parts(out: &mut String, name: &str, parts: &[super::hub::Part]) {
    for (k, p) in parts.iter().enumerate() {
        let _ = write!(
            out,
            "#EXT-X-PART:DURATION={:.3},URI=\"part/{name}.{k}.ts\"",
            p.duration_s
        );
        if p.independent {
            out.push_str(",INDEPENDENT=YES");
        }
        out.push('\n');
    }
}

/// ISO 8601 with milliseconds, UTC.
fn program_date_time(capture_us: u64) -> String {
    let t = chrono::DateTime::from_timestamp_micros(capture_us as i64).unwrap_or_default();
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use camfleet_shared::wire::{Codec, FrameMeta, Rational};
    use camfleet_shared::CameraId;
    use std::time::Instant;

    fn push_range(live: &mut CameraLive, seqs: std::ops::Range<u64>, gop: u64) {
        for seq in seqs {
            let meta = FrameMeta {
                camera: CameraId::new("site/cam").unwrap(),
                seq,
                capture_us: 1_767_225_600_000_000 + seq * 100_000,
                pts_90k: seq * 9000,
                keyframe: seq % gop == 0,
                width: 64,
                height: 48,
                fps: Rational::new(10, 1).unwrap(),
                codec: Codec::H264,
                epoch: 3,
            };
            live.push(
                &meta,
                &Bytes::from_static(&[0, 0, 0, 1, 0x65]),
                Instant::now(),
            );
        }
    }

    #[test]
    fn ll_hls_playlist_lists_window_parts_and_a_preload_hint() {
        // 10 fps, GOP 10 (1 s), parts 300 ms = 3 frames: 3 + 3 + 3 + 1.
        let mut live = CameraLive::new(0, 300, 20);
        push_range(&mut live, 0..45, 10);
        let text = render(&live, 3).unwrap();
        let expected = "#EXTM3U
#EXT-X-VERSION:6
#EXT-X-TARGETDURATION:1
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600
#EXT-X-PART-INF:PART-TARGET=0.300
#EXT-X-MEDIA-SEQUENCE:1
#EXT-X-DISCONTINUITY-SEQUENCE:0
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:01.000Z
#EXTINF:1.000,
seg/3-10.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:02.000Z
#EXT-X-PART:DURATION=0.300,URI=\"part/3-20.0.ts\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.300,URI=\"part/3-20.1.ts\"
#EXT-X-PART:DURATION=0.300,URI=\"part/3-20.2.ts\"
#EXT-X-PART:DURATION=0.100,URI=\"part/3-20.3.ts\"
#EXTINF:1.000,
seg/3-20.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:03.000Z
#EXT-X-PART:DURATION=0.300,URI=\"part/3-30.0.ts\",INDEPENDENT=YES
#EXT-X-PART:DURATION=0.300,URI=\"part/3-30.1.ts\"
#EXT-X-PART:DURATION=0.300,URI=\"part/3-30.2.ts\"
#EXT-X-PART:DURATION=0.100,URI=\"part/3-30.3.ts\"
#EXTINF:1.000,
seg/3-30.ts
#EXT-X-PROGRAM-DATE-TIME:2026-01-01T00:00:04.000Z
#EXT-X-PART:DURATION=0.300,URI=\"part/3-40.0.ts\",INDEPENDENT=YES
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part/3-40.1.ts\"
";
        assert_eq!(text, expected);
    }

    #[test]
    fn plain_playlist_has_no_ll_hls_tags_and_nothing_before_the_first_part() {
        let mut live = CameraLive::new(0, 0, 20);
        assert!(render(&live, 3).is_none());
        push_range(&mut live, 0..5, 10);
        assert!(render(&live, 3).is_none(), "open segment without parts");
        push_range(&mut live, 5..25, 10);
        let text = render(&live, 3).unwrap();
        assert!(!text.contains("PART"), "{text}");
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"), "{text}");
        assert_eq!(text.matches("#EXTINF:1.000,").count(), 2, "{text}");
    }
}
