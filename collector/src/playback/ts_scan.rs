//! Reads what VOD playback needs from an archived MPEG-TS segment: the
//! PTS of its first and last access unit and how many there are. Written
//! for the archive's own muxer (one H.264 stream on PID 0x100, one PES per
//! access unit, archive/mpegts.rs); other streams are ignored.

const PACKET: usize = 188;
const VIDEO_PID: u16 = 0x100;

/// PTS of the first and last PES and the PES count; None if there is none.
pub fn scan(ts: &[u8]) -> Option<(u64, u64, u64)> {
    let mut first = None;
    let mut last = 0;
    let mut count = 0;
    for p in ts.chunks_exact(PACKET) {
        if p[0] != 0x47 {
            return None;
        }
        let pusi = p[1] & 0x40 != 0;
        let pid = (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]);
        if !pusi || pid != VIDEO_PID {
            continue;
        }
        let afc = (p[3] >> 4) & 0x3;
        let mut at = 4;
        if afc & 0x2 != 0 {
            at += 1 + p[4] as usize;
        }
        if afc & 0x1 == 0 || at + 14 > PACKET {
            continue;
        }
        let pes = &p[at..];
        if pes[..3] != [0, 0, 1] || pes[7] & 0x80 == 0 {
            continue;
        }
        let b = &pes[9..14];
        let pts = (u64::from(b[0] >> 1) & 0x7) << 30
            | u64::from(b[1]) << 22
            | u64::from(b[2] >> 1) << 15
            | u64::from(b[3]) << 7
            | u64::from(b[4] >> 1);
        first.get_or_insert(pts);
        last = pts;
        count += 1;
    }
    first.map(|f| (f, last, count))
}

#[cfg(test)]
mod tests {
    use crate::archive::mpegts::{mux_segment, TsFrame};

    #[test]
    fn reads_back_what_the_muxer_wrote() {
        let data = [0u8, 0, 0, 1, 0x65, 0x88, 0x84, 0x00];
        let frames: Vec<TsFrame<'_>> = (0..10u64)
            .map(|i| TsFrame {
                pts_90k: 1_000_000 + i * 3000,
                keyframe: i == 0,
                annex_b: &data,
            })
            .collect();
        let ts = mux_segment(&frames);
        // The muxer writes PTS = media time + 0.7 s (63000 ticks).
        assert_eq!(
            super::scan(&ts),
            Some((1_063_000, 1_063_000 + 9 * 3000, 10))
        );
        assert_eq!(super::scan(&[]), None);
        assert_eq!(super::scan(&[0u8; 188]), None);
    }
}
