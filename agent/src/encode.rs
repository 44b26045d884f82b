//! I420 -> H.264 access units with openh264 (built from source, with nasm SIMD),
//! through [`crate::openh264_encoder`] so every parameter can be set.
//!
//! Settings chosen for surveillance video going over Kafka:
//! * every frame is kept (frame skipping off): a dropped frame would be a
//!   sequence gap the collector must report;
//! * an IDR every `keyframe_interval_frames`, each carrying SPS/PPS in-band
//!   (openh264 emits them with every IDR; [`Encoded::keyframe`] frames are
//!   checked for it in the tests);
//! * CABAC / Main profile by default (docs/encoder.md has the quality study);
//! * bitrate-mode rate control by default, scene-change IDRs off so GOPs stay
//!   regular (archive segments are cut at IDRs);
//! * complexity, adaptive quantisation, background detection, reference
//!   frames and entropy coding from the camera's `[camera.encoder]`.

use crate::openh264_encoder::{default_params, SvcEncoder};
use crate::source::VideoFormat;
use camfleet_shared::config::{EncoderComplexity, EncoderConfig, EntropyCoding, RateControl};
use camfleet_shared::wire::Rational;
use openh264_sys2 as sys;

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
    inner: SvcEncoder,
    format: VideoFormat,
    interval: u32,
    since_idr: u32,
    /// Frames encoded so far: the media clock openh264 sees (timestamp rate
    /// control paces by it).
    encoded: u64,
}

/// The full openh264 parameter set for one camera's stream.
pub fn encoder_params(
    format: VideoFormat,
    config: &EncoderConfig,
) -> Result<sys::SEncParamExt, crate::openh264_encoder::CallError> {
    let mut p = default_params()?;
    let bps = (config.bitrate_kbps as i64 * 1000).min(i32::MAX as i64) as i32;
    let fps = format.fps.as_f64() as f32;
    p.iUsageType = sys::CAMERA_VIDEO_REAL_TIME;
    p.iPicWidth = format.width as i32;
    p.iPicHeight = format.height as i32;
    p.iTargetBitrate = bps;
    p.iRCMode = match config.rate_control {
        RateControl::Bitrate => sys::RC_BITRATE_MODE,
        RateControl::Quality => sys::RC_QUALITY_MODE,
        RateControl::Buffer => sys::RC_BUFFERBASED_MODE,
        RateControl::Timestamp => sys::RC_TIMESTAMP_MODE,
    };
    p.fMaxFrameRate = fps;
    p.iTemporalLayerNum = 1;
    p.iSpatialLayerNum = 1;
    p.iComplexityMode = match config.complexity {
        EncoderComplexity::Low => sys::LOW_COMPLEXITY,
        EncoderComplexity::Medium => sys::MEDIUM_COMPLEXITY,
        EncoderComplexity::High => sys::HIGH_COMPLEXITY,
    };
    p.uiIntraPeriod = config.keyframe_interval_frames;
    p.iNumRefFrame = config.reference_frames as i32;
    p.eSpsPpsIdStrategy = sys::CONSTANT_ID;
    p.bPrefixNalAddingCtrl = false;
    p.bSimulcastAVC = false;
    p.iEntropyCodingModeFlag = match config.entropy_coding {
        EntropyCoding::Cabac => 1,
        EntropyCoding::Cavlc => 0,
    };
    p.bEnableFrameSkip = false;
    p.iMinQp = 0;
    p.iMaxQp = 51;
    p.bEnableLongTermReference = false;
    p.iLtrMarkPeriod = 30;
    // One thread per camera: with one slice openh264 cannot use more, and a
    // box with several cameras spreads them over its cores.
    p.iMultipleThreadIdc = 1;
    p.iLoopFilterDisableIdc = 0;
    p.bEnableDenoise = false;
    p.bEnableBackgroundDetection = config.background_detection;
    p.bEnableAdaptiveQuant = config.adaptive_quantization;
    p.bEnableSceneChangeDetect = config.scene_change_detection;
    let layer = &mut p.sSpatialLayers[0];
    layer.iVideoWidth = format.width as i32;
    layer.iVideoHeight = format.height as i32;
    layer.fFrameRate = fps;
    layer.iSpatialBitrate = bps;
    layer.iMaxSpatialBitrate = bps;
    // Main, not High: openh264 has no 8x8 transform, and Main is what every
    // H.264 decoder (browsers through hls.js included) plays.
    layer.uiProfileIdc = match config.entropy_coding {
        EntropyCoding::Cabac => sys::PRO_MAIN,
        EntropyCoding::Cavlc => sys::PRO_BASELINE,
    };
    layer.uiLevelIdc = sys::LEVEL_UNKNOWN;
    layer.sSliceArgument.uiSliceMode = sys::SM_SINGLE_SLICE;
    layer.sSliceArgument.uiSliceNum = 1;
    Ok(p)
}

impl H264Encoder {
    pub fn new(format: VideoFormat, config: &EncoderConfig) -> Result<Self, EncodeError> {
        let init = |e: crate::openh264_encoder::CallError| EncodeError::Init {
            width: format.width,
            height: format.height,
            message: e.to_string(),
        };
        if !format.width.is_multiple_of(2) || !format.height.is_multiple_of(2) {
            return Err(EncodeError::Init {
                width: format.width,
                height: format.height,
                message: "4:2:0 H.264 needs an even width and height".into(),
            });
        }
        let inner =
            SvcEncoder::new(&encoder_params(format, config).map_err(init)?).map_err(init)?;
        Ok(Self {
            inner,
            format,
            interval: config.keyframe_interval_frames,
            since_idr: 0,
            encoded: 0,
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
        let failed = |e: crate::openh264_encoder::CallError| EncodeError::Encode {
            index,
            message: e.to_string(),
        };
        // The intra period setting alone drifts when openh264 inserts its own
        // IDRs; forcing keeps GOPs exactly `interval` long.
        if self.since_idr >= self.interval {
            self.inner.force_idr().map_err(failed)?;
        }
        let (cw, ch) = (w / 2, h / 2);
        let (y, uv) = i420.split_at(w * h);
        let (u, v) = uv.split_at(cw * ch);
        let fps = self.format.fps;
        let timestamp_ms =
            (self.encoded as u128 * 1000 * fps.den as u128 / fps.num.max(1) as u128) as i64;
        let mut annex_b = Vec::new();
        let frame_type = self
            .inner
            .encode(
                [y, u, v],
                [w, cw, cw],
                self.format.width,
                self.format.height,
                timestamp_ms,
                &mut annex_b,
            )
            .map_err(failed)?;
        if annex_b.is_empty() {
            return Err(EncodeError::Encode {
                index,
                message: format!("no output (openh264 frame type {frame_type})"),
            });
        }
        let keyframe = frame_type == sys::videoFrameTypeIDR;
        self.encoded += 1;
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

    /// Reads H.264 RBSP bits (emulation prevention removed) for the header
    /// fields the tests check.
    struct Bits {
        rbsp: Vec<u8>,
        at: usize,
    }

    impl Bits {
        /// `nal` without its start code, header byte included.
        fn new(nal: &[u8]) -> Self {
            let mut rbsp = Vec::with_capacity(nal.len());
            let mut zeros = 0;
            for &b in &nal[1..] {
                if zeros >= 2 && b == 3 {
                    zeros = 0;
                    continue;
                }
                zeros = if b == 0 { zeros + 1 } else { 0 };
                rbsp.push(b);
            }
            Self { rbsp, at: 0 }
        }
        fn bit(&mut self) -> u32 {
            let b = (self.rbsp[self.at / 8] >> (7 - self.at % 8)) & 1;
            self.at += 1;
            b as u32
        }
        fn bits(&mut self, n: u32) -> u32 {
            (0..n).fold(0, |v, _| (v << 1) | self.bit())
        }
        fn ue(&mut self) -> u32 {
            let mut zeros = 0;
            while self.bit() == 0 {
                zeros += 1;
            }
            (1 << zeros) - 1 + self.bits(zeros)
        }
    }

    /// (profile_idc, level_idc, max_num_ref_frames) from an SPS and
    /// entropy_coding_mode_flag from a PPS in `annex_b`.
    fn headers(annex_b: &[u8]) -> (u32, u32, u32, u32) {
        let nals: Vec<&[u8]> = openh264::nal_units(annex_b)
            .map(|nal| &nal[nal.iter().position(|&b| b == 1).unwrap() + 1..])
            .collect();
        let sps = nals.iter().find(|n| n[0] & 0x1f == 7).expect("an SPS");
        let pps = nals.iter().find(|n| n[0] & 0x1f == 8).expect("a PPS");
        let mut b = Bits::new(sps);
        let profile = b.bits(8);
        b.bits(8); // constraint flags
        let level = b.bits(8);
        b.ue(); // seq_parameter_set_id
        assert!(
            ![100, 110, 122, 244, 44, 83, 86, 118, 128].contains(&profile),
            "High-profile SPS fields not parsed here (profile {profile})"
        );
        b.ue(); // log2_max_frame_num_minus4
        match b.ue() {
            0 => {
                b.ue(); // log2_max_pic_order_cnt_lsb_minus4
            }
            2 => {}
            other => panic!("pic_order_cnt_type {other} not parsed here"),
        }
        let refs = b.ue();
        let mut b = Bits::new(pps);
        b.ue(); // pic_parameter_set_id
        b.ue(); // seq_parameter_set_id
        let cabac = b.bit();
        (profile, level, refs, cabac)
    }

    fn test_stream(config: &EncoderConfig, frames: u64) -> Vec<Encoded> {
        let format = VideoFormat {
            width: 320,
            height: 240,
            fps: Rational::new(30, 1).unwrap(),
        };
        let mut enc = H264Encoder::new(format, config).unwrap();
        (0..frames)
            .map(|i| enc.encode(i, &render(320, 240, i)).unwrap())
            .collect()
    }

    #[test]
    fn the_default_is_cabac_main_profile_and_cavlc_is_baseline() {
        let default = test_stream(&EncoderConfig::default(), 1);
        let (profile, level, refs, cabac) = headers(&default[0].annex_b);
        assert_eq!((profile, cabac), (77, 1), "Main profile with CABAC");
        assert_eq!(refs, EncoderConfig::default().reference_frames);
        assert!((10..=52).contains(&level), "level {level}");
        let cavlc = EncoderConfig {
            entropy_coding: EntropyCoding::Cavlc,
            ..EncoderConfig::default()
        };
        let (profile, _, _, cabac) = headers(&test_stream(&cavlc, 1)[0].annex_b);
        assert_eq!((profile, cabac), (66, 0), "Baseline profile with CAVLC");
    }

    #[test]
    fn reference_frames_reach_the_sps() {
        for n in 1..=4 {
            let config = EncoderConfig {
                reference_frames: n,
                ..EncoderConfig::default()
            };
            let (_, _, refs, _) = headers(&test_stream(&config, 1)[0].annex_b);
            assert_eq!(refs, n);
        }
    }

    /// PSNR of the luma planes of two same-sized pictures.
    fn psnr_y(a: &[u8], b: &[u8]) -> f64 {
        let mse = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
    }

    #[test]
    fn every_setting_round_trips_through_the_decoder() {
        use openh264::decoder::Decoder;
        use openh264::formats::YUVSource;
        let base = EncoderConfig {
            bitrate_kbps: 1000,
            keyframe_interval_frames: 15,
            ..EncoderConfig::default()
        };
        let variants = [
            base.clone(),
            EncoderConfig {
                entropy_coding: EntropyCoding::Cavlc,
                ..base.clone()
            },
            EncoderConfig {
                reference_frames: 4,
                complexity: EncoderComplexity::High,
                ..base.clone()
            },
            EncoderConfig {
                rate_control: RateControl::Timestamp,
                scene_change_detection: true,
                ..base.clone()
            },
        ];
        for config in variants {
            let mut decoder = Decoder::new().unwrap();
            let (mut worst, mut pictures) = (f64::MAX, 0);
            for (i, frame) in test_stream(&config, 40).into_iter().enumerate() {
                let source = render(320, 240, i as u64);
                let Some(pic) = decoder.decode(&frame.annex_b).unwrap() else {
                    continue;
                };
                let (w, h) = pic.dimensions();
                assert_eq!((w, h), (320, 240));
                let stride = pic.strides().0;
                let y: Vec<u8> = (0..h)
                    .flat_map(|r| &pic.y()[r * stride..r * stride + w])
                    .copied()
                    .collect();
                worst = worst.min(psnr_y(&y, &source[..w * h]));
                pictures += 1;
            }
            assert_eq!(pictures, 40, "{config:?}: every frame decodes");
            // The test pattern at 1 Mbit/s, 320x240 comes out near 40 dB; a
            // broken bitstream or a mismatched reference is far below.
            assert!(worst > 30.0, "{config:?}: worst PSNR-Y {worst:.1} dB");
        }
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
