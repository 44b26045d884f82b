//! I420 -> I420 scaling (encoder `width`/`height` smaller or larger than the
//! source), plane by plane with `fast_image_resize` (SIMD convolution).
//!
//! Bilinear: for a surveillance uplink the usual case is a 1080p sensor sent
//! at 720p or 360p, where bilinear is within a fraction of a dB of Lanczos at a
//! third of its cost (`scripts/bench` has the numbers).

use crate::source::VideoFormat;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

#[derive(Debug, thiserror::Error)]
#[error("cannot scale {from_w}x{from_h} to {to_w}x{to_h}: {message}")]
pub struct ScaleError {
    from_w: u32,
    from_h: u32,
    to_w: u32,
    to_h: u32,
    message: String,
}

pub struct Scaler {
    from: VideoFormat,
    to: VideoFormat,
    resizer: Resizer,
    options: ResizeOptions,
}

impl Scaler {
    pub fn new(from: VideoFormat, to: VideoFormat) -> Self {
        Self {
            from,
            to,
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        }
    }

    /// Scales `src` (I420 of the source size) into `dst` (resized to the
    /// output size; its allocation is reused).
    pub fn scale(&mut self, src: &[u8], dst: &mut Vec<u8>) -> Result<(), ScaleError> {
        let err = |message: String| ScaleError {
            from_w: self.from.width,
            from_h: self.from.height,
            to_w: self.to.width,
            to_h: self.to.height,
            message,
        };
        if src.len() != self.from.i420_len() {
            return Err(err(format!(
                "source picture has {} bytes, expected {}",
                src.len(),
                self.from.i420_len()
            )));
        }
        dst.resize(self.to.i420_len(), 0);
        let planes = |f: VideoFormat| {
            let (w, h) = (f.width, f.height);
            [(w, h), (w / 2, h / 2), (w / 2, h / 2)]
        };
        let (mut src_rest, mut dst_rest) = (src, dst.as_mut_slice());
        for ((sw, sh), (dw, dh)) in planes(self.from).into_iter().zip(planes(self.to)) {
            let (s, sr) = src_rest.split_at((sw * sh) as usize);
            let (d, dr) = dst_rest.split_at_mut((dw * dh) as usize);
            (src_rest, dst_rest) = (sr, dr);
            let s = ImageRef::new(sw, sh, s, PixelType::U8).map_err(|e| err(e.to_string()))?;
            let mut d =
                Image::from_slice_u8(dw, dh, d, PixelType::U8).map_err(|e| err(e.to_string()))?;
            self.resizer
                .resize(&s, &mut d, &self.options)
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use camfleet_shared::wire::Rational;

    fn format(width: u32, height: u32) -> VideoFormat {
        VideoFormat {
            width,
            height,
            fps: Rational::new(30, 1).unwrap(),
        }
    }

    #[test]
    fn scaling_keeps_the_picture() {
        // A horizontal luma ramp and flat chroma: halving the size must keep
        // the ramp (sampled at the matching places) and the chroma values.
        let (from, to) = (format(640, 360), format(320, 180));
        let mut src = vec![0u8; from.i420_len()];
        for y in 0..360 {
            for x in 0..640 {
                src[y * 640 + x] = (x * 255 / 639) as u8;
            }
        }
        let (u, v) = src[640 * 360..].split_at_mut(320 * 180);
        u.fill(90);
        v.fill(200);
        let mut dst = Vec::new();
        Scaler::new(from, to).scale(&src, &mut dst).unwrap();
        assert_eq!(dst.len(), to.i420_len());
        for x in [0usize, 80, 160, 240, 319] {
            let want = ((2 * x) as f64 + 0.5) * 255.0 / 639.0;
            let got = dst[90 * 320 + x] as f64;
            assert!((got - want).abs() <= 3.0, "x {x}: {got} vs {want}");
        }
        assert!(dst[320 * 180..320 * 180 + 160 * 90]
            .iter()
            .all(|&b| b == 90));
        assert!(dst[320 * 180 + 160 * 90..].iter().all(|&b| b == 200));
    }

    #[test]
    fn a_picture_of_the_wrong_size_is_an_error() {
        let err = Scaler::new(format(640, 360), format(320, 180))
            .scale(&[0u8; 10], &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("640x360 to 320x180"), "{err}");
        assert!(err.contains("has 10 bytes"), "{err}");
    }
}
