//! I420 -> H.264 access units with openh264 (built from source, with nasm SIMD).
//!
//! Settings chosen for surveillance video going over Kafka:
//! * every frame is kept (`skip_frames(false)`): a dropped frame would be a
//!   sequence gap the collector must report;
//! * an IDR every `keyframe_interval_frames`, each carrying SPS/PPS in-band
//!   (openh264 emits them with every IDR; [`Encoded::keyframe`] frames are
//!   checked for it in the tests);
//! * bitrate-mode rate control by default, scene-change IDRs off so GOPs stay
//!   regular (archive segments are cut at IDRs);
//! * complexity, adaptive quantisation and background detection from the
//!   camera's `[camera.encoder]` (docs/encoder.md has the quality study).

use crate::source::VideoFormat;
use camfleet_shared::config::{EncoderComplexity, EncoderConfig, RateControl};
use camfleet_shared::wire::Rational;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig as H264Config, FrameRate, FrameType,
    IntraFramePeriod, RateControlMode, UsageType,
};
use openh264::formats::YUVSlices;
use openh264::OpenH264API;

#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("openh264 could not be set up for {width}x{height}: {message}")]
    Init {
        width: u32,
        height: u32,
        message: String,
    },
    #[error("openh264 failed on frame {index}: {message}")]
    Encode { index: u64, message: String },
    #[error("frame {index} has {got} bytes, expected {expected} for I420 {width}x{height}")]
    FrameSize {
        index: u64,
        got: usize,
        expected: usize,
        width: u32,
        height: u32,
    },
}

/// One encoded access unit in Annex-B form.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub annex_b: Vec<u8>,
    pub keyframe: bool,
}

/// The stream a camera sends: the source scaled to the encoder's `width` x
/// `height` and thinned to its `max_fps`, when set.
pub fn output_format(source: VideoFormat, config: &EncoderConfig) -> VideoFormat {
    let (width, height) = match (config.width, config.height) {
        (Some(w), Some(h)) => (w, h),
        _ => (source.width, source.height),
    };
    let fps = match config.max_fps {
        Some(cap) if (cap as f64) < source.fps.as_f64() => {
            Rational::new(cap, 1).expect("validated max_fps > 0")
        }
        _ => source.fps,
    };
    VideoFormat { width, height, fps }
}

/// Thins a source to a lower frame rate evenly: source frame `i` is kept when
/// it starts a new output frame interval, so 30 -> 10 keeps every third and
/// 30 -> 12 alternates gaps of 2 and 3.
#[derive(Clone, Copy, Debug)]
pub struct RateCap {
    source: Rational,
    output: Rational,
}

impl RateCap {
    pub fn new(source: Rational, output: Rational) -> Self {
        Self { source, output }
    }

    fn slot(&self, index: u64) -> u128 {
        index as u128 * self.output.num as u128 * self.source.den as u128
            / (self.output.den as u128 * self.source.num as u128)
    }

    pub fn keep(&self, index: u64) -> bool {
        self.output == self.source || index == 0 || self.slot(index) > self.slot(index - 1)
    }
}

pub struct H264Encoder {
    inner: Encoder,
    format: VideoFormat,
    interval: u32,
    since_idr: u32,
}

impl H264Encoder {
    pub fn new(format: VideoFormat, config: &EncoderConfig) -> Result<Self, EncodeError> {
        let h264 = H264Config::new()
            .bitrate(BitRate::from_bps(config.bitrate_kbps * 1000))
            .max_frame_rate(FrameRate::from_hz(format.fps.as_f64() as f32))
            .rate_control_mode(match config.rate_control {
                RateControl::Bitrate => RateControlMode::Bitrate,
                RateControl::Quality => RateControlMode::Quality,
                RateControl::Buffer => RateControlMode::Bufferbased,
            })
            .complexity(match config.complexity {
                EncoderComplexity::Low => Complexity::Low,
                EncoderComplexity::Medium => Complexity::Medium,
                EncoderComplexity::High => Complexity::High,
            })
            .adaptive_quantization(config.adaptive_quantization)
            .background_detection(config.background_detection)
            .usage_type(UsageType::CameraVideoRealTime)
            .skip_frames(false)
            .scene_change_detect(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(
                config.keyframe_interval_frames,
            ));
        let inner = Encoder::with_api_config(OpenH264API::from_source(), h264).map_err(|e| {
            EncodeError::Init {
                width: format.width,
                height: format.height,
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            inner,
            format,
            interval: config.keyframe_interval_frames,
            since_idr: 0,
        })
    }

    /// Encodes one I420 picture into one access unit.
    pub fn encode(&mut self, index: u64, i420: &[u8]) -> Result<Encoded, EncodeError> {
        let (w, h) = (self.format.width as usize, self.format.height as usize);
        let expected = self.format.i420_len();
        if i420.len() != expected {
            return Err(EncodeError::FrameSize {
                index,
                got: i420.len(),
                expected,
                width: self.format.width,
                height: self.format.height,
            });
        }
        // The intra period setting alone drifts when openh264 inserts its own
        // IDRs; forcing keeps GOPs exactly `interval` long.
        if self.since_idr >= self.interval {
            self.inner.force_intra_frame();
        }
        let (y, uv) = i420.split_at(w * h);
        let (u, v) = uv.split_at((w / 2) * (h / 2));
        let slices = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let bitstream = self
            .inner
            .encode(&slices)
            .map_err(|e| EncodeError::Encode {
                index,
                message: e.to_string(),
            })?;
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR);
        let annex_b = bitstream.to_vec();
        if annex_b.is_empty() {
            return Err(EncodeError::Encode {
                index,
                message: format!("no output (frame type {:?})", bitstream.frame_type()),
            });
        }
        self.since_idr = if keyframe { 1 } else { self.since_idr + 1 };
        Ok(Encoded { annex_b, keyframe })
    }
}

/// NAL unit types found in an Annex-B buffer, in order (for checks and tests).
pub fn nal_types(annex_b: &[u8]) -> Vec<u8> {
    openh264::nal_units(annex_b)
        .filter_map(|nal| {
            let start = nal.iter().position(|&b| b == 1)? + 1;
            nal.get(start).map(|b| b & 0x1f)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_pattern::render;
    use camfleet_shared::wire::Rational;

    #[test]
    fn every_idr_carries_sps_and_pps_and_gops_are_regular() {
        let format = VideoFormat {
            width: 320,
            height: 240,
            fps: Rational::new(30, 1).unwrap(),
        };
        let config = EncoderConfig {
            bitrate_kbps: 500,
            keyframe_interval_frames: 10,
            ..EncoderConfig::default()
        };
        let mut enc = H264Encoder::new(format, &config).unwrap();
        let mut keyframes = vec![];
        for i in 0..35 {
            let out = enc.encode(i, &render(320, 240, i)).unwrap();
            let types = nal_types(&out.annex_b);
            if out.keyframe {
                keyframes.push(i);
                assert!(
                    types.contains(&7) && types.contains(&8),
                    "IDR {i}: {types:?}"
                );
                assert!(types.contains(&5), "IDR {i} has no IDR slice: {types:?}");
            } else {
                assert!(!types.contains(&5) && !types.contains(&7), "{i}: {types:?}");
            }
        }
        assert_eq!(keyframes, [0, 10, 20, 30]);
    }

    #[test]
    fn rate_cap_thins_evenly() {
        let r = |n| Rational::new(n, 1).unwrap();
        let kept = |src, out| -> Vec<u64> {
            let cap = RateCap::new(r(src), r(out));
            (0..30).filter(|&i| cap.keep(i)).collect()
        };
        assert_eq!(kept(30, 30).len(), 30);
        assert_eq!(kept(30, 10), (0..10).map(|i| 3 * i).collect::<Vec<_>>());
        let twelve = kept(30, 12);
        assert_eq!(twelve.len(), 12);
        let gaps: Vec<u64> = twelve.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| (2..=3).contains(g)), "{gaps:?}");
        // NTSC source: 30000/1001 capped at 15.
        let ntsc = Rational::new(30000, 1001).unwrap();
        let cap = RateCap::new(ntsc, r(15));
        // 3000 frames last 100.1 s: 1501 output slots at 15 fps.
        assert_eq!((0..3000).filter(|&i| cap.keep(i)).count(), 1501);
    }

    #[test]
    fn output_format_scales_and_caps() {
        let src = VideoFormat {
            width: 1920,
            height: 1080,
            fps: Rational::new(30, 1).unwrap(),
        };
        let cfg = EncoderConfig {
            width: Some(1280),
            height: Some(720),
            max_fps: Some(10),
            ..EncoderConfig::default()
        };
        let out = output_format(src, &cfg);
        assert_eq!(
            (out.width, out.height, out.fps.num, out.fps.den),
            (1280, 720, 10, 1)
        );
        // A cap above the source's rate changes nothing.
        let cfg = EncoderConfig {
            max_fps: Some(60),
            ..EncoderConfig::default()
        };
        assert_eq!(output_format(src, &cfg), src);
    }

    #[test]
    fn wrong_frame_size_is_an_error_not_a_crash() {
        let format = VideoFormat {
            width: 320,
            height: 240,
            fps: Rational::new(30, 1).unwrap(),
        };
        let mut enc = H264Encoder::new(format, &EncoderConfig::default()).unwrap();
        let err = enc.encode(3, &[0u8; 100]).unwrap_err().to_string();
        assert!(err.contains("frame 3 has 100 bytes"), "{err}");
    }
}
