//! A fake camera behind the ioctl traits: a table of modes, scripted frame
//! payloads, and a plug that tests pull and push back.

use super::*;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Mutex;

/// Payload of frame `sequence` for the format the driver set.
pub type Payload = Box<dyn FnMut(u32, &ActualFormat) -> Vec<u8> + Send>;

pub struct FakeState {
    pub plugged: bool,
    /// Bumped by each replug: handles opened before it stay dead, as a real
    /// fd does after the kernel removed the device.
    pub generation: u32,
    pub caps: DeviceCaps,
    /// Formats in the driver's order, each with its sizes and, per size, rates.
    pub modes: Vec<(FourCc, FrameSizes, FrameIntervals)>,
    /// Per (format, width, height) rates overriding the format's default.
    pub rates_at: HashMap<(FourCc, u32, u32), FrameIntervals>,
    /// What S_FMT does to a request (a driver may adjust it); default: accept.
    pub adjust: Option<fn(ActualFormat) -> ActualFormat>,
    /// Scripted payloads used first; then `payload` builds them.
    pub scripted: VecDeque<Vec<u8>>,
    pub payload: Payload,
    pub opens: u32,
    pub streaming: bool,
    /// Sleep one frame interval per buffer, as a camera does.
    pub paced: bool,
    /// Pull the plug when this many more buffers have been served.
    pub unplug_after: Option<u32>,
}

#[derive(Clone)]
pub struct FakeCamera(pub Arc<Mutex<FakeState>>);

pub fn capture_caps(card: &str) -> DeviceCaps {
    DeviceCaps {
        driver: "fake".into(),
        card: card.into(),
        bus: "usb-fake-1".into(),
        capabilities: vec!["VIDEO_CAPTURE".into(), "STREAMING".into()],
        video_capture: true,
        streaming: true,
    }
}

/// A flat picture in the set format: Y = 81, U = 90, V = 240 (BT.601 red).
pub fn flat_payload(_seq: u32, f: &ActualFormat) -> Vec<u8> {
    let (w, h) = (f.width as usize, f.height as usize);
    match f.fourcc {
        FourCc::YUYV => [81u8, 90, 81, 240].repeat(w * h / 2),
        FourCc::NV12 => {
            let mut v = vec![81u8; w * h];
            v.extend([90u8, 240].repeat(w * h / 4));
            v
        }
        _ => b"not a jpeg".to_vec(),
    }
}

impl FakeCamera {
    pub fn new(modes: Vec<(FourCc, FrameSizes, FrameIntervals)>) -> Self {
        FakeCamera(Arc::new(Mutex::new(FakeState {
            plugged: true,
            generation: 0,
            caps: capture_caps("Fake Cam"),
            modes,
            rates_at: HashMap::new(),
            adjust: None,
            scripted: VecDeque::new(),
            payload: Box::new(flat_payload),
            opens: 0,
            streaming: false,
            paced: false,
            unplug_after: None,
        })))
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    pub fn unplug(&self) {
        self.state().plugged = false;
    }

    pub fn replug(&self) {
        let mut s = self.state();
        s.plugged = true;
        s.generation += 1;
    }
}

pub fn discrete(sizes: &[(u32, u32)]) -> FrameSizes {
    FrameSizes::Discrete(sizes.to_vec())
}

pub fn rates(fps: &[u32]) -> FrameIntervals {
    FrameIntervals::Discrete(fps.iter().map(|&f| Interval::per_second(f)).collect())
}

/// Cameras by path.
#[derive(Default, Clone)]
pub struct FakeOpener(pub Arc<Mutex<HashMap<PathBuf, FakeCamera>>>);

impl FakeOpener {
    pub fn with(path: &str, camera: &FakeCamera) -> Self {
        let o = FakeOpener::default();
        o.0.lock()
            .unwrap()
            .insert(PathBuf::from(path), camera.clone());
        o
    }
}

impl V4l2Opener for FakeOpener {
    fn open(&self, path: &Path) -> io::Result<Box<dyn V4l2Device>> {
        let cams = self.0.lock().unwrap();
        let cam = cams
            .get(path)
            .filter(|c| c.state().plugged)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let generation = {
            let mut s = cam.state();
            s.opens += 1;
            s.generation
        };
        Ok(Box::new(FakeDevice {
            camera: cam.clone(),
            generation,
            format: None,
            interval: None,
            sequence: 0,
            buf: Vec::new(),
            start_us: 0,
        }))
    }

    fn list(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.0.lock().unwrap().keys().cloned().collect();
        v.sort();
        v
    }
}

pub struct FakeDevice {
    camera: FakeCamera,
    generation: u32,
    format: Option<ActualFormat>,
    interval: Option<Interval>,
    sequence: u32,
    buf: Vec<u8>,
    /// CLOCK_MONOTONIC at stream start, µs: buffer timestamps count from it.
    start_us: u64,
}

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

impl FakeDevice {
    fn alive(&self) -> io::Result<()> {
        let s = self.camera.state();
        if s.plugged && s.generation == self.generation {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENODEV))
        }
    }
}

impl V4l2Device for FakeDevice {
    fn caps(&self) -> io::Result<DeviceCaps> {
        self.alive()?;
        Ok(self.camera.state().caps.clone())
    }

    fn formats(&self) -> io::Result<Vec<FormatDesc>> {
        self.alive()?;
        Ok(self
            .camera
            .state()
            .modes
            .iter()
            .map(|(f, _, _)| FormatDesc {
                fourcc: *f,
                description: format!("fake {f}"),
            })
            .collect())
    }

    fn sizes(&self, fourcc: FourCc) -> io::Result<FrameSizes> {
        self.alive()?;
        let s = self.camera.state();
        s.modes
            .iter()
            .find(|(f, _, _)| *f == fourcc)
            .map(|(_, sizes, _)| sizes.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn intervals(&self, fourcc: FourCc, width: u32, height: u32) -> io::Result<FrameIntervals> {
        self.alive()?;
        let s = self.camera.state();
        if let Some(r) = s.rates_at.get(&(fourcc, width, height)) {
            return Ok(r.clone());
        }
        s.modes
            .iter()
            .find(|(f, _, _)| *f == fourcc)
            .map(|(_, _, rates)| rates.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn set_format(&mut self, fourcc: FourCc, width: u32, height: u32) -> io::Result<ActualFormat> {
        self.alive()?;
        let stride = match fourcc {
            FourCc::YUYV => 2 * width,
            FourCc::NV12 => width,
            _ => 0,
        };
        let mut actual = ActualFormat {
            fourcc,
            width,
            height,
            stride,
        };
        if let Some(adjust) = self.camera.state().adjust {
            actual = adjust(actual);
        }
        self.format = Some(actual);
        Ok(actual)
    }

    fn set_interval(&mut self, interval: Interval) -> io::Result<Interval> {
        self.alive()?;
        self.interval = Some(interval);
        Ok(interval)
    }

    fn start_stream(&mut self, _buffers: u32) -> io::Result<()> {
        self.alive()?;
        self.camera.state().streaming = true;
        self.start_us = monotonic_us();
        Ok(())
    }

    fn next_buffer(&mut self) -> io::Result<CapturedBuffer<'_>> {
        self.alive()?;
        let format = self.format.expect("set_format before streaming");
        let interval_us = self
            .interval
            .map_or(33_333, |i| 1_000_000 * i.num as u64 / i.den as u64);
        if self.camera.state().paced {
            std::thread::sleep(std::time::Duration::from_micros(interval_us));
        }
        {
            let mut s = self.camera.state();
            match s.unplug_after {
                Some(0) => {
                    s.plugged = false;
                    s.unplug_after = None;
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                Some(n) => s.unplug_after = Some(n - 1),
                None => {}
            }
            self.buf = match s.scripted.pop_front() {
                Some(b) => b,
                None => (s.payload)(self.sequence, &format),
            };
        }
        let seq = self.sequence;
        self.sequence += 1;
        Ok(CapturedBuffer {
            bytes: &self.buf,
            // A perfectly regular sensor, on the kernel's monotonic clock.
            monotonic_us: Some(self.start_us + seq as u64 * interval_us),
            sequence: seq,
        })
    }

    fn stop(&mut self) {
        self.camera.state().streaming = false;
    }
}
