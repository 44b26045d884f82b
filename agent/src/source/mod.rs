//! Frame sources: where raw I420 pictures come from.
//!
//! A source is synchronous and runs on its own thread; it paces itself (a live
//! camera is paced by the sensor, a file or test pattern by a timer) unless
//! configured `unpaced`. Implementations: a test pattern, Y4M files and V4L2
//! cameras (with `convert` turning camera pixel formats into I420).

pub mod convert;
pub mod test_pattern;
pub mod v4l2;
pub mod y4m;

use camfleet_shared::config::SourceConfig;
use camfleet_shared::wire::Rational;

/// Geometry and rate of a source's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoFormat {
    pub width: u32,
    pub height: u32,
    pub fps: Rational,
}

impl VideoFormat {
    /// Bytes of one I420 picture.
    pub fn i420_len(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        w * h + 2 * (w / 2) * (h / 2)
    }
}

/// One raw picture, planar I420 (Y, then U, then V, no padding).
#[derive(Clone, Debug)]
pub struct RawFrame {
    /// Index from the start of this source (0, 1, 2, ...).
    pub index: u64,
    pub i420: Vec<u8>,
    /// Wall-clock capture time (µs since the Unix epoch) when the source knows
    /// it better than "now" (a V4L2 buffer timestamp mapped to the wall
    /// clock); `None` = stamped by the pipeline as it receives the frame.
    pub captured_us: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: not a usable Y4M file: {reason}")]
    Y4m { path: String, reason: String },
    #[error("device {device}: {error}")]
    V4l2 {
        device: String,
        error: v4l2::V4l2Error,
    },
}

pub trait FrameSource: Send {
    fn format(&self) -> VideoFormat;
    /// The next frame, or `None` at the end of a finite source. `buf` is a
    /// recycled picture buffer (any length) to fill, so a steady stream
    /// allocates nothing per frame.
    fn next_frame(&mut self, buf: Vec<u8>) -> Result<Option<RawFrame>, SourceError>;
    /// True if the source must run at its own rate (a live camera): the
    /// pipeline then drops frames rather than stall it.
    fn is_live(&self) -> bool;
}

/// Opens the source a camera's config names.
pub fn open(config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
    Ok(match config {
        SourceConfig::TestPattern {
            width,
            height,
            fps,
            unpaced,
        } => Box::new(test_pattern::TestPattern::new(
            *width,
            *height,
            Rational::new(*fps, 1).expect("validated fps > 0"),
            !unpaced,
        )),
        SourceConfig::Y4m {
            path,
            loop_file,
            unpaced,
        } => Box::new(y4m::Y4mFile::open(path, *loop_file, !unpaced)?),
        SourceConfig::V4l2 {
            device,
            width,
            height,
            fps,
            pixel_format,
            exact,
            buffers,
        } => Box::new(v4l2::V4l2Source::open(
            device,
            v4l2::Request {
                width: *width,
                height: *height,
                fps: *fps,
                pixel_format: *pixel_format,
                exact: *exact,
                buffers: *buffers,
            },
        )?),
    })
}

/// Sleeps until frame `index` is due, measured from `start`.
pub(crate) fn pace(start: std::time::Instant, fps: Rational, index: u64) {
    let due = start
        + std::time::Duration::from_nanos(
            (index as u128 * 1_000_000_000 * fps.den as u128 / fps.num as u128) as u64,
        );
    let now = std::time::Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}
