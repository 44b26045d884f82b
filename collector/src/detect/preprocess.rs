//! I420 frame -> the model's input tensor, once per frame.
//!
//! The frame is resized in YUV, plane by plane (fast_image_resize, bilinear):
//! a 1280x720 frame becomes 416x416 luma + 208x208 chroma before any colour
//! work, so the YUV -> RGB/BGR conversion (yuvutils-rs, SIMD, BT.601 limited
//! range as ffmpeg and openh264 produce) runs on the small picture only. The
//! last step writes normalised floats straight into the caller's slice of
//! the batch tensor through a 256-entry table per channel. Buffers are kept
//! between frames: no allocation per frame once sizes are stable.

use super::manifest::{ColourOrder, InputSpec, Layout, Resize};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use yuvutils_rs::{YuvPlanarImage, YuvRange, YuvStandardMatrix};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("frame is {width}x{height}: {message}")]
    Frame {
        width: u32,
        height: u32,
        message: String,
    },
    #[error("output slice has {got} values, the input tensor of one image needs {want}")]
    Output { got: usize, want: usize },
}

/// Where the frame landed in the model input (pixels of the input): boxes
/// are mapped back to the frame through it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl Placement {
    /// A box in input pixels -> [0, 1] of the original frame, clamped.
    pub fn to_frame(&self, b: [f32; 4]) -> [f32; 4] {
        let nx = |v: f32| ((v - self.x) / self.width).clamp(0.0, 1.0);
        let ny = |v: f32| ((v - self.y) / self.height).clamp(0.0, 1.0);
        [nx(b[0]), ny(b[1]), nx(b[2]), ny(b[3])]
    }
}

/// Bytes of an I420 picture (chroma planes round odd sizes up).
pub fn i420_len(width: u32, height: u32) -> usize {
    let (w, h) = (width as usize, height as usize);
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

pub struct Preprocessor {
    spec: InputSpec,
    resizer: Resizer,
    options: ResizeOptions,
    /// The frame resized, still I420.
    small: Vec<u8>,
    /// The small frame as interleaved 8-bit RGB or BGR.
    pixels: Vec<u8>,
    /// Per channel (model order): pixel value -> normalised input value.
    lut: [[f32; 256]; 3],
}

impl Preprocessor {
    pub fn new(spec: &InputSpec) -> Self {
        let mut lut = [[0f32; 256]; 3];
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, out) in table.iter_mut().enumerate() {
                *out = (v as f32 - spec.mean[c]) / spec.std[c];
            }
        }
        Self {
            spec: spec.clone(),
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
            small: Vec::new(),
            pixels: Vec::new(),
            lut,
        }
    }

    /// Values of one image in the input tensor.
    pub fn image_len(&self) -> usize {
        3 * (self.spec.width * self.spec.height) as usize
    }

    /// Where a `width` x `height` frame goes in the input.
    pub fn placement(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let (iw, ih) = (self.spec.width, self.spec.height);
        match self.spec.resize {
            Resize::Stretch => (0, 0, iw, ih),
            Resize::Letterbox => {
                let scale = (iw as f64 / width as f64).min(ih as f64 / height as f64);
                let nw = ((width as f64 * scale).round() as u32).clamp(1, iw);
                let nh = ((height as f64 * scale).round() as u32).clamp(1, ih);
                ((iw - nw) / 2, (ih - nh) / 2, nw, nh)
            }
        }
    }

    /// Converts one I420 frame into `out` (one image of the input tensor, in
    /// the manifest's layout and colour order).
    pub fn run(
        &mut self,
        width: u32,
        height: u32,
        i420: &[u8],
        out: &mut [f32],
    ) -> Result<Placement, PreprocessError> {
        let frame_err = |message: String| PreprocessError::Frame {
            width,
            height,
            message,
        };
        if width == 0 || height == 0 {
            return Err(frame_err("empty".into()));
        }
        if i420.len() != i420_len(width, height) {
            return Err(frame_err(format!(
                "{} bytes, I420 needs {}",
                i420.len(),
                i420_len(width, height)
            )));
        }
        if out.len() != self.image_len() {
            return Err(PreprocessError::Output {
                got: out.len(),
                want: self.image_len(),
            });
        }
        let (px, py, nw, nh) = self.placement(width, height);

        // 1. Resize the three planes (skipped when the frame already fits).
        let planes = |w: u32, h: u32| {
            [
                (w, h),
                (w.div_ceil(2), h.div_ceil(2)),
                (w.div_ceil(2), h.div_ceil(2)),
            ]
        };
        let small: &[u8] = if (nw, nh) == (width, height) {
            i420
        } else {
            self.small.resize(i420_len(nw, nh), 0);
            let (mut src_rest, mut dst_rest) = (i420, self.small.as_mut_slice());
            for ((sw, sh), (dw, dh)) in planes(width, height).into_iter().zip(planes(nw, nh)) {
                let (s, sr) = src_rest.split_at((sw * sh) as usize);
                let (d, dr) = dst_rest.split_at_mut((dw * dh) as usize);
                (src_rest, dst_rest) = (sr, dr);
                let s = ImageRef::new(sw, sh, s, PixelType::U8)
                    .map_err(|e| frame_err(e.to_string()))?;
                let mut d = Image::from_slice_u8(dw, dh, d, PixelType::U8)
                    .map_err(|e| frame_err(e.to_string()))?;
                self.resizer
                    .resize(&s, &mut d, &self.options)
                    .map_err(|e| frame_err(e.to_string()))?;
            }
            &self.small
        };

        // 2. YUV -> interleaved RGB or BGR, at the input size.
        let [(yw, yh), (cw, ch), _] = planes(nw, nh);
        let (y_plane, rest) = small.split_at((yw * yh) as usize);
        let (u_plane, v_plane) = rest.split_at((cw * ch) as usize);
        let image = YuvPlanarImage {
            y_plane,
            y_stride: yw,
            u_plane,
            u_stride: cw,
            v_plane,
            v_stride: cw,
            width: nw,
            height: nh,
        };
        self.pixels.resize((nw * nh * 3) as usize, 0);
        let convert = match self.spec.colour {
            ColourOrder::Rgb => yuvutils_rs::yuv420_to_rgb,
            ColourOrder::Bgr => yuvutils_rs::yuv420_to_bgr,
        };
        convert(
            &image,
            &mut self.pixels,
            nw * 3,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
        )
        .map_err(|e| frame_err(e.to_string()))?;

        // 3. Normalise into the tensor (padding first, when letterboxed).
        let (iw, ih) = (self.spec.width as usize, self.spec.height as usize);
        let (px, py, nw, nh) = (px as usize, py as usize, nw as usize, nh as usize);
        let padded = (nw, nh) != (iw, ih);
        let lut = &self.lut;
        let pad = self.spec.pad as usize;
        match self.spec.layout {
            Layout::Nchw => {
                for (c, plane) in out.chunks_exact_mut(iw * ih).enumerate() {
                    if padded {
                        plane.fill(lut[c][pad]);
                    }
                    let table = &lut[c];
                    for (row, src) in self.pixels.chunks_exact(nw * 3).enumerate() {
                        let dst = &mut plane[(py + row) * iw + px..][..nw];
                        for (d, s) in dst.iter_mut().zip(src[c..].iter().step_by(3)) {
                            *d = table[*s as usize];
                        }
                    }
                }
            }
            Layout::Nhwc => {
                if padded {
                    for px in out.chunks_exact_mut(3) {
                        for c in 0..3 {
                            px[c] = lut[c][pad];
                        }
                    }
                }
                for (row, src) in self.pixels.chunks_exact(nw * 3).enumerate() {
                    let dst = &mut out[((py + row) * iw + px) * 3..][..nw * 3];
                    for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                        for c in 0..3 {
                            d[c] = lut[c][s[c] as usize];
                        }
                    }
                }
            }
        }
        Ok(Placement {
            x: px as f32,
            y: py as f32,
            width: nw as f32,
            height: nh as f32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layout: Layout, colour: ColourOrder, resize: Resize) -> InputSpec {
        InputSpec {
            name: "x".into(),
            layout,
            width: 8,
            height: 8,
            colour,
            resize,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad: 0,
        }
    }

    /// An I420 frame of one colour (limited-range BT.601 YUV).
    fn flat(width: u32, height: u32, y: u8, u: u8, v: u8) -> Vec<u8> {
        let mut f = vec![y; (width * height) as usize];
        let c = (width.div_ceil(2) * height.div_ceil(2)) as usize;
        f.extend(std::iter::repeat_n(u, c));
        f.extend(std::iter::repeat_n(v, c));
        f
    }

    #[test]
    fn a_red_frame_is_red_in_the_right_channel() {
        // Pure red in BT.601 limited range: Y 81, U 90, V 240.
        let frame = flat(16, 12, 81, 90, 240);
        let mut p = Preprocessor::new(&spec(Layout::Nchw, ColourOrder::Rgb, Resize::Stretch));
        let mut out = vec![0f32; p.image_len()];
        let placement = p.run(16, 12, &frame, &mut out).unwrap();
        assert_eq!(
            placement,
            Placement {
                x: 0.0,
                y: 0.0,
                width: 8.0,
                height: 8.0
            }
        );
        let mean = |c: usize| out[c * 64..(c + 1) * 64].iter().sum::<f32>() / 64.0;
        assert!(
            mean(0) > 240.0 && mean(1) < 15.0 && mean(2) < 15.0,
            "{} {} {}",
            mean(0),
            mean(1),
            mean(2)
        );

        // BGR + NHWC: red is the third value of each pixel.
        let mut p = Preprocessor::new(&spec(Layout::Nhwc, ColourOrder::Bgr, Resize::Stretch));
        p.run(16, 12, &frame, &mut out).unwrap();
        assert!(
            out.chunks_exact(3).all(|px| px[2] > 240.0 && px[0] < 15.0),
            "{out:?}"
        );
    }

    #[test]
    fn letterbox_centres_the_frame_and_pads() {
        // 16x8 into 8x8: content 8x4 at y 2..6, pad value 0 elsewhere.
        let frame = flat(16, 8, 235, 128, 128); // white
        let mut s = spec(Layout::Nchw, ColourOrder::Rgb, Resize::Letterbox);
        s.mean = [10.0; 3];
        s.std = [2.0; 3];
        let mut p = Preprocessor::new(&s);
        let mut out = vec![0f32; p.image_len()];
        let pl = p.run(16, 8, &frame, &mut out).unwrap();
        assert_eq!((pl.x, pl.y, pl.width, pl.height), (0.0, 2.0, 8.0, 4.0));
        for row in 0..8 {
            let v = out[row * 8 + 3];
            if (2..6).contains(&row) {
                assert!((v - (255.0 - 10.0) / 2.0).abs() < 2.0, "row {row}: {v}");
            } else {
                assert_eq!(v, -5.0, "row {row}");
            }
        }
        // A box over the content maps to the whole frame.
        assert_eq!(pl.to_frame([0.0, 2.0, 8.0, 6.0]), [0.0, 0.0, 1.0, 1.0]);
        assert_eq!(pl.to_frame([-3.0, 0.0, 4.0, 4.0]), [0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut p = Preprocessor::new(&spec(Layout::Nchw, ColourOrder::Rgb, Resize::Stretch));
        let mut out = vec![0f32; p.image_len()];
        let e = p.run(16, 12, &[0u8; 10], &mut out).unwrap_err().to_string();
        assert!(
            e.contains("16x12") && e.contains("10 bytes, I420 needs 288"),
            "{e}"
        );
        let e = p
            .run(16, 12, &flat(16, 12, 0, 0, 0), &mut out[..5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 5 values"), "{e}");
        // Odd sizes round the chroma planes up.
        assert_eq!(i420_len(5, 3), 15 + 2 * 3 * 2);
        p.run(5, 3, &flat(5, 3, 16, 128, 128), &mut out).unwrap();
    }
}
