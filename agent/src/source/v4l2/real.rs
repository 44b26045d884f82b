//! [`V4l2Device`] on a real `/dev/video*` node, through the `v4l` crate.
//!
//! Not exercised against hardware in this repository's tests (the build and
//! CI machines have no camera and no V4L2 modules): see docs/v4l2.md.

use super::{
    ActualFormat, CapturedBuffer, DeviceCaps, FormatDesc, FourCc, FrameIntervals, FrameSizes,
    Interval, V4l2Device, V4l2Opener,
};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::{CaptureStream, Stream as _};
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::{Device, Format, Fraction};

/// Opens `/dev/video*` nodes.
pub struct RealOpener;

impl V4l2Opener for RealOpener {
    fn open(&self, path: &Path) -> io::Result<Box<dyn V4l2Device>> {
        let device = Device::with_path(path)?;
        Ok(Box::new(RealDevice {
            device,
            stream: None,
            interval: None,
        }))
    }

    fn list(&self) -> Vec<PathBuf> {
        list_video_nodes(Path::new("/dev"))
    }
}

/// `videoN` entries of `dir`, sorted by N.
pub fn list_video_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

struct RealDevice {
    device: Device,
    // The stream holds its own reference to the file handle, so it may
    // outlive a borrow of `device`.
    stream: Option<Stream<'static>>,
    interval: Option<Interval>,
}

fn fourcc(f: FourCc) -> v4l::FourCC {
    v4l::FourCC::new(&f.0)
}

fn interval(f: Fraction) -> Interval {
    Interval {
        num: f.numerator,
        den: f.denominator,
    }
}

impl V4l2Device for RealDevice {
    fn caps(&self) -> io::Result<DeviceCaps> {
        let caps = self.device.query_caps()?;
        let flags = caps.capabilities;
        Ok(DeviceCaps {
            driver: caps.driver,
            card: caps.card,
            bus: caps.bus,
            capabilities: format!("{flags:?}")
                .split(" | ")
                .map(str::to_string)
                .filter(|s| !s.is_empty())
                .collect(),
            video_capture: flags.contains(CapFlags::VIDEO_CAPTURE),
            streaming: flags.contains(CapFlags::STREAMING),
        })
    }

    fn formats(&self) -> io::Result<Vec<FormatDesc>> {
        Ok(Capture::enum_formats(&self.device)?
            .into_iter()
            .map(|d| FormatDesc {
                fourcc: FourCc(d.fourcc.repr),
                description: d.description,
            })
            .collect())
    }

    fn sizes(&self, f: FourCc) -> io::Result<FrameSizes> {
        let list = Capture::enum_framesizes(&self.device, fourcc(f))?;
        let mut discrete = Vec::new();
        for s in list {
            match s.size {
                FrameSizeEnum::Discrete(d) => discrete.push((d.width, d.height)),
                // A stepwise device reports one entry and nothing else.
                FrameSizeEnum::Stepwise(s) => {
                    return Ok(FrameSizes::Stepwise {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    })
                }
            }
        }
        Ok(FrameSizes::Discrete(discrete))
    }

    fn intervals(&self, f: FourCc, width: u32, height: u32) -> io::Result<FrameIntervals> {
        let list = Capture::enum_frameintervals(&self.device, fourcc(f), width, height)?;
        let mut discrete = Vec::new();
        for i in list {
            match i.interval {
                FrameIntervalEnum::Discrete(d) => discrete.push(interval(d)),
                FrameIntervalEnum::Stepwise(s) => {
                    return Ok(FrameIntervals::Stepwise {
                        min: interval(s.min),
                        max: interval(s.max),
                    })
                }
            }
        }
        Ok(FrameIntervals::Discrete(discrete))
    }

    fn set_format(&mut self, f: FourCc, width: u32, height: u32) -> io::Result<ActualFormat> {
        let set = Capture::set_format(&self.device, &Format::new(width, height, fourcc(f)))?;
        Ok(ActualFormat {
            fourcc: FourCc(set.fourcc.repr),
            width: set.width,
            height: set.height,
            stride: set.stride,
        })
    }

    fn set_interval(&mut self, want: Interval) -> io::Result<Interval> {
        let params = Parameters::new(Fraction::new(want.num, want.den));
        let set = Capture::set_params(&self.device, &params)?;
        // A driver without frame-rate control answers 0/0: it runs at its own rate.
        let got = interval(set.interval);
        let got = if got.num == 0 || got.den == 0 {
            want
        } else {
            got
        };
        self.interval = Some(got);
        Ok(got)
    }

    fn start_stream(&mut self, buffers: u32) -> io::Result<()> {
        let mut stream = Stream::with_buffers(&self.device, Type::VideoCapture, buffers)?;
        // A camera that stops delivering (wedged USB, unplug the driver missed)
        // becomes an error the pipeline can act on instead of a hang.
        let frame = self.interval.map_or(0.0, |i| i.num as f64 / i.den as f64);
        stream.set_timeout(Duration::from_secs_f64(5.0 + 3.0 * frame));
        stream.start()?;
        self.stream = Some(stream);
        Ok(())
    }

    fn next_buffer(&mut self) -> io::Result<CapturedBuffer<'_>> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| io::Error::other("stream not started"))?;
        let (bytes, meta) = CaptureStream::next(stream)?;
        let used = (meta.bytesused as usize).min(bytes.len());
        let monotonic = (meta.flags & BufferFlags::TIMESTAMP_MASK)
            == BufferFlags::TIMESTAMP_MONOTONIC
            && (meta.timestamp.sec > 0 || meta.timestamp.usec > 0);
        Ok(CapturedBuffer {
            bytes: &bytes[..used],
            monotonic_us: monotonic
                .then(|| meta.timestamp.sec as u64 * 1_000_000 + meta.timestamp.usec as u64),
            sequence: meta.sequence,
        })
    }

    fn stop(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            let _ = stream.stop();
            // v4l's Stream panics in drop if STREAMOFF fails with anything but
            // ENODEV; a dying camera must not take the capture thread with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream)));
        }
    }
}

impl Drop for RealDevice {
    fn drop(&mut self) {
        self.stop();
    }
}
