//! I420 -> H.264 access units with openh264 (built from source, with nasm SIMD).
//!
//! Settings chosen for surveillance video going over Kafka:
//! * every frame is kept (`skip_frames(false)`): a dropped frame would be a
//!   sequence gap the collector must report;
//! * an IDR every `keyframe_interval_frames`, each carrying SPS/PPS in-band
//!   (openh264 emits them with every IDR; [`Encoded::keyframe`] frames are
//!   checked for it in the tests);
//! * bitrate-mode rate control, scene-change IDRs off so GOPs stay regular
//!   (archive segments are cut at IDRs).

use crate::source::VideoFormat;
use camfleet_shared::config::EncoderConfig;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig as H264Config, FrameRate, FrameType, IntraFramePeriod,
    RateControlMode, UsageType,
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
            .rate_control_mode(RateControlMode::Bitrate)
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
