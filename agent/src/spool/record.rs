//! Byte layout of the spool's sled records (see the table in `spool/mod.rs`).

use super::ledger::GapReason;
use camfleet_shared::wire::{Codec, FrameMeta, Rational};
use camfleet_shared::CameraId;

pub const FORMAT_KEY: &[u8] = b"V";
pub const FORMAT: &[u8] = b"camfleet-spool/1";
const FRAME: u8 = b'F';
const HIGH: u8 = b'H';
const GAP: u8 = b'G';
const VALUE_VERSION: u8 = 1;
/// version, crc32, flags, capture_us, pts_90k, epoch, width, height, fps num, fps den
pub const HEADER_BYTES: usize = 1 + 4 + 1 + 8 + 8 + 8 + 4 + 4 + 4 + 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("key {0:?} is not a spool key")]
    BadKey(Vec<u8>),
    #[error("record {key}: {reason}")]
    BadValue { key: String, reason: String },
}

/// A parsed key.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    Frame(CameraId, u64),
    High(CameraId),
    Gap(CameraId, u64),
    Format,
}

fn with_seq(kind: u8, camera: &CameraId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + camera.as_str().len() + 8);
    k.push(kind);
    k.extend_from_slice(camera.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn frame_key(camera: &CameraId, seq: u64) -> Vec<u8> {
    with_seq(FRAME, camera, seq)
}

pub fn gap_key(camera: &CameraId, first: u64) -> Vec<u8> {
    with_seq(GAP, camera, first)
}

pub fn high_key(camera: &CameraId) -> Vec<u8> {
    let mut k = vec![HIGH];
    k.extend_from_slice(camera.as_str().as_bytes());
    k
}

/// Keys of one camera's frames sort by sequence number.
pub fn frame_prefix(camera: &CameraId) -> Vec<u8> {
    let mut k = frame_key(camera, 0);
    k.truncate(k.len() - 8);
    k
}

pub fn parse_key(key: &[u8]) -> Result<Key, RecordError> {
    let bad = || RecordError::BadKey(key.to_vec());
    if key == FORMAT_KEY {
        return Ok(Key::Format);
    }
    let (&kind, rest) = key.split_first().ok_or_else(bad)?;
    let camera = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| CameraId::new(s).ok())
            .ok_or_else(bad)
    };
    let with_seq = |rest: &[u8]| -> Result<(CameraId, u64), RecordError> {
        if rest.len() < 10 || rest[rest.len() - 9] != 0 {
            return Err(bad());
        }
        let (cam, seq) = rest.split_at(rest.len() - 9);
        let seq = u64::from_be_bytes(seq[1..].try_into().map_err(|_| bad())?);
        Ok((camera(cam)?, seq))
    };
    match kind {
        FRAME => with_seq(rest).map(|(c, s)| Key::Frame(c, s)),
        GAP => with_seq(rest).map(|(c, s)| Key::Gap(c, s)),
        HIGH => Ok(Key::High(camera(rest)?)),
        _ => Err(bad()),
    }
}

/// Encodes a frame value: header then the Annex-B payload.
pub fn encode_frame(meta: &FrameMeta, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_BYTES + payload.len());
    v.push(VALUE_VERSION);
    v.extend_from_slice(&[0; 4]); // crc, filled below
    v.push(meta.keyframe as u8);
    for x in [meta.capture_us, meta.pts_90k, meta.epoch] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for x in [meta.width, meta.height, meta.fps.num, meta.fps.den] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(payload);
    let crc = crc32fast::hash(&v[5..]);
    v[1..5].copy_from_slice(&crc.to_le_bytes());
    v
}

/// The fields of a frame value without copying the payload.
#[derive(Debug)]
pub struct FrameHeader {
    pub keyframe: bool,
    pub capture_us: u64,
    pub pts_90k: u64,
    pub epoch: u64,
    pub width: u32,
    pub height: u32,
    pub fps: Rational,
}

impl FrameHeader {
    pub fn meta(&self, camera: CameraId, seq: u64) -> FrameMeta {
        FrameMeta {
            camera,
            seq,
            capture_us: self.capture_us,
            pts_90k: self.pts_90k,
            keyframe: self.keyframe,
            width: self.width,
            height: self.height,
            fps: self.fps,
            codec: Codec::H264,
            epoch: self.epoch,
        }
    }
}

/// Parses a frame value's header; with `check_crc` also verifies the payload.
pub fn decode_frame(
    camera: &CameraId,
    seq: u64,
    value: &[u8],
    check_crc: bool,
) -> Result<FrameHeader, RecordError> {
    let bad = |reason: &str| RecordError::BadValue {
        key: format!("frame {camera} #{seq}"),
        reason: reason.to_string(),
    };
    if value.len() < HEADER_BYTES {
        return Err(bad("shorter than the record header"));
    }
    if value[0] != VALUE_VERSION {
        return Err(bad(&format!("unknown record version {}", value[0])));
    }
    if check_crc {
        let want = u32::from_le_bytes(value[1..5].try_into().expect("4 bytes"));
        if crc32fast::hash(&value[5..]) != want {
            return Err(bad("checksum mismatch"));
        }
    }
    let u64_at = |i: usize| u64::from_le_bytes(value[i..i + 8].try_into().expect("8 bytes"));
    let u32_at = |i: usize| u32::from_le_bytes(value[i..i + 4].try_into().expect("4 bytes"));
    let fps = Rational::new(u32_at(38), u32_at(42)).ok_or_else(|| bad("zero frame rate"))?;
    Ok(FrameHeader {
        keyframe: value[5] & 1 == 1,
        capture_us: u64_at(6),
        pts_90k: u64_at(14),
        epoch: u64_at(22),
        width: u32_at(30),
        height: u32_at(34),
        fps,
    })
}

pub fn payload(value: &[u8]) -> &[u8] {
    &value[HEADER_BYTES..]
}

pub fn encode_gap(last: u64, reason: GapReason) -> Vec<u8> {
    let mut v = last.to_le_bytes().to_vec();
    v.push(reason as u8);
    v
}

pub fn decode_gap(value: &[u8]) -> Option<(u64, GapReason)> {
    if value.len() != 9 {
        return None;
    }
    Some((
        u64::from_le_bytes(value[..8].try_into().ok()?),
        GapReason::from_u8(value[8])?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_seq() {
        let c = CameraId::new("site/cam-1").unwrap();
        assert_eq!(
            parse_key(&frame_key(&c, 7)).unwrap(),
            Key::Frame(c.clone(), 7)
        );
        assert_eq!(parse_key(&gap_key(&c, 9)).unwrap(), Key::Gap(c.clone(), 9));
        assert_eq!(parse_key(&high_key(&c)).unwrap(), Key::High(c.clone()));
        assert!(frame_key(&c, 255) < frame_key(&c, 256));
        assert!(frame_key(&c, 1).starts_with(&frame_prefix(&c)));
        assert!(parse_key(b"Fgarbage").is_err());
    }

    #[test]
    fn frame_values_round_trip_and_detect_damage() {
        let c = CameraId::new("site/cam").unwrap();
        let meta = FrameMeta {
            camera: c.clone(),
            seq: 42,
            capture_us: 1_700_000_000_000_000,
            pts_90k: 3003,
            keyframe: true,
            width: 1280,
            height: 720,
            fps: Rational::new(30000, 1001).unwrap(),
            codec: Codec::H264,
            epoch: 3,
        };
        let mut v = encode_frame(&meta, b"\0\0\0\x01\x65abc");
        let h = decode_frame(&c, 42, &v, true).unwrap();
        assert_eq!(h.meta(c.clone(), 42), meta);
        assert_eq!(payload(&v), b"\0\0\0\x01\x65abc");
        let last = v.len() - 1;
        v[last] ^= 1;
        let e = decode_frame(&c, 42, &v, true).err().unwrap();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
