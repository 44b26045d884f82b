//! Camera pixel formats to planar I420 (what the encoder takes).
//!
//! * YUYV (packed 4:2:2) -> I420: our loop, chroma rows averaged in pairs.
//!   `yuvutils-rs` 0.8.3's `yuyv422_to_yuv420` was tried first and is wrong
//!   (its SIMD path leaves the last pixels of each row unwritten, and it keeps
//!   one chroma row of two instead of averaging): docs/v4l2.md.
//! * NV12 -> I420: the luma plane is copied and the interleaved chroma plane
//!   split into U and V. No maintained crate offers this one (yuvutils-rs and
//!   dcv-color-primitives go through RGB); the split loop compiles to SIMD
//!   shuffles and the `convert` benchmark compares it with ffmpeg's swscale.
//! * MJPEG -> I420: `zune-jpeg` decodes to RGB (SIMD IDCT and colour
//!   conversion), `yuvutils-rs` converts RGB to limited-range BT.601 I420, the
//!   range and matrix ffmpeg's `-pix_fmt yuv420p` and raw webcam YUYV use.
//!
//! Raw formats are limited-range BT.601 already and are not rescaled.

use yuvutils_rs::{
    BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix,
};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{format} frame of {got} bytes is shorter than {want} bytes for {width}x{height}")]
    ShortFrame {
        format: &'static str,
        got: usize,
        want: usize,
        width: u32,
        height: u32,
    },
    /// A damaged or truncated JPEG (common on USB cameras under load).
    #[error("bad MJPEG frame: {0}")]
    Jpeg(String),
    #[error("MJPEG frame is {got_width}x{got_height}, expected {width}x{height}")]
    JpegSize {
        got_width: usize,
        got_height: usize,
        width: u32,
        height: u32,
    },
    #[error("{format} conversion failed: {reason}")]
    Yuv {
        format: &'static str,
        reason: String,
    },
}

/// Sizes I420 `dst` for a `width` x `height` picture and splits it into its planes.
fn i420_planes(dst: &mut Vec<u8>, width: u32, height: u32) -> YuvPlanarImageMut<'_, u8> {
    let (w, h) = (width as usize, height as usize);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    // Every byte is overwritten; only a new buffer's first use pays for zeroing.
    dst.resize(w * h + 2 * cw * ch, 0);
    let (y, uv) = dst.split_at_mut(w * h);
    let (u, v) = uv.split_at_mut(cw * ch);
    YuvPlanarImageMut {
        y_plane: BufferStoreMut::Borrowed(y),
        y_stride: width,
        u_plane: BufferStoreMut::Borrowed(u),
        u_stride: cw as u32,
        v_plane: BufferStoreMut::Borrowed(v),
        v_stride: cw as u32,
        width,
        height,
    }
}

/// YUYV with `stride` bytes per row (the driver's `bytesperline`, >= 2 * width).
///
/// Each chroma sample of the output is the rounded mean of the two source
/// rows it covers (as libyuv and swscale do), not just the top row's.
pub fn yuyv_to_i420(
    src: &[u8],
    stride: usize,
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = (width as usize, height as usize);
    let stride = stride.max(2 * w);
    let want = stride * h;
    if src.len() < want || w & 1 != 0 || h & 1 != 0 {
        return Err(ConvertError::ShortFrame {
            format: "YUYV",
            got: src.len(),
            want,
            width,
            height,
        });
    }
    let cw = w / 2;
    dst.resize(w * h + 2 * cw * (h / 2), 0);
    let (y_out, uv_out) = dst.split_at_mut(w * h);
    let (u_out, v_out) = uv_out.split_at_mut(cw * (h / 2));
    for (pair, ((y2, u), v)) in y_out
        .chunks_exact_mut(2 * w)
        .zip(u_out.chunks_exact_mut(cw))
        .zip(v_out.chunks_exact_mut(cw))
        .enumerate()
    {
        let top = &src[2 * pair * stride..][..2 * w];
        let bottom = &src[(2 * pair + 1) * stride..][..2 * w];
        let (y_top, y_bottom) = y2.split_at_mut(w);
        // Fixed-size blocks of 16 pixels: no bounds checks and constant
        // strides, so LLVM turns the loops into SIMD shuffles and averages
        // (the `convert` benchmark compares this with ffmpeg's swscale).
        let blocks = w / 16;
        for ((((t, b), yt), yb), (u, v)) in top
            .chunks_exact(32)
            .zip(bottom.chunks_exact(32))
            .zip(y_top.chunks_exact_mut(16))
            .zip(y_bottom.chunks_exact_mut(16))
            .zip(u.chunks_exact_mut(8).zip(v.chunks_exact_mut(8)))
        {
            let (t, b): (&[u8; 32], &[u8; 32]) = (
                t.try_into().expect("chunks_exact(32)"),
                b.try_into().expect("chunks_exact(32)"),
            );
            for i in 0..16 {
                yt[i] = t[2 * i];
                yb[i] = b[2 * i];
            }
            for j in 0..8 {
                u[j] = ((t[4 * j + 1] as u16 + b[4 * j + 1] as u16 + 1) >> 1) as u8;
                v[j] = ((t[4 * j + 3] as u16 + b[4 * j + 3] as u16 + 1) >> 1) as u8;
            }
        }
        let done = blocks * 16;
        for ((((t, b), yt), yb), (u, v)) in top[2 * done..]
            .chunks_exact(4)
            .zip(bottom[2 * done..].chunks_exact(4))
            .zip(y_top[done..].chunks_exact_mut(2))
            .zip(y_bottom[done..].chunks_exact_mut(2))
            .zip(u[done / 2..].iter_mut().zip(v[done / 2..].iter_mut()))
        {
            yt[0] = t[0];
            yt[1] = t[2];
            yb[0] = b[0];
            yb[1] = b[2];
            *u = ((t[1] as u16 + b[1] as u16 + 1) >> 1) as u8;
            *v = ((t[3] as u16 + b[3] as u16 + 1) >> 1) as u8;
        }
    }
    Ok(())
}

/// NV12 with `stride` bytes per luma row; the chroma plane follows the luma
/// plane directly (`stride * height` bytes in), with the same stride.
pub fn nv12_to_i420(
    src: &[u8],
    stride: usize,
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), ConvertError> {
    let (w, h) = (width as usize, height as usize);
    let stride = stride.max(w);
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let want = stride * h + stride * (ch - 1) + 2 * cw;
    if src.len() < want {
        return Err(ConvertError::ShortFrame {
            format: "NV12",
            got: src.len(),
            want,
            width,
            height,
        });
    }
    dst.resize(w * h + 2 * cw * ch, 0);
    let (y_out, uv_out) = dst.split_at_mut(w * h);
    let (u_out, v_out) = uv_out.split_at_mut(cw * ch);
    for (row, out) in y_out.chunks_exact_mut(w).enumerate() {
        out.copy_from_slice(&src[row * stride..row * stride + w]);
    }
    let chroma = &src[stride * h..];
    for row in 0..ch {
        let line = &chroma[row * stride..row * stride + 2 * cw];
        let u = &mut u_out[row * cw..(row + 1) * cw];
        let v = &mut v_out[row * cw..(row + 1) * cw];
        // Fixed-size blocks of 16 samples let LLVM use SIMD shuffles.
        for ((block, u), v) in line
            .chunks_exact(32)
            .zip(u.chunks_exact_mut(16))
            .zip(v.chunks_exact_mut(16))
        {
            let block: &[u8; 32] = block.try_into().expect("chunks_exact(32)");
            for i in 0..16 {
                u[i] = block[2 * i];
                v[i] = block[2 * i + 1];
            }
        }
        let done = cw / 16 * 16;
        for ((pair, u), v) in line[2 * done..]
            .chunks_exact(2)
            .zip(u[done..].iter_mut())
            .zip(v[done..].iter_mut())
        {
            *u = pair[0];
            *v = pair[1];
        }
    }
    Ok(())
}

/// Decodes MJPEG frames to I420, keeping its scratch buffers between frames.
#[derive(Default)]
pub struct MjpegDecoder {
    rgb: Vec<u8>,
    patched: Vec<u8>,
}

/// True when no Huffman table (DHT) precedes the scan and no `AVI1` APP0
/// segment says so: many UVC cameras omit the tables and rely on the
/// standard ones (JPEG Annex K.3), which zune-jpeg fills in only for frames
/// marked `AVI1`.
fn lacks_huffman_tables(jpeg: &[u8]) -> bool {
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        match marker {
            0xC4 => return false,
            0xE0 if jpeg[i + 4..].starts_with(b"AVI1") => return false,
            0xDA => return true,
            _ => i += 2 + len,
        }
    }
    // Damaged headers: let the decoder report them.
    false
}

/// APP0 segment marking the frame as AVI1 MJPEG (standard Huffman tables).
const AVI1_APP0: [u8; 9] = [0xFF, 0xE0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0];

impl MjpegDecoder {
    pub fn decode_to_i420(
        &mut self,
        jpeg: &[u8],
        width: u32,
        height: u32,
        dst: &mut Vec<u8>,
    ) -> Result<(), ConvertError> {
        // Strict: a truncated or damaged frame is an error (and skipped), not a
        // picture with grey blocks that the encoder would then carry on.
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_strict_mode(true)
            // A corrupt header must not make us allocate gigabytes; the size
            // is checked against the negotiated one below.
            .set_max_width(8192)
            .set_max_height(8192);
        let jpeg = if jpeg.starts_with(&[0xFF, 0xD8]) && lacks_huffman_tables(jpeg) {
            self.patched.clear();
            self.patched.extend_from_slice(&jpeg[..2]);
            self.patched.extend_from_slice(&AVI1_APP0);
            self.patched.extend_from_slice(&jpeg[2..]);
            &self.patched[..]
        } else {
            jpeg
        };
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
        decoder
            .decode_headers()
            .map_err(|e| ConvertError::Jpeg(e.to_string()))?;
        let info = decoder
            .info()
            .ok_or_else(|| ConvertError::Jpeg("no frame header".into()))?;
        let (got_width, got_height) = (info.width as usize, info.height as usize);
        if got_width != width as usize || got_height != height as usize {
            return Err(ConvertError::JpegSize {
                got_width,
                got_height,
                width,
                height,
            });
        }
        let len = decoder
            .output_buffer_size()
            .ok_or_else(|| ConvertError::Jpeg("no output size".into()))?;
        self.rgb.resize(len, 0);
        decoder
            .decode_into(&mut self.rgb)
            .map_err(|e| ConvertError::Jpeg(e.to_string()))?;
        let mut planar = i420_planes(dst, width, height);
        yuvutils_rs::rgb_to_yuv420(
            &mut planar,
            &self.rgb,
            width * 3,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| ConvertError::Yuv {
            format: "MJPEG",
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wide enough for any vectorised middle and scalar tail: every pixel is
    /// written, from the right place.
    #[test]
    fn yuyv_converts_every_pixel_of_wide_rows() {
        let (w, h) = (70u32, 4u32);
        let mut src = Vec::new();
        for r in 0..h {
            for x in 0..w / 2 {
                src.extend([
                    2 * x as u8 + r as u8,
                    100 + x as u8,
                    2 * x as u8 + 1 + r as u8,
                    200 - r as u8,
                ]);
            }
            src.extend([0xEE; 4]); // row padding
        }
        let mut out = Vec::new();
        yuyv_to_i420(&src, 2 * w as usize + 4, w, h, &mut out).unwrap();
        let (ws, hs) = (w as usize, h as usize);
        for r in 0..hs {
            for x in 0..ws {
                assert_eq!(out[r * ws + x], (x + r) as u8, "Y at {x},{r}");
            }
        }
        let cw = ws / 2;
        let (u, v) = out[ws * hs..].split_at(cw * hs / 2);
        for x in 0..cw {
            assert_eq!((u[x], u[cw + x]), (100 + x as u8, 100 + x as u8));
        }
        // V rows 0,1 -> (200+199+1)/2 = 200; rows 2,3 -> (198+197+1)/2 = 198.
        assert!(v[..cw].iter().all(|&v| v == 200) && v[cw..].iter().all(|&v| v == 198));
    }

    /// A 4x2 YUYV picture with distinct chroma per row pair and column pair.
    #[test]
    fn yuyv_keeps_luma_and_averages_chroma_rows() {
        let src = [
            10, 100, 11, 200, 12, 102, 13, 202, // row 0
            20, 110, 21, 210, 22, 112, 23, 212, // row 1
        ];
        let mut out = Vec::new();
        yuyv_to_i420(&src, 8, 4, 2, &mut out).unwrap();
        assert_eq!(&out[..8], &[10, 11, 12, 13, 20, 21, 22, 23]);
        // U: (100+110)/2, (102+112)/2; V: (200+210)/2, (202+212)/2.
        assert_eq!(&out[8..], &[105, 107, 205, 207]);
    }

    #[test]
    fn nv12_splits_chroma_and_skips_row_padding() {
        // 4x2, stride 6 (2 bytes of padding per row).
        let src = [
            1, 2, 3, 4, 0, 0, // Y row 0
            5, 6, 7, 8, 0, 0, // Y row 1
            50, 60, 51, 61, 0, 0, // UV row 0
        ];
        let mut out = vec![9; 3];
        nv12_to_i420(&src, 6, 4, 2, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 50, 51, 60, 61]);
    }

    #[test]
    fn short_raw_frames_are_errors() {
        let mut out = Vec::new();
        let e = yuyv_to_i420(&[0; 15], 8, 4, 2, &mut out).unwrap_err();
        assert!(e.to_string().contains("shorter than 16 bytes"), "{e}");
        assert!(e.to_string().contains("15 bytes"), "{e}");
        let e = nv12_to_i420(&[0; 11], 4, 4, 2, &mut out).unwrap_err();
        assert!(e.to_string().contains("NV12"), "{e}");
    }

    #[test]
    fn garbage_is_a_jpeg_error_not_a_panic() {
        let mut dec = MjpegDecoder::default();
        let mut out = Vec::new();
        for junk in [
            &b""[..],
            &b"\xff\xd8\xff"[..],
            &b"not a jpeg at all"[..],
            &[0xff; 4096][..],
        ] {
            assert!(dec.decode_to_i420(junk, 64, 64, &mut out).is_err());
        }
    }
}
