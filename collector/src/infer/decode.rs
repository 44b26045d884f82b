//! Per-camera H.264 decoding for inference, and the sampling that decides
//! which decoded pictures are inferred.
//!
//! * Every frame of a GOP is decoded (P-frames need their predecessors), but
//!   only sampled pictures are copied out as tight I420. With `infer_fps = 0`
//!   only keyframes are fed to the decoder at all (each IDR stands alone).
//! * After undecodable data the decoder is dropped and frames are skipped
//!   (counted) until the next IDR, which starts a fresh decoder; a new
//!   stream epoch (new SPS/PPS, new media clock) does the same.

use camfleet_shared::wire::FrameMeta;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;

/// What became of one frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A picture, copied into the caller's buffer as tight I420.
    Picture { width: u32, height: u32 },
    /// Decoded (or skipped on purpose) but not wanted for inference.
    NotSampled,
    /// Skipped while waiting for an IDR after corrupt data or at the start.
    WaitingForKeyframe,
    /// The decoder failed on this frame; skipping to the next IDR.
    Corrupt(String),
}

/// Media-time sampling on a fixed grid: the first picture in each `1 / fps`
/// slot of pts is due. The grid depends only on pts, so a collector that
/// takes a partition over (or replays it) samples the very same pictures.
#[derive(Debug)]
pub struct Sampler {
    interval_90k: Option<u64>,
    last_slot: Option<u64>,
}

impl Sampler {
    /// `fps = 0`: keyframes only.
    pub fn new(fps: f64) -> Self {
        Self {
            interval_90k: (fps > 0.0).then(|| (90_000.0 / fps).round().max(1.0) as u64),
            last_slot: None,
        }
    }

    pub fn keyframes_only(&self) -> bool {
        self.interval_90k.is_none()
    }

    /// Whether the frame with this pts is to be inferred.
    pub fn due(&mut self, pts_90k: u64, keyframe: bool) -> bool {
        let Some(interval) = self.interval_90k else {
            return keyframe;
        };
        let slot = pts_90k / interval;
        let due = self.last_slot.is_none_or(|last| slot > last);
        self.last_slot = Some(slot);
        due
    }

    /// A new stream epoch restarts the media clock.
    pub fn reset(&mut self) {
        self.last_slot = None;
    }
}

pub struct StreamDecoder {
    decoder: Option<Decoder>,
    epoch: Option<u64>,
    pub sampler: Sampler,
}

impl StreamDecoder {
    pub fn new(infer_fps: f64) -> Self {
        Self {
            decoder: None,
            epoch: None,
            sampler: Sampler::new(infer_fps),
        }
    }

    /// A frame of this camera will never arrive (skipped while inference was
    /// behind): the chain of references is broken until the next IDR.
    pub fn lost_frame(&mut self) {
        self.decoder = None;
    }

    /// Decodes `annex_b` (one access unit); if it is sampled, writes the
    /// picture into `out` as tight I420.
    pub fn decode(&mut self, meta: &FrameMeta, annex_b: &[u8], out: &mut Vec<u8>) -> Decoded {
        if self.epoch != Some(meta.epoch) {
            self.epoch = Some(meta.epoch);
            self.decoder = None;
            self.sampler.reset();
        }
        let keyframes_only = self.sampler.keyframes_only();
        if keyframes_only && !meta.keyframe {
            return Decoded::NotSampled;
        }
        if self.decoder.is_none() {
            if !meta.keyframe {
                return Decoded::WaitingForKeyframe;
            }
            match Decoder::new() {
                Ok(d) => self.decoder = Some(d),
                Err(e) => return Decoded::Corrupt(format!("decoder: {e}")),
            }
        }
        let wanted = self.sampler.due(meta.pts_90k, meta.keyframe);
        let decoder = self.decoder.as_mut().expect("set above");
        match decoder.decode(annex_b) {
            Ok(Some(pic)) if wanted => {
                let (w, h) = pic.dimensions();
                copy_i420(&pic, out);
                Decoded::Picture {
                    width: w as u32,
                    height: h as u32,
                }
            }
            Ok(Some(_)) => Decoded::NotSampled,
            // A frame that produced no picture (its data was incomplete but
            // not an error): nothing to infer; the next frames may decode.
            Ok(None) => Decoded::NotSampled,
            Err(e) => {
                self.decoder = None;
                Decoded::Corrupt(e.to_string())
            }
        }
    }
}

/// Copies a decoded picture (padded strides) into a tight I420 buffer.
fn copy_i420(pic: &impl YUVSource, out: &mut Vec<u8>) {
    let (w, h) = pic.dimensions();
    let (sy, su, sv) = pic.strides();
    out.clear();
    out.reserve(w * h * 3 / 2);
    for row in 0..h {
        out.extend_from_slice(&pic.y()[row * sy..row * sy + w]);
    }
    for (plane, stride) in [(pic.u(), su), (pic.v(), sv)] {
        for row in 0..h / 2 {
            out.extend_from_slice(&plane[row * stride..row * stride + w / 2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_agent::encode::H264Encoder;
    use camfleet_agent::source::test_pattern::{read_frame_number, render};
    use camfleet_agent::source::VideoFormat;
    use camfleet_shared::config::{EncoderConfig, EntropyCoding};
    use camfleet_shared::wire::{Codec, Rational};
    use camfleet_shared::CameraId;

    fn stream(frames: u64) -> Vec<(FrameMeta, Vec<u8>)> {
        stream_coded(frames, EntropyCoding::default())
    }

    fn stream_coded(frames: u64, entropy_coding: EntropyCoding) -> Vec<(FrameMeta, Vec<u8>)> {
        let format = VideoFormat {
            width: 320,
            height: 192,
            fps: Rational::new(30, 1).unwrap(),
        };
        let cfg = EncoderConfig {
            bitrate_kbps: 800,
            keyframe_interval_frames: 10,
            entropy_coding,
            ..EncoderConfig::default()
        };
        let mut enc = H264Encoder::new(format, &cfg).unwrap();
        (0..frames)
            .map(|i| {
                let out = enc.encode(i, &render(320, 192, i)).unwrap();
                let meta = FrameMeta {
                    camera: CameraId::new("t/cam").unwrap(),
                    seq: i,
                    capture_us: 0,
                    pts_90k: i * 3000,
                    keyframe: out.keyframe,
                    width: 320,
                    height: 192,
                    fps: format.fps,
                    codec: Codec::H264,
                    epoch: 1,
                };
                (meta, out.annex_b)
            })
            .collect()
    }

    #[test]
    fn samples_by_media_time_and_decodes_the_right_pictures() {
        let mut d = StreamDecoder::new(5.0); // every 6th frame at 30 fps
        let mut out = Vec::new();
        let mut inferred = vec![];
        for (meta, au) in stream(30) {
            if let Decoded::Picture { width, height } = d.decode(&meta, &au, &mut out) {
                assert_eq!((width, height), (320, 192));
                assert_eq!(out.len(), 320 * 192 * 3 / 2);
                let n = read_frame_number(&out[..320 * 192], 320, 320).unwrap();
                assert_eq!(n, meta.seq, "the picture is the frame's own");
                inferred.push(meta.seq);
            }
        }
        assert_eq!(inferred, [0, 6, 12, 18, 24]);
    }

    #[test]
    fn decodes_cabac_main_and_cavlc_baseline_streams() {
        // Agents send CABAC/Main by default and CAVLC/Baseline when so
        // configured; a fleet may mix both, so both must decode frame-exact.
        for coding in [EntropyCoding::Cabac, EntropyCoding::Cavlc] {
            let mut d = StreamDecoder::new(30.0);
            let mut out = Vec::new();
            for (meta, au) in stream_coded(20, coding) {
                let outcome = d.decode(&meta, &au, &mut out);
                assert_eq!(
                    outcome,
                    Decoded::Picture {
                        width: 320,
                        height: 192
                    },
                    "{coding:?} frame {}",
                    meta.seq
                );
                let n = read_frame_number(&out[..320 * 192], 320, 320).unwrap();
                assert_eq!(n, meta.seq, "{coding:?}");
            }
        }
    }

    #[test]
    fn corrupt_data_skips_to_the_next_idr() {
        let mut d = StreamDecoder::new(30.0);
        let mut out = Vec::new();
        let mut outcome = vec![];
        for (meta, mut au) in stream(25) {
            if meta.seq == 3 {
                // Keep the start code and NAL header, garble the slice.
                for b in au.iter_mut().skip(6) {
                    *b = 0xA5;
                }
            }
            outcome.push((meta.seq, d.decode(&meta, &au, &mut out)));
        }
        let corrupt: Vec<u64> = outcome
            .iter()
            .filter(|(_, o)| matches!(o, Decoded::Corrupt(_)))
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(corrupt, [3]);
        let waiting: Vec<u64> = outcome
            .iter()
            .filter(|(_, o)| *o == Decoded::WaitingForKeyframe)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(waiting, (4..10).collect::<Vec<_>>());
        assert!(matches!(outcome[10].1, Decoded::Picture { .. }));
        assert!(matches!(outcome[24].1, Decoded::Picture { .. }));
    }

    #[test]
    fn keyframes_only_feeds_only_idrs() {
        let mut d = StreamDecoder::new(0.0);
        let mut out = Vec::new();
        let pictures: Vec<u64> = stream(30)
            .into_iter()
            .filter_map(|(m, au)| {
                matches!(d.decode(&m, &au, &mut out), Decoded::Picture { .. }).then_some(m.seq)
            })
            .collect();
        assert_eq!(pictures, [0, 10, 20]);
    }
}
