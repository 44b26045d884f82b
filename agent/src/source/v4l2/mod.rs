//! V4L2 capture (docs/v4l2.md).
//!
//! The ioctl layer is the [`V4l2Device`] / [`V4l2Opener`] pair of traits:
//! [`real`] implements them with the `v4l` crate (memory-mapped streaming),
//! tests with a fake camera that can be unplugged and replugged. Everything
//! above them (negotiation in [`negotiate`], conversion, the open / stream /
//! lost / reopen state machine in [`V4l2Source`], [`probe`]) is ours and runs
//! the same against either.

pub mod negotiate;
pub mod probe;
pub mod real;

#[cfg(test)]
mod fake;

use super::convert::{self, ConvertError, MjpegDecoder};
use super::{FrameSource, RawFrame, SourceError, VideoFormat};
use camfleet_shared::config::V4l2PixelFormat;
use camfleet_shared::wire::Rational;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use probe::{probe, ProbeReport};

/// A V4L2 pixel format code (`YUYV`, `NV12`, `MJPG`, ...).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FourCc(pub [u8; 4]);

impl FourCc {
    pub const YUYV: FourCc = FourCc(*b"YUYV");
    pub const NV12: FourCc = FourCc(*b"NV12");
    pub const MJPG: FourCc = FourCc(*b"MJPG");

    /// The format we convert from, if we can.
    pub fn supported(self) -> Option<V4l2PixelFormat> {
        match self {
            FourCc::YUYV => Some(V4l2PixelFormat::Yuyv),
            FourCc::NV12 => Some(V4l2PixelFormat::Nv12),
            FourCc::MJPG => Some(V4l2PixelFormat::Mjpeg),
            _ => None,
        }
    }

    pub fn of(format: V4l2PixelFormat) -> FourCc {
        match format {
            V4l2PixelFormat::Yuyv => FourCc::YUYV,
            V4l2PixelFormat::Nv12 => FourCc::NV12,
            V4l2PixelFormat::Mjpeg => FourCc::MJPG,
        }
    }
}

impl fmt::Display for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            let c = if b.is_ascii_graphic() { b as char } else { '?' };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FourCc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A frame interval (seconds per frame), as V4L2 states rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Interval {
    pub num: u32,
    pub den: u32,
}

impl Interval {
    pub fn per_second(fps: u32) -> Interval {
        Interval { num: 1, den: fps }
    }

    pub fn fps(&self) -> f64 {
        if self.num == 0 {
            0.0
        } else {
            self.den as f64 / self.num as f64
        }
    }

    /// Same rate, whatever the fraction's terms (1/30 == 2/60).
    pub fn same_rate(&self, other: &Interval) -> bool {
        self.num as u64 * other.den as u64 == other.num as u64 * self.den as u64
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fps = self.fps();
        if fps.fract() == 0.0 {
            write!(f, "{fps:.0}")
        } else {
            write!(f, "{fps:.2}")
        }
    }
}

/// What `VIDIOC_QUERYCAP` says.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCaps {
    pub driver: String,
    pub card: String,
    pub bus: String,
    /// Capability flag names (`VIDEO_CAPTURE`, `STREAMING`, ...).
    pub capabilities: Vec<String>,
    /// Single-planar video capture node (a UVC camera's second node is metadata only).
    pub video_capture: bool,
    /// Supports streaming I/O (needed for mmap buffers).
    pub streaming: bool,
}

/// One `VIDIOC_ENUM_FMT` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatDesc {
    pub fourcc: FourCc,
    pub description: String,
}

/// `VIDIOC_ENUM_FRAMESIZES` for one format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameSizes {
    Discrete(Vec<(u32, u32)>),
    /// Any size in the ranges on the step grid (continuous = step 1).
    Stepwise {
        min_width: u32,
        max_width: u32,
        step_width: u32,
        min_height: u32,
        max_height: u32,
        step_height: u32,
    },
}

/// `VIDIOC_ENUM_FRAMEINTERVALS` for one format and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameIntervals {
    Discrete(Vec<Interval>),
    /// Any interval from `min` (fastest) to `max` (slowest).
    Stepwise {
        min: Interval,
        max: Interval,
    },
}

/// The format the driver set (`VIDIOC_S_FMT`'s answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActualFormat {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    /// Bytes per row of the (first) plane; 0 for compressed formats.
    pub stride: u32,
}

/// One dequeued buffer.
pub struct CapturedBuffer<'a> {
    /// The `bytesused` part of the buffer.
    pub bytes: &'a [u8],
    /// Driver timestamp in µs of CLOCK_MONOTONIC; `None` when the driver's
    /// timestamps are not monotonic (copied from elsewhere, or unknown).
    pub monotonic_us: Option<u64>,
    /// Driver frame counter; a jump means the driver dropped frames.
    pub sequence: u32,
}

/// The ioctls we use, on one open device node. Kept thin so negotiation and
/// the state machine are tested without hardware.
pub trait V4l2Device: Send {
    fn caps(&self) -> std::io::Result<DeviceCaps>;
    fn formats(&self) -> std::io::Result<Vec<FormatDesc>>;
    fn sizes(&self, fourcc: FourCc) -> std::io::Result<FrameSizes>;
    fn intervals(&self, fourcc: FourCc, width: u32, height: u32)
        -> std::io::Result<FrameIntervals>;
    fn set_format(
        &mut self,
        fourcc: FourCc,
        width: u32,
        height: u32,
    ) -> std::io::Result<ActualFormat>;
    /// Sets the frame interval; returns the one the driver chose.
    fn set_interval(&mut self, interval: Interval) -> std::io::Result<Interval>;
    /// Allocates and maps `buffers` buffers, queues them and starts streaming.
    fn start_stream(&mut self, buffers: u32) -> std::io::Result<()>;
    /// Blocks for the next filled buffer (re-queueing the previous one).
    fn next_buffer(&mut self) -> std::io::Result<CapturedBuffer<'_>>;
    /// Stops streaming and releases the buffers.
    fn stop(&mut self);
}

/// Opens device nodes and lists them.
pub trait V4l2Opener: Send + Sync {
    fn open(&self, path: &Path) -> std::io::Result<Box<dyn V4l2Device>>;
    /// Candidate nodes (`/dev/video*`), sorted.
    fn list(&self) -> Vec<PathBuf>;
}

/// Why a V4L2 device cannot be used; always shown after the device path.
#[derive(Debug, thiserror::Error)]
pub enum V4l2Error {
    #[error("not found")]
    NotFound,
    #[error("permission denied (add the agent's user to the 'video' group)")]
    PermissionDenied,
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("{card:?} is not a video capture device (capabilities: {caps})")]
    NotCapture { card: String, caps: String },
    #[error("{op}: {error}")]
    Ioctl {
        op: &'static str,
        error: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("unplugged or stopped answering ({0}); the source reopens it when it returns")]
    Lost(std::io::Error),
    #[error("came back with {now}, was {before}; restart the camera to take the new format")]
    FormatChanged { before: String, now: String },
    #[error("{0}")]
    Convert(ConvertError),
    #[error("{count} bad frames in a row (last: {last}); reopening the device")]
    BadFrames { count: u32, last: ConvertError },
}

/// Consecutive undecodable MJPEG frames after which the source gives up and
/// reports an error (the pipeline then restarts it) rather than skip forever.
pub const MAX_BAD_FRAMES_IN_A_ROW: u32 = 100;

impl V4l2Error {
    fn from_open(error: std::io::Error) -> V4l2Error {
        match error.kind() {
            std::io::ErrorKind::NotFound => V4l2Error::NotFound,
            std::io::ErrorKind::PermissionDenied => V4l2Error::PermissionDenied,
            _ if error.raw_os_error() == Some(libc::ENODEV) => V4l2Error::NotFound,
            _ => V4l2Error::Open(error),
        }
    }
}

/// What `open` asks of the device (from the camera's config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub pixel_format: Option<V4l2PixelFormat>,
    pub exact: bool,
    pub buffers: u32,
}

/// A streaming V4L2 camera as a [`FrameSource`].
///
/// States: streaming (`device` is `Some`) and lost (`None`, after a read
/// error such as an unplug). `next_frame` in the lost state reopens and
/// renegotiates; if the device is still absent it returns the error again,
/// so the pipeline can back off and retry, or drop the source and call
/// [`super::open`] later: both work after a replug.
pub struct V4l2Source {
    opener: Arc<dyn V4l2Opener>,
    path: PathBuf,
    request: Request,
    device: Option<Box<dyn V4l2Device>>,
    actual: ActualFormat,
    format: VideoFormat,
    mjpeg: MjpegDecoder,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC in µs, measured at stream start.
    wall_offset_us: i64,
    next: u64,
    last_sequence: Option<u32>,
    skipped: Arc<AtomicU64>,
    bad_in_a_row: u32,
}

impl V4l2Source {
    /// Opens the real device at `path`.
    pub fn open(path: &Path, request: Request) -> Result<Self, SourceError> {
        Self::open_with(Arc::new(real::RealOpener), path, request)
    }

    pub fn open_with(
        opener: Arc<dyn V4l2Opener>,
        path: &Path,
        request: Request,
    ) -> Result<Self, SourceError> {
        let (device, actual, interval) =
            start(opener.as_ref(), path, &request).map_err(|error| err(path, error))?;
        Ok(Self {
            opener,
            path: path.to_path_buf(),
            request,
            device: Some(device),
            actual,
            format: video_format(&actual, interval),
            mjpeg: MjpegDecoder::default(),
            wall_offset_us: wall_offset_us(),
            next: 0,
            last_sequence: None,
            skipped: Arc::new(AtomicU64::new(0)),
            bad_in_a_row: 0,
        })
    }

    /// Bad MJPEG frames skipped so far (also counted in
    /// `camfleet_agent_mjpeg_frames_skipped_total{device}`).
    pub fn skipped_frames(&self) -> Arc<AtomicU64> {
        self.skipped.clone()
    }

    /// The format in use, as the driver set it.
    pub fn actual_format(&self) -> ActualFormat {
        self.actual
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        let (device, actual, interval) = start(self.opener.as_ref(), &self.path, &self.request)
            .map_err(|error| err(&self.path, error))?;
        let now = video_format(&actual, interval);
        if actual != self.actual || now != self.format {
            return Err(err(
                &self.path,
                V4l2Error::FormatChanged {
                    before: describe(&self.actual, self.format.fps),
                    now: describe(&actual, now.fps),
                },
            ));
        }
        tracing::info!(device = %self.path.display(), "V4L2 device is back; capturing again");
        self.device = Some(device);
        self.wall_offset_us = wall_offset_us();
        self.last_sequence = None;
        Ok(())
    }
}

fn err(path: &Path, error: V4l2Error) -> SourceError {
    SourceError::V4l2 {
        device: path.display().to_string(),
        error,
    }
}

fn describe(actual: &ActualFormat, fps: Rational) -> String {
    format!(
        "{}x{} {} @ {:.2} fps",
        actual.width,
        actual.height,
        actual.fourcc,
        fps.as_f64()
    )
}

fn video_format(actual: &ActualFormat, interval: Interval) -> VideoFormat {
    VideoFormat {
        width: actual.width,
        height: actual.height,
        fps: Rational::new(interval.den, interval.num).unwrap_or(Rational { num: 30, den: 1 }),
    }
}

/// Open -> check caps -> negotiate -> set format and rate -> start streaming.
fn start(
    opener: &dyn V4l2Opener,
    path: &Path,
    request: &Request,
) -> Result<(Box<dyn V4l2Device>, ActualFormat, Interval), V4l2Error> {
    let mut device = opener.open(path).map_err(V4l2Error::from_open)?;
    let caps = device.caps().map_err(|error| V4l2Error::Ioctl {
        op: "VIDIOC_QUERYCAP",
        error,
    })?;
    if !caps.video_capture || !caps.streaming {
        return Err(V4l2Error::NotCapture {
            card: caps.card,
            caps: caps.capabilities.join(" "),
        });
    }
    let plan = negotiate::choose(device.as_ref(), request)?;
    for note in &plan.notes {
        tracing::info!(device = %path.display(), "{note}");
    }
    let actual = device
        .set_format(plan.fourcc, plan.width, plan.height)
        .map_err(|error| V4l2Error::Ioctl {
            op: "VIDIOC_S_FMT",
            error,
        })?;
    let interval = device
        .set_interval(plan.interval)
        .map_err(|error| V4l2Error::Ioctl {
            op: "VIDIOC_S_PARM",
            error,
        })?;
    negotiate::accept(&plan, &actual, interval, request, path)?;
    device
        .start_stream(request.buffers)
        .map_err(|error| V4l2Error::Ioctl {
            op: "VIDIOC_STREAMON",
            error,
        })?;
    Ok((device, actual, interval))
}

/// CLOCK_REALTIME - CLOCK_MONOTONIC, in µs: added to a driver timestamp
/// (monotonic) it gives wall-clock time.
fn wall_offset_us() -> i64 {
    fn now_us(clock: libc::clockid_t) -> i64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec; both clocks exist on every Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        // time_t and c_long are 32-bit on armhf (Debian 12): widen before
        // scaling, or seconds * 10^6 overflows there.
        #[allow(clippy::useless_conversion)] // a no-op on 64-bit targets
        let (sec, nsec) = (i64::from(ts.tv_sec), i64::from(ts.tv_nsec));
        sec * 1_000_000 + nsec / 1000
    }
    // Read monotonic on both sides of realtime to halve the read skew.
    let m1 = now_us(libc::CLOCK_MONOTONIC);
    let r = now_us(libc::CLOCK_REALTIME);
    let m2 = now_us(libc::CLOCK_MONOTONIC);
    r - (m1 + m2) / 2
}

impl FrameSource for V4l2Source {
    fn format(&self) -> VideoFormat {
        self.format
    }

    fn next_frame(&mut self, mut pic: Vec<u8>) -> Result<Option<RawFrame>, SourceError> {
        if self.device.is_none() {
            self.reopen()?;
        }
        loop {
            let device = self.device.as_mut().expect("reopened above");
            let buffer = match device.next_buffer() {
                Ok(b) => b,
                Err(error) => {
                    if let Some(mut d) = self.device.take() {
                        d.stop();
                    }
                    return Err(err(&self.path, V4l2Error::Lost(error)));
                }
            };
            if let Some(last) = self.last_sequence {
                let gap = buffer.sequence.wrapping_sub(last).wrapping_sub(1);
                if gap > 0 && gap < u32::MAX / 2 {
                    metrics::counter!("camfleet_agent_v4l2_frames_dropped_by_driver_total",
                        "device" => self.path.display().to_string())
                    .increment(gap as u64);
                }
            }
            self.last_sequence = Some(buffer.sequence);
            let (w, h, stride) = (
                self.actual.width,
                self.actual.height,
                self.actual.stride as usize,
            );
            let converted = match self.actual.fourcc {
                FourCc::YUYV => convert::yuyv_to_i420(buffer.bytes, stride, w, h, &mut pic),
                FourCc::NV12 => convert::nv12_to_i420(buffer.bytes, stride, w, h, &mut pic),
                _ => self.mjpeg.decode_to_i420(buffer.bytes, w, h, &mut pic),
            };
            let captured_us = buffer
                .monotonic_us
                .map(|m| (m as i64 + self.wall_offset_us).max(0) as u64);
            match converted {
                Ok(()) => self.bad_in_a_row = 0,
                Err(e @ (ConvertError::Jpeg(_) | ConvertError::JpegSize { .. })) => {
                    // A damaged JPEG is one bad frame, not a broken camera.
                    let n = self.skipped.fetch_add(1, Ordering::Relaxed) + 1;
                    metrics::counter!("camfleet_agent_mjpeg_frames_skipped_total",
                        "device" => self.path.display().to_string())
                    .increment(1);
                    tracing::warn!(device = %self.path.display(), skipped = n, "skipping frame: {e}");
                    self.bad_in_a_row += 1;
                    if self.bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW {
                        let count = std::mem::take(&mut self.bad_in_a_row);
                        if let Some(mut d) = self.device.take() {
                            d.stop();
                        }
                        return Err(err(&self.path, V4l2Error::BadFrames { count, last: e }));
                    }
                    continue;
                }
                Err(e) => return Err(err(&self.path, V4l2Error::Convert(e))),
            }
            let frame = RawFrame {
                index: self.next,
                i420: pic,
                captured_us,
            };
            self.next += 1;
            return Ok(Some(frame));
        }
    }

    fn is_live(&self) -> bool {
        true
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        if let Some(mut d) = self.device.take() {
            d.stop();
        }
    }
}

#[cfg(test)]
mod tests;
