//! Minimal MPEG-TS muxer for one H.264 stream: the write path of the archive.
//!
//! Every call to [`mux_segment`] produces a self-contained segment (playable
//! on its own, e.g. by ffplay/VLC or as an HLS segment):
//!
//! * PID `0x0000`: PAT announcing program 1 with its PMT on PID `0x1000`.
//! * PID `0x1000`: PMT with one elementary stream, `stream_type` 0x1B
//!   (H.264) on PID `0x100`, which is also the PCR PID.
//! * PID `0x100`: one PES (`stream_id` 0xE0) per access unit, carrying a PTS
//!   and `PES_packet_length` 0 (unbounded, allowed for video only), with
//!   `data_alignment_indicator` set because every PES starts an access unit.
//!
//! PAT + PMT open the segment and are repeated before every keyframe, so a
//! reader that starts at any IDR finds the tables right in front of it.
//!
//! Timing: PTS = `pts_90k` + 0.7 s and PCR = `pts_90k`, so the PCR of each
//! frame's first packet runs 0.7 s ahead of its presentation time. That is
//! ffmpeg's default `muxdelay`; it leaves decoders a buffering margin and
//! keeps PCR <= PTS as T-STD requires. No DTS is written: the encoder
//! (openh264, baseline profile) emits no B-frames, so DTS = PTS, which the
//! standard lets us express by omitting DTS. All timestamps are taken
//! modulo 2^33 as the format demands, so wrap-around (every ~26.5 h of
//! 90 kHz time) is encoded correctly. The PCR is written once per frame, so
//! below 10 fps the 100 ms maximum PCR interval of ISO/IEC 13818-1 is
//! exceeded; players tolerate that and the archive is not broadcast.
//!
//! Each access unit gets an access unit delimiter NAL (`00 00 00 01 09 F0`)
//! prepended unless it already starts with one: openh264 does not emit AUDs
//! and several TS consumers (hardware decoders, some HLS players) rely on
//! them to find access-unit boundaries.
//!
//! Continuity counters start at 0 in every segment (the segment carries no
//! state from the previous one) and increment per PID on every packet, since
//! every packet written here carries payload. The segment's first video
//! packet sets `discontinuity_indicator` (allowed there: it carries a PCR), so
//! segments joined byte for byte, as an export does, read without errors. Short packets are padded by
//! adaptation-field stuffing, never by 0xFF bytes in a PES payload; PSI
//! sections are followed by 0xFF fill, which is the rule for sections.
//!
//! Why not a crate: the `mpeg2ts` crate is unmaintained, and we need only
//! this write path for a single H.264 stream, which is ~200 lines.

/// One H.264 access unit in Annex-B form (SPS/PPS in-band on IDRs).
pub struct TsFrame<'a> {
    pub pts_90k: u64,
    pub keyframe: bool,
    pub annex_b: &'a [u8],
}

const PACKET_LEN: usize = 188;
/// Bytes after the 4-byte TS header.
const PACKET_BODY: usize = PACKET_LEN - 4;
const SYNC_BYTE: u8 = 0x47;

const PAT_PID: u16 = 0x0000;
const PMT_PID: u16 = 0x1000;
const VIDEO_PID: u16 = 0x0100;
const PROGRAM_NUMBER: u16 = 1;
const TRANSPORT_STREAM_ID: u16 = 1;
const STREAM_TYPE_H264: u8 = 0x1B;
const STREAM_ID_VIDEO: u8 = 0xE0;

/// PTS - PCR: 0.7 s in 90 kHz ticks (ffmpeg's default muxdelay).
const PTS_OFFSET_90K: u64 = 63_000;
/// Timestamps (PTS, PCR base) are 33-bit fields.
const TS_MASK_33: u64 = (1 << 33) - 1;

/// Access unit delimiter, `primary_pic_type` 7 (any slice type).
const AUD: [u8; 6] = [0x00, 0x00, 0x00, 0x01, 0x09, 0xF0];
const NAL_TYPE_AUD: u8 = 9;

/// Adaptation field flag bits (ISO/IEC 13818-1 table 2-6).
const AF_DISCONTINUITY: u8 = 0x80;
const AF_RANDOM_ACCESS: u8 = 0x40;
const AF_PCR: u8 = 0x10;

/// Muxes a GOP-aligned run of frames into a self-contained MPEG-TS segment
/// (PAT + PMT first, then one PES per frame). Output length is a multiple of 188.
pub fn mux_segment(frames: &[TsFrame<'_>]) -> Vec<u8> {
    let mut mux = Muxer::default();
    // Rough pre-size: payload plus ~3% header overhead plus the tables.
    let payload: usize = frames.iter().map(|f| f.annex_b.len()).sum();
    mux.out.reserve(payload + payload / 32 + PACKET_LEN * 8);

    mux.write_tables();
    for (i, frame) in frames.iter().enumerate() {
        // The segment start already has the tables; don't repeat them at once.
        if frame.keyframe && i > 0 {
            mux.write_tables();
        }
        mux.write_frame(frame, i == 0);
    }
    mux.out
}

/// A frame read back from a segment this muxer wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DemuxedFrame {
    /// The PES PTS minus the mux delay, modulo 2^33: the `pts_90k` that was
    /// muxed (modulo 2^33).
    pub pts_90k: u64,
    /// The packet's `random_access_indicator` (set on IDRs).
    pub keyframe: bool,
    /// The access unit as stored (with the delimiter the muxer prepended).
    pub annex_b: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DemuxError {
    #[error("not an MPEG-TS stream: byte {0} is not a sync byte")]
    Sync(usize),
    #[error("length {0} is not a multiple of 188")]
    Length(usize),
    #[error("PES at byte {0} has no PTS or a malformed header")]
    Pes(usize),
}

/// Reads back the video frames of a segment written by [`mux_segment`] (the
/// read path of `archive export`). Not a general demuxer: one H.264 PID,
/// one PES per frame, PTS only, as documented above.
pub fn demux_segment(ts: &[u8]) -> Result<Vec<DemuxedFrame>, DemuxError> {
    if !ts.len().is_multiple_of(PACKET_LEN) {
        return Err(DemuxError::Length(ts.len()));
    }
    let mut frames: Vec<DemuxedFrame> = Vec::new();
    let mut pes: Option<(usize, bool, Vec<u8>)> = None;
    let finish = |pes: Option<(usize, bool, Vec<u8>)>, frames: &mut Vec<DemuxedFrame>| {
        let Some((at, keyframe, bytes)) = pes else {
            return Ok(());
        };
        // 00 00 01 E0, length(2), flags(2), header length, PTS(5).
        if bytes.len() < 14 || bytes[..3] != [0, 0, 1] || bytes[7] & 0x80 == 0 {
            return Err(DemuxError::Pes(at));
        }
        let header_end = 9 + bytes[8] as usize;
        if bytes.len() < header_end {
            return Err(DemuxError::Pes(at));
        }
        let p = &bytes[9..14];
        let pts = ((p[0] as u64 >> 1) & 0x07) << 30
            | (p[1] as u64) << 22
            | ((p[2] as u64) >> 1) << 15
            | (p[3] as u64) << 7
            | (p[4] as u64) >> 1;
        frames.push(DemuxedFrame {
            pts_90k: pts.wrapping_sub(PTS_OFFSET_90K) & TS_MASK_33,
            keyframe,
            annex_b: bytes[header_end..].to_vec(),
        });
        Ok(())
    };
    for (i, pkt) in ts.chunks_exact(PACKET_LEN).enumerate() {
        let at = i * PACKET_LEN;
        if pkt[0] != SYNC_BYTE {
            return Err(DemuxError::Sync(at));
        }
        let pid = ((pkt[1] as u16 & 0x1F) << 8) | pkt[2] as u16;
        if pid != VIDEO_PID {
            continue;
        }
        let pusi = pkt[1] & 0x40 != 0;
        let afc = (pkt[3] >> 4) & 0x03;
        let mut body = &pkt[4..];
        let mut random_access = false;
        if afc & 0x02 != 0 {
            let af_len = body[0] as usize;
            if af_len > 0 {
                random_access = body[1] & AF_RANDOM_ACCESS != 0;
            }
            body = body.get(1 + af_len..).unwrap_or_default();
        }
        if afc & 0x01 == 0 {
            continue;
        }
        if pusi {
            finish(pes.take(), &mut frames)?;
            pes = Some((at, random_access, body.to_vec()));
        } else if let Some((_, _, bytes)) = pes.as_mut() {
            bytes.extend_from_slice(body);
        }
    }
    finish(pes, &mut frames)?;
    Ok(frames)
}

#[derive(Default)]
struct Muxer {
    out: Vec<u8>,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
}

impl Muxer {
    fn write_tables(&mut self) {
        let pat = pat_section();
        let cc = next_cc(&mut self.cc_pat);
        write_psi_packet(&mut self.out, PAT_PID, cc, &pat);
        let pmt = pmt_section();
        let cc = next_cc(&mut self.cc_pmt);
        write_psi_packet(&mut self.out, PMT_PID, cc, &pmt);
    }

    /// `segment_start` marks the discontinuity the segment begins with
    /// (continuity counters restart at 0, the PCR jumps), so segments joined
    /// byte for byte (`cat a.ts b.ts`, an export) read cleanly.
    fn write_frame(&mut self, frame: &TsFrame<'_>, segment_start: bool) {
        let pts = frame.pts_90k.wrapping_add(PTS_OFFSET_90K) & TS_MASK_33;
        let pcr_base = frame.pts_90k & TS_MASK_33;

        let mut pes = Vec::with_capacity(14 + AUD.len() + frame.annex_b.len());
        pes.extend_from_slice(&[0x00, 0x00, 0x01, STREAM_ID_VIDEO]);
        pes.extend_from_slice(&[0x00, 0x00]); // PES_packet_length 0: unbounded
        pes.push(0x84); // '10' marker, data_alignment_indicator
        pes.push(0x80); // PTS_DTS_flags = '10': PTS only
        pes.push(5); // PES_header_data_length
        pes.extend_from_slice(&encode_pts(pts));
        if !starts_with_aud(frame.annex_b) {
            pes.extend_from_slice(&AUD);
        }
        pes.extend_from_slice(frame.annex_b);

        let mut first_af = Vec::with_capacity(7);
        let mut flags = AF_PCR;
        if frame.keyframe {
            flags |= AF_RANDOM_ACCESS;
        }
        if segment_start {
            flags |= AF_DISCONTINUITY;
        }
        first_af.push(flags);
        first_af.extend_from_slice(&encode_pcr(pcr_base));

        let mut rest: &[u8] = &pes;
        let mut first = true;
        while !rest.is_empty() {
            let af: &[u8] = if first { &first_af } else { &[] };
            let cc = next_cc(&mut self.cc_video);
            let used = write_pes_packet(&mut self.out, VIDEO_PID, first, cc, af, rest);
            rest = &rest[used..];
            first = false;
        }
    }
}

/// Returns the counter to use now and advances it (4-bit, wraps at 16).
fn next_cc(cc: &mut u8) -> u8 {
    let now = *cc;
    *cc = (now + 1) & 0x0F;
    now
}

fn ts_header(out: &mut Vec<u8>, pid: u16, pusi: bool, has_af: bool, cc: u8) {
    let pusi_bit = if pusi { 0x40 } else { 0x00 };
    // adaptation_field_control: '01' payload only, '11' adaptation + payload.
    let afc = if has_af { 0x30 } else { 0x10 };
    out.extend_from_slice(&[
        SYNC_BYTE,
        pusi_bit | ((pid >> 8) as u8 & 0x1F),
        pid as u8,
        afc | (cc & 0x0F),
    ]);
}

/// Writes one PSI section in a single packet (ours are far below 183 bytes).
fn write_psi_packet(out: &mut Vec<u8>, pid: u16, cc: u8, section: &[u8]) {
    let start = out.len();
    ts_header(out, pid, true, false, cc);
    out.push(0x00); // pointer_field: section starts right away
    out.extend_from_slice(section);
    out.resize(start + PACKET_LEN, 0xFF);
}

/// Writes one packet of a PES and returns how many bytes of `payload` it
/// took. `af_fields` is the adaptation field's flags byte plus its optional
/// fields, or empty if the packet needs none except for stuffing.
fn write_pes_packet(
    out: &mut Vec<u8>,
    pid: u16,
    pusi: bool,
    cc: u8,
    af_fields: &[u8],
    payload: &[u8],
) -> usize {
    let af_len = if af_fields.is_empty() {
        0
    } else {
        1 + af_fields.len()
    };
    let room = PACKET_BODY - af_len;
    let take = payload.len().min(room);
    let stuffing = room - take;
    let start = out.len();

    ts_header(out, pid, pusi, af_len + stuffing > 0, cc);
    if !af_fields.is_empty() {
        out.push((af_fields.len() + stuffing) as u8); // adaptation_field_length
        out.extend_from_slice(af_fields);
        out.resize(out.len() + stuffing, 0xFF);
    } else if stuffing == 1 {
        // A zero-length adaptation field is exactly one byte of stuffing.
        out.push(0x00);
    } else if stuffing > 1 {
        out.push((stuffing - 1) as u8);
        out.push(0x00); // no flags
        out.resize(out.len() + stuffing - 2, 0xFF);
    }
    out.extend_from_slice(&payload[..take]);
    debug_assert_eq!(out.len() - start, PACKET_LEN);
    take
}

/// True if the buffer opens with an access unit delimiter NAL (3- or 4-byte
/// start code).
fn starts_with_aud(annex_b: &[u8]) -> bool {
    let header = match annex_b {
        [0, 0, 0, 1, h, ..] | [0, 0, 1, h, ..] => *h,
        _ => return false,
    };
    header & 0x1F == NAL_TYPE_AUD
}

/// PTS field with prefix '0010' (PTS only), markers between the 3 chunks.
fn encode_pts(pts: u64) -> [u8; 5] {
    [
        0x20 | (((pts >> 30) & 0x07) as u8) << 1 | 1,
        (pts >> 22) as u8,
        (((pts >> 15) & 0x7F) as u8) << 1 | 1,
        (pts >> 7) as u8,
        ((pts & 0x7F) as u8) << 1 | 1,
    ]
}

/// PCR: 33-bit base, 6 reserved '1' bits, 9-bit extension (always 0: our
/// clock is 90 kHz, the 27 MHz remainder carries nothing).
fn encode_pcr(base: u64) -> [u8; 6] {
    [
        (base >> 25) as u8,
        (base >> 17) as u8,
        (base >> 9) as u8,
        (base >> 1) as u8,
        ((base & 1) as u8) << 7 | 0x7E,
        0x00,
    ]
}

/// Common long-form section framing: table header, `body`, CRC.
fn psi_section(table_id: u8, table_id_extension: u16, body: &[u8]) -> Vec<u8> {
    // section_length counts from after itself: 5 header bytes, body, CRC.
    let section_length = 5 + body.len() + 4;
    let mut s = Vec::with_capacity(3 + section_length);
    s.push(table_id);
    // section_syntax_indicator 1, '0', reserved '11', 12-bit length.
    s.push(0xB0 | ((section_length >> 8) as u8 & 0x0F));
    s.push(section_length as u8);
    s.extend_from_slice(&table_id_extension.to_be_bytes());
    s.push(0xC1); // reserved '11', version 0, current_next_indicator 1
    s.push(0x00); // section_number
    s.push(0x00); // last_section_number
    s.extend_from_slice(body);
    let crc = crc32_mpeg2(&s);
    s.extend_from_slice(&crc.to_be_bytes());
    s
}

fn pat_section() -> Vec<u8> {
    let mut body = Vec::with_capacity(4);
    body.extend_from_slice(&PROGRAM_NUMBER.to_be_bytes());
    body.extend_from_slice(&(0xE000 | PMT_PID).to_be_bytes()); // reserved '111'
    psi_section(0x00, TRANSPORT_STREAM_ID, &body)
}

fn pmt_section() -> Vec<u8> {
    let mut body = Vec::with_capacity(9);
    body.extend_from_slice(&(0xE000 | VIDEO_PID).to_be_bytes()); // PCR_PID
    body.extend_from_slice(&0xF000u16.to_be_bytes()); // program_info_length 0
    body.push(STREAM_TYPE_H264);
    body.extend_from_slice(&(0xE000 | VIDEO_PID).to_be_bytes());
    body.extend_from_slice(&0xF000u16.to_be_bytes()); // ES_info_length 0
    psi_section(0x02, PROGRAM_NUMBER, &body)
}

/// CRC-32/MPEG-2: polynomial 0x04C11DB7, init all ones, no reflection, no
/// final xor. A section followed by its CRC checks to 0.
fn crc32_mpeg2(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = crc_table();
    data.iter().fold(0xFFFF_FFFF, |crc, &b| {
        (crc << 8) ^ TABLE[((crc >> 24) as u8 ^ b) as usize]
    })
}

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::process::Command;

    /// What the structural parser found in a segment.
    #[derive(Default)]
    struct Parsed {
        /// PES payloads (the ES bytes after the PES header), in order.
        es: Vec<Vec<u8>>,
        pts: Vec<u64>,
        pcr: Vec<u64>,
        random_access: Vec<bool>,
        /// Order of tables and PES starts: 'A' PAT, 'M' PMT, 'V' PES start.
        layout: String,
    }

    /// Checks every structural rule the muxer promises and returns the
    /// content for further assertions.
    fn parse(ts: &[u8]) -> Parsed {
        assert!(!ts.is_empty());
        assert_eq!(ts.len() % PACKET_LEN, 0, "length {}", ts.len());
        let mut cc: HashMap<u16, u8> = HashMap::new();
        let mut p = Parsed::default();
        for (n, pkt) in ts.chunks(PACKET_LEN).enumerate() {
            assert_eq!(pkt[0], SYNC_BYTE, "packet {n}");
            assert_eq!(pkt[1] & 0x80, 0, "packet {n}: transport_error_indicator");
            let pusi = pkt[1] & 0x40 != 0;
            let pid = u16::from_be_bytes([pkt[1] & 0x1F, pkt[2]]);
            assert_eq!(pkt[3] & 0xC0, 0, "packet {n}: scrambled");
            let afc = (pkt[3] >> 4) & 3;
            assert!(afc == 1 || afc == 3, "packet {n}: afc {afc} (no payload)");
            let this_cc = pkt[3] & 0x0F;
            if let Some(prev) = cc.insert(pid, this_cc) {
                assert_eq!(this_cc, (prev + 1) & 0x0F, "packet {n} pid {pid:#x}: CC");
            } else {
                assert_eq!(this_cc, 0, "packet {n} pid {pid:#x}: first CC");
            }

            let mut pos = 4;
            let mut af_flags = None;
            let mut pcr = None;
            if afc == 3 {
                let len = pkt[4] as usize;
                assert!(len <= 183, "packet {n}: af length {len}");
                let af = &pkt[5..5 + len];
                pos = 5 + len;
                assert!(pos < PACKET_LEN, "packet {n}: no room for payload");
                if let Some((&flags, fields)) = af.split_first() {
                    af_flags = Some(flags);
                    let mut rest = fields;
                    if flags & AF_PCR != 0 {
                        let b = &rest[..6];
                        let base = (b[0] as u64) << 25
                            | (b[1] as u64) << 17
                            | (b[2] as u64) << 9
                            | (b[3] as u64) << 1
                            | (b[4] as u64) >> 7;
                        assert_eq!(b[4] & 0x7E, 0x7E, "PCR reserved bits");
                        pcr = Some(base);
                        rest = &rest[6..];
                    }
                    assert_eq!(flags & 0x0F, 0, "unexpected optional fields");
                    assert!(rest.iter().all(|&b| b == 0xFF), "packet {n}: stuffing");
                }
            }
            let payload = &pkt[pos..];

            match pid {
                PAT_PID | PMT_PID => {
                    assert!(pusi, "packet {n}: PSI without PUSI");
                    assert_eq!(afc, 1, "PSI packets need no adaptation field");
                    assert_eq!(payload[0], 0, "pointer_field");
                    let section_length =
                        (u16::from_be_bytes([payload[2], payload[3]]) & 0x0FFF) as usize;
                    let section = &payload[1..4 + section_length];
                    assert_eq!(crc32_mpeg2(section), 0, "packet {n}: CRC");
                    assert!(payload[4 + section_length..].iter().all(|&b| b == 0xFF));
                    if pid == PAT_PID {
                        assert_eq!(section[0], 0x00);
                        assert_eq!(&section[8..12], &[0x00, 0x01, 0xF0, 0x00]);
                        p.layout.push('A');
                    } else {
                        assert_eq!(section[0], 0x02);
                        assert_eq!(&section[3..5], &[0x00, 0x01], "program_number");
                        assert_eq!(&section[8..10], &[0xE1, 0x00], "PCR_PID");
                        assert_eq!(&section[12..17], &[0x1B, 0xE1, 0x00, 0xF0, 0x00]);
                        p.layout.push('M');
                    }
                }
                VIDEO_PID => {
                    if pusi {
                        let flags = af_flags.expect("first PES packet has no adaptation field");
                        let pcr = pcr.expect("first PES packet has no PCR");
                        assert_eq!(&payload[..6], &[0, 0, 1, 0xE0, 0, 0], "PES header");
                        assert_eq!(payload[6] & 0xC0, 0x80, "PES marker bits");
                        assert_eq!(payload[7] & 0xC0, 0x80, "PTS only");
                        let hdr_len = payload[8] as usize;
                        let t = &payload[9..14];
                        assert_eq!(t[0] & 0xF1, 0x21, "PTS prefix/marker");
                        assert_eq!(t[2] & 1, 1, "PTS marker");
                        assert_eq!(t[4] & 1, 1, "PTS marker");
                        let pts = ((t[0] as u64 >> 1) & 7) << 30
                            | (t[1] as u64) << 22
                            | (t[2] as u64 >> 1) << 15
                            | (t[3] as u64) << 7
                            | (t[4] as u64 >> 1);
                        p.pts.push(pts);
                        p.pcr.push(pcr);
                        p.random_access.push(flags & AF_RANDOM_ACCESS != 0);
                        p.es.push(payload[9 + hdr_len..].to_vec());
                        p.layout.push('V');
                    } else {
                        assert!(pcr.is_none(), "packet {n}: PCR outside a PES start");
                        let es = p.es.last_mut().expect("PES continuation before start");
                        es.extend_from_slice(payload);
                    }
                }
                other => panic!("packet {n}: unexpected PID {other:#x}"),
            }
        }
        p
    }

    fn with_aud(annex_b: &[u8]) -> Vec<u8> {
        [&AUD[..], annex_b].concat()
    }

    #[test]
    fn crc_matches_the_catalogue_check_value() {
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_E6E7);
    }

    #[test]
    fn structure_holds_for_every_payload_size_across_packet_boundaries() {
        // Sizes around each stuffing edge case: the first packet carries
        // 162 ES bytes (184 - 8 AF - 14 PES header), later ones 184.
        let bodies: Vec<Vec<u8>> = (1..700usize)
            .map(|len| {
                let mut b = vec![0, 0, 0, 1, 0x41];
                b.extend((0..len).map(|i| (i % 251) as u8 | 1));
                b
            })
            .collect();
        let frames: Vec<TsFrame<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| TsFrame {
                pts_90k: i as u64 * 3000,
                keyframe: i % 30 == 0,
                annex_b: b,
            })
            .collect();
        let ts = mux_segment(&frames);
        let p = parse(&ts);

        assert_eq!(p.es.len(), frames.len());
        for (i, (es, body)) in p.es.iter().zip(&bodies).enumerate() {
            assert_eq!(es, &with_aud(body), "frame {i} ES bytes");
        }
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(p.pts[i], f.pts_90k + PTS_OFFSET_90K, "frame {i} PTS");
            assert_eq!(p.pcr[i], f.pts_90k, "frame {i} PCR");
            assert_eq!(p.random_access[i], f.keyframe, "frame {i} RAI");
        }
        // Tables open the segment and precede every keyframe exactly once.
        let expected: String = frames
            .iter()
            .map(|f| if f.keyframe { "AMV" } else { "V" })
            .collect();
        assert_eq!(p.layout, expected);
    }

    #[test]
    fn existing_aud_is_kept_not_doubled() {
        let four = [0, 0, 0, 1, 0x09, 0x10, 0, 0, 0, 1, 0x65, 0x88];
        let three = [0, 0, 1, 0x09, 0xF0, 0, 0, 1, 0x41, 0x9A];
        let frames = [
            TsFrame {
                pts_90k: 0,
                keyframe: true,
                annex_b: &four,
            },
            TsFrame {
                pts_90k: 3000,
                keyframe: false,
                annex_b: &three,
            },
        ];
        let p = parse(&mux_segment(&frames));
        assert_eq!(p.es, [four.to_vec(), three.to_vec()]);
    }

    #[test]
    fn timestamps_wrap_at_33_bits() {
        let body = [0, 0, 0, 1, 0x65, 0x88];
        let near_wrap = (1u64 << 33) - 30_000;
        let frames = [
            TsFrame {
                pts_90k: near_wrap,
                keyframe: true,
                annex_b: &body,
            },
            TsFrame {
                pts_90k: near_wrap + 60_000,
                keyframe: false,
                annex_b: &body,
            },
            // Even a u64 clock near its end must not panic.
            TsFrame {
                pts_90k: u64::MAX,
                keyframe: false,
                annex_b: &body,
            },
        ];
        let p = parse(&mux_segment(&frames));
        assert_eq!(p.pts, [33_000, 93_000, 62_999]);
        assert_eq!(p.pcr, [near_wrap, 30_000, TS_MASK_33]);
    }

    #[test]
    fn demux_reads_back_what_was_muxed() {
        let bodies: Vec<Vec<u8>> = [1usize, 161, 162, 163, 345, 346, 2000]
            .iter()
            .map(|n| {
                let mut b = vec![0, 0, 0, 1, 0x09, 0xF0, 0, 0, 0, 1, 0x65];
                b.extend((0..*n).map(|i| (i % 251) as u8));
                b
            })
            .collect();
        let near_wrap = (1u64 << 33) - 6000;
        let frames: Vec<TsFrame<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| TsFrame {
                pts_90k: near_wrap + 3000 * i as u64,
                keyframe: i % 3 == 0,
                annex_b: b,
            })
            .collect();
        let back = demux_segment(&mux_segment(&frames)).unwrap();
        assert_eq!(back.len(), frames.len());
        for (f, b) in frames.iter().zip(&back) {
            assert_eq!(b.pts_90k, f.pts_90k & TS_MASK_33);
            assert_eq!(b.keyframe, f.keyframe);
            assert_eq!(b.annex_b, f.annex_b);
        }
        assert_eq!(demux_segment(&[0u8; 188]), Err(DemuxError::Sync(0)));
        assert_eq!(demux_segment(&[0x47; 100]), Err(DemuxError::Length(100)));
    }

    #[test]
    fn empty_input_is_just_the_tables() {
        let ts = mux_segment(&[]);
        assert_eq!(ts.len(), 2 * PACKET_LEN);
        assert_eq!(parse(&ts).layout, "AM");
    }

    /// `n` frames of the agent's test pattern at 320x240, IDR every 30.
    fn encode_pattern(n: u64) -> Vec<camfleet_agent::encode::Encoded> {
        use camfleet_agent::encode::H264Encoder;
        use camfleet_agent::source::{test_pattern::render, VideoFormat};
        use camfleet_shared::config::EncoderConfig;

        let format = VideoFormat {
            width: 320,
            height: 240,
            fps: camfleet_shared::wire::Rational::new(30, 1).unwrap(),
        };
        let config = EncoderConfig {
            bitrate_kbps: 500,
            keyframe_interval_frames: 30,
            ..EncoderConfig::default()
        };
        let mut enc = H264Encoder::new(format, &config).unwrap();
        (0..n)
            .map(|i| enc.encode(i, &render(320, 240, i)).unwrap())
            .collect()
    }

    /// 30 fps timestamps from frame 0.
    fn ts_frames(encoded: &[camfleet_agent::encode::Encoded]) -> Vec<TsFrame<'_>> {
        let fps = camfleet_shared::wire::Rational::new(30, 1).unwrap();
        encoded
            .iter()
            .enumerate()
            .map(|(i, e)| TsFrame {
                pts_90k: fps.pts_90k(i as u64),
                keyframe: e.keyframe,
                annex_b: &e.annex_b,
            })
            .collect()
    }

    /// 90 frames (3 GOPs) of the agent's test pattern, muxed.
    fn encoded_segment() -> Vec<u8> {
        let encoded = encode_pattern(90);
        let frames = ts_frames(&encoded);
        assert!(frames[0].keyframe);
        let ts = mux_segment(&frames);
        // The real stream must pass the same structural checks.
        assert_eq!(parse(&ts).es.len(), 90);
        ts
    }

    fn write_temp(ts: &[u8]) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::Builder::new().suffix(".ts").tempfile().unwrap();
        file.write_all(ts).unwrap();
        file.flush().unwrap();
        file
    }

    /// Runs an ffmpeg tool; a missing binary fails the test (never skips).
    fn run(tool: &str, args: &[&str]) -> std::process::Output {
        Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("cannot run `{tool}` ({e}): install ffmpeg (it provides ffprobe/ffmpeg)")
        })
    }

    #[test]
    fn ffprobe_reads_every_frame_with_the_right_timing() {
        let file = write_temp(&encoded_segment());
        let path = file.path().to_str().unwrap();

        let out = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames",
                "-of",
                "csv=p=0",
                path,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("ffprobe stream: {}", stdout.trim());
        assert!(out.status.success(), "ffprobe failed: {stderr}");
        assert!(stderr.trim().is_empty(), "ffprobe complained: {stderr}");
        // For TS, ffprobe lists the stream twice: under its program and at
        // top level. Both must say the same.
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!lines.is_empty(), "ffprobe printed no stream");
        for line in lines {
            assert_eq!(line.trim(), "h264,320,240,90");
        }

        let out = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts_time,flags",
                "-of",
                "csv=p=0",
                path,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ffprobe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let packets: Vec<(f64, String)> = stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let parsed = line
                    .trim()
                    .split_once(',')
                    .and_then(|(pts, flags)| Some((pts.parse().ok()?, flags.to_owned())));
                parsed.unwrap_or_else(|| panic!("unexpected ffprobe packet line {line:?}"))
            })
            .collect();
        eprintln!(
            "ffprobe packets: {} (first {:?}, last {:?})",
            packets.len(),
            packets.first(),
            packets.last()
        );
        assert_eq!(packets.len(), 90);
        assert!(packets[0].1.starts_with('K'), "first: {:?}", packets[0]);
        for (i, w) in packets.windows(2).enumerate() {
            let step = w[1].0 - w[0].0;
            assert!((step - 1.0 / 30.0).abs() < 1e-4, "packet {i}: step {step}");
        }
        let keyframes: Vec<usize> = (0..90).filter(|&i| packets[i].1.starts_with('K')).collect();
        assert_eq!(keyframes, [0, 30, 60]);
    }

    #[test]
    fn segments_joined_byte_for_byte_decode_cleanly() {
        // Two consecutive segments, cut at the keyframe of frame 60. Without
        // the discontinuity flag ffmpeg warns "Packet corrupt" at the join.
        let encoded = encode_pattern(90);
        let frames = ts_frames(&encoded);
        let mut joined = mux_segment(&frames[..60]);
        joined.extend_from_slice(&mux_segment(&frames[60..]));
        let file = write_temp(&joined);
        let path = file.path().to_str().unwrap();
        let out = run("ffmpeg", &["-v", "warning", "-i", path, "-f", "null", "-"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "ffmpeg reported: {stderr}"
        );
    }

    #[test]
    fn ffmpeg_decodes_without_errors() {
        let file = write_temp(&encoded_segment());
        let path = file.path().to_str().unwrap();
        let out = run("ffmpeg", &["-v", "error", "-i", path, "-f", "null", "-"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ffmpeg failed: {stderr}");
        assert!(stderr.is_empty(), "ffmpeg reported: {stderr}");
    }
}
