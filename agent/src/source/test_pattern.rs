//! A moving synthetic picture with the frame number drawn into the pixels.
//!
//! The top band holds the frame index as a 32-bit barcode (big blocks of black
//! or white luma, most significant bit first), large enough to survive H.264
//! at any sane bitrate, so a consumer can tell which frame it decoded
//! ([`read_frame_number`]). Below it: a diagonal gradient scrolling one pixel
//! per frame and a bouncing box, so the encoder has real motion to code.

use super::{pace, FrameSource, RawFrame, SourceError, VideoFormat};
use camfleet_shared::wire::Rational;
use std::time::Instant;

const BITS: u32 = 32;

pub struct TestPattern {
    format: VideoFormat,
    next: u64,
    paced: bool,
    start: Instant,
}

impl TestPattern {
    pub fn new(width: u32, height: u32, fps: Rational, paced: bool) -> Self {
        Self {
            format: VideoFormat { width, height, fps },
            next: 0,
            paced,
            start: Instant::now(),
        }
    }
}

/// Side of one barcode block in pixels: the band spans about 80% of the width.
fn block_size(width: u32) -> usize {
    ((width as usize * 4 / 5) / BITS as usize).max(4) & !1
}

/// Renders frame `index` of a `width` x `height` pattern as I420.
pub fn render(width: u32, height: u32, index: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    render_into(width, height, index, &mut buf);
    buf
}

/// Renders into `buf`, reusing its allocation (every byte is overwritten).
pub fn render_into(width: u32, height: u32, index: u64, buf: &mut Vec<u8>) {
    let (w, h) = (width as usize, height as usize);
    buf.resize(w * h + 2 * (w / 2) * (h / 2), 0);
    let (y, uv) = buf.split_at_mut(w * h);
    let shift = index as usize;
    for row in 0..h {
        let line = &mut y[row * w..(row + 1) * w];
        for (col, px) in line.iter_mut().enumerate() {
            *px = (16 + ((col + row + shift) % 220)) as u8;
        }
    }
    // A bouncing box, 1/6 of the picture, moving 4 px per frame.
    let (bw, bh) = (w / 6, h / 6);
    let span_x = (w - bw).max(1);
    let span_y = (h - bh).max(1);
    let bounce = |t: usize, span: usize| {
        let p = t % (2 * span);
        if p < span {
            p
        } else {
            2 * span - p
        }
    };
    let (bx, by) = (bounce(shift * 4, span_x), bounce(shift * 3, span_y));
    for row in by..(by + bh).min(h) {
        y[row * w + bx..row * w + (bx + bw).min(w)].fill(200);
    }
    // The barcode band: white margin, then 32 blocks.
    let block = block_size(width);
    let band = block + 4;
    for row in 0..band.min(h) {
        y[row * w..(row + 1) * w].fill(235);
    }
    for bit in 0..BITS as usize {
        let on = (index >> (BITS as usize - 1 - bit)) & 1 == 1;
        let x0 = 2 + bit * block;
        // Pictures narrower than the band (under 130 px) carry only its first bits.
        if x0 >= w {
            break;
        }
        for row in 2..(2 + block).min(h) {
            let end = (x0 + block).min(w);
            y[row * w + x0..row * w + end].fill(if on { 16 } else { 235 });
        }
    }
    // Chroma: slow colour drift.
    let (cu, cv) = uv.split_at_mut((w / 2) * (h / 2));
    cu.fill((128 + (index % 64) as i32 - 32) as u8);
    cv.fill((128 - (index % 64) as i32 + 32) as u8);
}

/// Reads the frame number back from a decoded luma plane; `None` if the band
/// is not there (not a test-pattern picture).
pub fn read_frame_number(y: &[u8], width: u32, stride: usize) -> Option<u64> {
    let block = block_size(width);
    let mut n = 0u64;
    for bit in 0..BITS as usize {
        let x0 = 2 + bit * block;
        // Average the inner half of the block, away from blocking artefacts.
        let (lo, hi) = (block / 4, block - block / 4);
        let mut sum = 0u64;
        let mut count = 0u64;
        for row in (2 + lo)..(2 + hi) {
            for col in (x0 + lo)..(x0 + hi) {
                sum += *y.get(row * stride + col)? as u64;
                count += 1;
            }
        }
        let mean = sum / count.max(1);
        let on = match mean {
            0..=80 => true,
            170..=255 => false,
            _ => return None,
        };
        n = (n << 1) | on as u64;
    }
    Some(n)
}

impl FrameSource for TestPattern {
    fn format(&self) -> VideoFormat {
        self.format
    }

    fn next_frame(&mut self, mut buf: Vec<u8>) -> Result<Option<RawFrame>, SourceError> {
        if self.paced {
            pace(self.start, self.format.fps, self.next);
        }
        render_into(self.format.width, self.format.height, self.next, &mut buf);
        let frame = RawFrame {
            index: self.next,
            i420: buf,
            captured_us: None,
        };
        self.next += 1;
        Ok(Some(frame))
    }

    fn is_live(&self) -> bool {
        self.paced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_number_round_trips_through_pixels() {
        for (w, h) in [(1280, 720), (320, 240), (1920, 1080)] {
            for index in [0, 1, 29, 4711, u32::MAX as u64] {
                let pic = render(w, h, index);
                assert_eq!(
                    read_frame_number(&pic, w, w as usize),
                    Some(index),
                    "{w}x{h}"
                );
            }
        }
    }

    #[test]
    fn a_flat_picture_has_no_frame_number() {
        let grey = vec![128u8; 320 * 240];
        assert_eq!(read_frame_number(&grey, 320, 320), None);
    }

    #[test]
    fn consecutive_frames_differ() {
        assert_ne!(render(320, 240, 1), render(320, 240, 2));
    }
}
