//! The `camfleet.video.v1` Kafka record format.
//!
//! One record per encoded access unit (frame):
//!
//! * key: the camera id `site/camera` (UTF-8), so a camera stays in one
//!   partition and in order;
//! * value: H.264 Annex-B bytes of the access unit. Every IDR access unit carries
//!   SPS and PPS in-band, so a consumer can start at any keyframe;
//! * headers: the metadata below, each value ASCII text so kcat, Flink and Spark
//!   read them without parsing the value.
//!
//! | header          | value                                   | example        |
//! |-----------------|-----------------------------------------|----------------|
//! | `cf.v`          | format version, always `1`              | `1`            |
//! | `cf.camera`     | camera id (same as the key)             | `depot/gate`   |
//! | `cf.seq`        | per-camera sequence number, u64         | `4711`         |
//! | `cf.capture_us` | capture time, µs since the Unix epoch   | `1763768812000000` |
//! | `cf.pts_90k`    | media timestamp, 90 kHz ticks, u64      | `3003`         |
//! | `cf.key`        | `1` for an IDR access unit, else `0`    | `1`            |
//! | `cf.width`      | luma width in pixels                    | `1280`         |
//! | `cf.height`     | luma height in pixels                   | `720`          |
//! | `cf.fps`        | nominal frame rate `num/den`            | `30/1`         |
//! | `cf.codec`      | `h264`                                  | `h264`         |
//! | `cf.epoch`      | stream epoch, u64; changes whenever the encoder settings change | `1` |
//! | `cf.chunk`      | only on split frames: `index/count`, index from 0 | `0/3` |
//! | `cf.evicted`    | only after an edge eviction: the camera's sequence ranges evicted from the agent's spool right before this frame, `first-last` inclusive, comma-separated | `120-179,240-299` |
//!
//! A frame larger than the producer's maximum record size is split into
//! `count` records with the same metadata and consecutive `cf.chunk` indexes;
//! [`Reassembler`] joins them. Chunks of one frame are adjacent in the
//! partition because the producer sends them back to back with the same key.
//!
//! Unknown headers are ignored (forward compatibility); a missing or malformed
//! known header is a [`WireError`] naming the header.

use crate::camera::{CameraId, CameraIdError};
use std::collections::HashMap;
use std::fmt;

pub const FORMAT_VERSION: u32 = 1;
/// Largest whole frame a consumer accepts (a 4K IDR is a few MiB); bounds the
/// memory a corrupt or hostile chunk sequence can make a consumer hold.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
pub const VIDEO_TOPIC: &str = "camfleet.video.v1";
/// Detection records, one per inferred frame (docs/detections.schema.json).
pub const DETECTIONS_TOPIC: &str = "camfleet.detections.v1";
/// Per-camera events (docs/events.md).
pub const EVENTS_TOPIC: &str = "camfleet.events.v1";
/// Learning features, one record per inferred picture with embeddings
/// (docs/learning.md); the log the Parquet tables are written from.
pub const FEATURES_TOPIC: &str = "camfleet.features.v1";
/// Ops' labels of detections (`camfleet-collector label`, docs/learning.md).
pub const LABELS_TOPIC: &str = "camfleet.labels.v1";

pub mod header {
    pub const VERSION: &str = "cf.v";
    pub const CAMERA: &str = "cf.camera";
    pub const SEQ: &str = "cf.seq";
    pub const CAPTURE_US: &str = "cf.capture_us";
    pub const PTS_90K: &str = "cf.pts_90k";
    pub const KEY: &str = "cf.key";
    pub const WIDTH: &str = "cf.width";
    pub const HEIGHT: &str = "cf.height";
    pub const FPS: &str = "cf.fps";
    pub const CODEC: &str = "cf.codec";
    pub const EPOCH: &str = "cf.epoch";
    pub const CHUNK: &str = "cf.chunk";
    pub const EVICTED: &str = "cf.evicted";
}

/// Formats `cf.evicted`: inclusive ranges, `first-last`, comma-separated.
pub fn format_evicted(ranges: &[std::ops::RangeInclusive<u64>]) -> String {
    let mut s = String::new();
    for r in ranges {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str(&format!("{}-{}", r.start(), r.end()));
    }
    s
}

/// Parses `cf.evicted`.
pub fn parse_evicted(value: &str) -> Result<Vec<std::ops::RangeInclusive<u64>>, WireError> {
    value
        .split(',')
        .map(|part| {
            part.split_once('-')
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                .filter(|(a, b)| a <= b)
                .map(|(a, b)| a..=b)
                .ok_or_else(|| WireError::BadValue {
                    name: header::EVICTED,
                    value: value.to_string(),
                    reason: "expected first-last[,first-last...] with first <= last",
                })
        })
        .collect()
}

/// A frame rate as a fraction, e.g. 30000/1001.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rational {
    pub num: u32,
    pub den: u32,
}

impl Rational {
    pub fn new(num: u32, den: u32) -> Option<Self> {
        (num > 0 && den > 0).then_some(Self { num, den })
    }

    /// Duration of one frame in 90 kHz ticks (rounded down).
    pub fn frame_ticks_90k(&self) -> u64 {
        90_000 * self.den as u64 / self.num as u64
    }

    /// Media timestamp of frame `index` in 90 kHz ticks, without drift.
    pub fn pts_90k(&self, index: u64) -> u64 {
        (index as u128 * 90_000 * self.den as u128 / self.num as u128) as u64
    }

    pub fn as_f64(&self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    H264,
}

impl Codec {
    pub fn as_str(&self) -> &'static str {
        match self {
            Codec::H264 => "h264",
        }
    }
}

/// Everything about a frame except its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMeta {
    pub camera: CameraId,
    pub seq: u64,
    pub capture_us: u64,
    pub pts_90k: u64,
    pub keyframe: bool,
    pub width: u32,
    pub height: u32,
    pub fps: Rational,
    pub codec: Codec,
    pub epoch: u64,
}

/// Position of one record within a split frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub index: u32,
    pub count: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {name} has a bad value {value:?}: {reason}")]
    BadValue {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(String),
    #[error(transparent)]
    Camera(#[from] CameraIdError),
    #[error("record key {key:?} does not match header cf.camera {camera:?}")]
    KeyMismatch { key: String, camera: String },
    #[error("frame {seq} of camera {camera} exceeds {MAX_FRAME_BYTES} bytes; dropped")]
    TooLarge { camera: String, seq: u64 },
    #[error("chunk {got} of camera {camera} seq {seq} out of order (expected {expected})")]
    ChunkOrder {
        camera: String,
        seq: u64,
        expected: String,
        got: String,
    },
}

/// The headers of one record, in a fixed order.
pub fn headers(meta: &FrameMeta, chunk: Option<Chunk>) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (header::VERSION, FORMAT_VERSION.to_string()),
        (header::CAMERA, meta.camera.to_string()),
        (header::SEQ, meta.seq.to_string()),
        (header::CAPTURE_US, meta.capture_us.to_string()),
        (header::PTS_90K, meta.pts_90k.to_string()),
        (
            header::KEY,
            if meta.keyframe { "1" } else { "0" }.to_string(),
        ),
        (header::WIDTH, meta.width.to_string()),
        (header::HEIGHT, meta.height.to_string()),
        (header::FPS, meta.fps.to_string()),
        (header::CODEC, meta.codec.as_str().to_string()),
        (header::EPOCH, meta.epoch.to_string()),
    ];
    if let Some(c) = chunk {
        h.push((header::CHUNK, format!("{}/{}", c.index, c.count)));
    }
    h
}

/// Parses a record's key and headers. `headers` yields `(name, value)`;
/// a `None` value (a null header) counts as missing.
pub fn parse<'a>(
    key: Option<&[u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> Result<(FrameMeta, Option<Chunk>), WireError> {
    // Runs for every record the collector reads: a fixed table, no allocation.
    const KNOWN: [&str; 12] = [
        header::VERSION,
        header::CAMERA,
        header::SEQ,
        header::CAPTURE_US,
        header::PTS_90K,
        header::KEY,
        header::WIDTH,
        header::HEIGHT,
        header::FPS,
        header::CODEC,
        header::EPOCH,
        header::CHUNK,
    ];
    let slot = |name: &str| KNOWN.iter().position(|k| *k == name);
    let mut found: [Option<&'a [u8]>; KNOWN.len()] = [None; KNOWN.len()];
    for (name, value) in headers {
        if let (Some(i), Some(v)) = (slot(name), value) {
            found[i] = Some(v);
        }
    }
    let get = |name: &'static str| slot(name).and_then(|i| found[i]);
    let text = |name: &'static str| -> Result<&str, WireError> {
        let raw = get(name).ok_or(WireError::Missing(name))?;
        std::str::from_utf8(raw).map_err(|_| WireError::BadValue {
            name,
            value: String::from_utf8_lossy(raw).into_owned(),
            reason: "not UTF-8",
        })
    };
    let bad = |name: &'static str, value: &str, reason: &'static str| WireError::BadValue {
        name,
        value: value.to_string(),
        reason,
    };
    let int = |name: &'static str| -> Result<u64, WireError> {
        let v = text(name)?;
        v.parse::<u64>()
            .map_err(|_| bad(name, v, "not an unsigned decimal integer"))
    };
    let version = text(header::VERSION)?;
    if version != "1" {
        return Err(WireError::Version(version.to_string()));
    }
    let camera = CameraId::new(text(header::CAMERA)?)?;
    if let Some(key) = key {
        if key != camera.as_str().as_bytes() {
            return Err(WireError::KeyMismatch {
                key: String::from_utf8_lossy(key).into_owned(),
                camera: camera.to_string(),
            });
        }
    }
    let keyframe = match text(header::KEY)? {
        "1" => true,
        "0" => false,
        v => return Err(bad(header::KEY, v, "expected 0 or 1")),
    };
    let dim = |name| -> Result<u32, WireError> {
        let v = int(name)?;
        if v == 0 || v > 16_384 || v % 2 != 0 {
            return Err(bad(name, &v.to_string(), "expected an even size 2..=16384"));
        }
        Ok(v as u32)
    };
    let fps_text = text(header::FPS)?;
    let fps = fps_text
        .split_once('/')
        .and_then(|(n, d)| Rational::new(n.parse().ok()?, d.parse().ok()?))
        .ok_or_else(|| bad(header::FPS, fps_text, "expected num/den, both > 0"))?;
    let codec = match text(header::CODEC)? {
        "h264" => Codec::H264,
        v => return Err(bad(header::CODEC, v, "unsupported codec (only h264)")),
    };
    let chunk = match get(header::CHUNK).is_some() {
        false => None,
        true => {
            let v = text(header::CHUNK)?;
            let c = v
                .split_once('/')
                .and_then(|(i, n)| {
                    Some(Chunk {
                        index: i.parse().ok()?,
                        count: n.parse().ok()?,
                    })
                })
                .filter(|c| c.count >= 1 && c.index < c.count)
                .ok_or_else(|| bad(header::CHUNK, v, "expected index/count with index < count"))?;
            Some(c)
        }
    };
    let meta = FrameMeta {
        camera,
        seq: int(header::SEQ)?,
        capture_us: int(header::CAPTURE_US)?,
        pts_90k: int(header::PTS_90K)?,
        keyframe,
        width: dim(header::WIDTH)?,
        height: dim(header::HEIGHT)?,
        fps,
        codec,
        epoch: int(header::EPOCH)?,
    };
    Ok((meta, chunk))
}

/// Splits a payload into the byte ranges of its records; one range when it fits.
pub fn chunk_ranges(len: usize, max_record_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let max = max_record_bytes.max(1);
    if len <= max {
        return std::iter::once(0..len).collect();
    }
    (0..len)
        .step_by(max)
        .map(|start| start..(start + max).min(len))
        .collect()
}

/// Rejoins split frames. Holds at most one partial frame per camera.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<CameraId, (FrameMeta, u32, Vec<u8>)>,
}

impl Reassembler {
    /// Feeds one record. Returns the whole frame once its last chunk arrived.
    ///
    /// A chunk that does not continue the camera's partial frame is an error,
    /// and the partial frame is dropped (the error says so).
    pub fn push(
        &mut self,
        meta: FrameMeta,
        chunk: Option<Chunk>,
        bytes: &[u8],
    ) -> Result<Option<(FrameMeta, Vec<u8>)>, WireError> {
        let Some(chunk) = chunk else {
            if let Some((prev, next, _)) = self.partial.remove(&meta.camera) {
                return Err(WireError::ChunkOrder {
                    camera: prev.camera.to_string(),
                    seq: prev.seq,
                    expected: format!("chunk {next}"),
                    got: format!("whole frame seq {}", meta.seq),
                });
            }
            return Ok(Some((meta, bytes.to_vec())));
        };
        let camera = meta.camera.clone();
        let expected = match self.partial.get(&camera) {
            Some((prev, next, _)) if prev.seq == meta.seq => *next,
            Some(_) | None => 0,
        };
        if chunk.index != expected {
            let dropped = self.partial.remove(&camera);
            return Err(WireError::ChunkOrder {
                camera: camera.to_string(),
                seq: meta.seq,
                expected: format!("chunk {expected}"),
                got: format!(
                    "chunk {}/{}{}",
                    chunk.index,
                    chunk.count,
                    dropped.map_or(String::new(), |(p, ..)| format!(
                        " (dropped partial seq {})",
                        p.seq
                    ))
                ),
            });
        }
        if chunk.index == 0 {
            if let Some((prev, next, _)) = self.partial.remove(&camera) {
                return Err(WireError::ChunkOrder {
                    camera: camera.to_string(),
                    seq: prev.seq,
                    expected: format!("chunk {next}"),
                    got: format!("chunk 0 of seq {}", meta.seq),
                });
            }
        }
        let entry = self
            .partial
            .entry(camera.clone())
            .or_insert_with(|| (meta.clone(), 0, Vec::new()));
        if entry.2.len() + bytes.len() > MAX_FRAME_BYTES {
            self.partial.remove(&camera);
            return Err(WireError::TooLarge {
                camera: camera.to_string(),
                seq: meta.seq,
            });
        }
        entry.1 += 1;
        entry.2.extend_from_slice(bytes);
        if entry.1 == chunk.count {
            let (meta, _, bytes) = self.partial.remove(&camera).expect("entry just inserted");
            return Ok(Some((meta, bytes)));
        }
        Ok(None)
    }

    /// Drops a camera's partial frame (its partition was revoked: the next
    /// owner replays it from the first chunk).
    pub fn discard(&mut self, camera: &CameraId) {
        self.partial.remove(camera);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> FrameMeta {
        FrameMeta {
            camera: CameraId::new("depot/gate").unwrap(),
            seq: 4711,
            capture_us: 1_763_768_812_000_000,
            pts_90k: 3003,
            keyframe: true,
            width: 1280,
            height: 720,
            fps: Rational::new(30, 1).unwrap(),
            codec: Codec::H264,
            epoch: 1,
        }
    }

    fn as_pairs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect()
    }

    /// The test vector printed in docs/wire-format.md.
    #[test]
    fn test_vector_matches_docs() {
        let h = headers(&meta(), None);
        let text: Vec<String> = h.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text.join(" "),
            "cf.v=1 cf.camera=depot/gate cf.seq=4711 cf.capture_us=1763768812000000 \
             cf.pts_90k=3003 cf.key=1 cf.width=1280 cf.height=720 cf.fps=30/1 \
             cf.codec=h264 cf.epoch=1"
        );
    }

    #[test]
    fn round_trip_with_and_without_chunk() {
        for chunk in [None, Some(Chunk { index: 1, count: 3 })] {
            let h = headers(&meta(), chunk);
            let (m, c) = parse(Some(b"depot/gate"), as_pairs(&h)).unwrap();
            assert_eq!((m, c), (meta(), chunk));
        }
    }

    #[test]
    fn unknown_headers_are_ignored() {
        let mut h = headers(&meta(), None);
        h.push(("traceparent", "00-abc".into()));
        assert_eq!(parse(None, as_pairs(&h)).unwrap().0, meta());
    }

    #[test]
    fn errors_name_the_header() {
        let mut h = headers(&meta(), None);
        h.retain(|(k, _)| *k != header::SEQ);
        assert_eq!(parse(None, as_pairs(&h)), Err(WireError::Missing("cf.seq")));

        let mut h = headers(&meta(), None);
        h[5].1 = "yes".into();
        let e = parse(None, as_pairs(&h)).unwrap_err().to_string();
        assert!(e.contains("cf.key") && e.contains("yes"), "{e}");

        let mut h = headers(&meta(), None);
        h[0].1 = "2".into();
        assert!(matches!(
            parse(None, as_pairs(&h)),
            Err(WireError::Version(_))
        ));

        let h = headers(&meta(), None);
        assert!(matches!(
            parse(Some(b"other/cam"), as_pairs(&h)),
            Err(WireError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn chunk_ranges_cover_the_payload() {
        assert_eq!(chunk_ranges(10, 10).len(), 1);
        assert_eq!(chunk_ranges(0, 10).first(), Some(&(0..0)));
        assert_eq!(chunk_ranges(25, 10), vec![0..10, 10..20, 20..25]);
    }

    #[test]
    fn reassembles_split_frames_and_rejects_gaps() {
        let payload: Vec<u8> = (0..=255).collect();
        let ranges = chunk_ranges(payload.len(), 100);
        let n = ranges.len() as u32;
        let mut r = Reassembler::default();
        for (i, range) in ranges.iter().enumerate() {
            let out = r
                .push(
                    meta(),
                    Some(Chunk {
                        index: i as u32,
                        count: n,
                    }),
                    &payload[range.clone()],
                )
                .unwrap();
            if i + 1 < ranges.len() {
                assert!(out.is_none());
            } else {
                assert_eq!(out.unwrap().1, payload);
            }
        }
        // A missing middle chunk is reported, not glued into a corrupt frame.
        r.push(meta(), Some(Chunk { index: 0, count: 3 }), b"a")
            .unwrap();
        assert!(r
            .push(meta(), Some(Chunk { index: 2, count: 3 }), b"c")
            .is_err());
        // A chunk run that would exceed the frame limit is cut off.
        let big = vec![0u8; MAX_FRAME_BYTES / 2 + 1];
        let mut r2 = Reassembler::default();
        r2.push(meta(), Some(Chunk { index: 0, count: 9 }), &big)
            .unwrap();
        assert!(matches!(
            r2.push(meta(), Some(Chunk { index: 1, count: 9 }), &big),
            Err(WireError::TooLarge { .. })
        ));
        // And the reassembler recovers for the next frame.
        let mut next = meta();
        next.seq += 1;
        assert_eq!(r.push(next, None, b"x").unwrap().unwrap().1, b"x");
    }

    #[test]
    fn pts_has_no_drift_at_ntsc_rates() {
        let r = Rational::new(30000, 1001).unwrap();
        assert_eq!(r.pts_90k(30000), 1001 * 90_000);
        assert_eq!(Rational::new(30, 1).unwrap().frame_ticks_90k(), 3000);
    }

    #[test]
    fn evicted_ranges_round_trip_and_bad_values_are_named() {
        let r = vec![120..=179, 240..=240];
        assert_eq!(format_evicted(&r), "120-179,240-240");
        assert_eq!(parse_evicted("120-179,240-240").unwrap(), r);
        for bad in ["", "5", "9-3", "a-b", "1-2,"] {
            let e = parse_evicted(bad).unwrap_err().to_string();
            assert!(e.contains("cf.evicted"), "{bad:?}: {e}");
        }
    }
}
