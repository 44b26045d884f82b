//! Negotiation, the open/stream/unplug/replug state machine, timestamps,
//! skipped MJPEG frames and probe, all through the fake camera.

use super::fake::*;
use super::negotiate::{choose, nearest_interval, nearest_size};
use super::*;

fn request(width: u32, height: u32, fps: u32) -> Request {
    Request {
        width,
        height,
        fps,
        pixel_format: None,
        exact: false,
        buffers: 4,
    }
}

/// A typical USB webcam: YUYV is slow at large sizes, MJPEG is fast at all.
fn webcam() -> FakeCamera {
    let cam = FakeCamera::new(vec![
        (
            FourCc::YUYV,
            discrete(&[(640, 480), (1280, 720), (1920, 1080)]),
            rates(&[30, 15]),
        ),
        (
            FourCc::MJPG,
            discrete(&[(640, 480), (1280, 720), (1920, 1080)]),
            rates(&[30, 15]),
        ),
        (FourCc(*b"H264"), discrete(&[(1920, 1080)]), rates(&[30])),
    ]);
    {
        let mut s = cam.state();
        s.rates_at
            .insert((FourCc::YUYV, 1280, 720), rates(&[10, 5]));
        s.rates_at.insert((FourCc::YUYV, 1920, 1080), rates(&[5]));
    }
    cam
}

fn plan_for(cam: &FakeCamera, req: &Request) -> Result<negotiate::Plan, V4l2Error> {
    let dev = FakeOpener::with("/dev/video0", cam)
        .open(Path::new("/dev/video0"))
        .unwrap();
    choose(dev.as_ref(), req)
}

#[test]
fn raw_wins_when_it_has_the_size_and_rate() {
    let p = plan_for(&webcam(), &request(640, 480, 30)).unwrap();
    assert_eq!(
        (p.fourcc, p.width, p.height, p.interval),
        (FourCc::YUYV, 640, 480, Interval::per_second(30))
    );
    assert!(p.notes.is_empty());
}

#[test]
fn mjpeg_wins_when_raw_is_too_slow_at_that_size() {
    let p = plan_for(&webcam(), &request(1280, 720, 30)).unwrap();
    assert_eq!(
        (p.fourcc, p.width, p.interval.fps()),
        (FourCc::MJPG, 1280, 30.0)
    );
    assert!(
        p.notes.is_empty(),
        "exact match needs no note: {:?}",
        p.notes
    );
}

#[test]
fn a_configured_format_is_kept_and_nearest_rate_noted() {
    let mut req = request(1280, 720, 30);
    req.pixel_format = Some(V4l2PixelFormat::Yuyv);
    let p = plan_for(&webcam(), &req).unwrap();
    assert_eq!((p.fourcc, p.interval.fps()), (FourCc::YUYV, 10.0));
    assert!(
        p.notes[0].contains("1280x720 YUYV @ 10 fps"),
        "{:?}",
        p.notes
    );
}

#[test]
fn nearest_size_when_not_exact_and_error_when_exact() {
    let p = plan_for(&webcam(), &request(800, 600, 30)).unwrap();
    assert_eq!((p.fourcc, p.width, p.height), (FourCc::YUYV, 640, 480));
    assert!(
        p.notes[0].contains("asked for 800x600 @ 30 fps"),
        "{:?}",
        p.notes
    );

    let mut req = request(800, 600, 30);
    req.exact = true;
    let e = plan_for(&webcam(), &req).unwrap_err().to_string();
    assert!(
        e.contains("does not support 800x600 @ 30 fps in YUYV, MJPG"),
        "{e}"
    );
    assert!(
        e.contains("it offers: YUYV 640x480 (30, 15 fps), 1280x720 (10, 5 fps)"),
        "{e}"
    );
}

#[test]
fn a_format_the_device_lacks_is_an_error_listing_what_it_has() {
    let mut req = request(640, 480, 30);
    req.pixel_format = Some(V4l2PixelFormat::Nv12);
    let e = plan_for(&webcam(), &req).unwrap_err().to_string();
    assert_eq!(
        e,
        "does not offer pixel format NV12; it offers: YUYV, MJPG, H264"
    );
    let h264_only = FakeCamera::new(vec![(
        FourCc(*b"H264"),
        discrete(&[(640, 480)]),
        rates(&[30]),
    )]);
    let e = plan_for(&h264_only, &request(640, 480, 30))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("offers none of YUYV, NV12, MJPEG; it offers: H264"),
        "{e}"
    );
}

#[test]
fn stepwise_sizes_and_rates_snap_to_the_grid() {
    let even = FrameSizes::Stepwise {
        min_width: 16,
        max_width: 1920,
        step_width: 16,
        min_height: 16,
        max_height: 1080,
        step_height: 8,
    };
    assert_eq!(nearest_size(&even, 1280, 720), Some((1280, 720, 0)));
    assert_eq!(nearest_size(&even, 1003, 2000), Some((1008, 1080, 5 + 920)));
    let range = FrameIntervals::Stepwise {
        min: Interval { num: 1, den: 60 },
        max: Interval { num: 1, den: 1 },
    };
    assert_eq!(
        nearest_interval(&range, 25),
        Some((Interval::per_second(25), 0))
    );
    let (i, d) = nearest_interval(&range, 120).unwrap();
    assert_eq!((i.fps(), d), (60.0, 60_000));
    // 30000/1001 is not 30 fps: a small but non-zero distance.
    let ntsc = FrameIntervals::Discrete(vec![Interval {
        num: 1001,
        den: 30000,
    }]);
    assert_eq!(nearest_interval(&ntsc, 30).unwrap().1, 30);
}

#[test]
fn odd_only_grids_never_yield_odd_sizes() {
    let odd = FrameSizes::Stepwise {
        min_width: 33,
        max_width: 1921,
        step_width: 8,
        min_height: 32,
        max_height: 1080,
        step_height: 2,
    };
    // 33 + 8k is always odd: no usable width at all.
    assert_eq!(nearest_size(&odd, 1280, 720), None);
    let discrete_odd = discrete(&[(641, 480), (1280, 721), (320, 240)]);
    assert_eq!(nearest_size(&discrete_odd, 640, 480), Some((320, 240, 560)));
}

fn wall_now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn open_source(opener: &FakeOpener, req: Request) -> Result<V4l2Source, SourceError> {
    V4l2Source::open_with(Arc::new(opener.clone()), Path::new("/dev/video0"), req)
}

#[test]
fn streams_converted_frames_with_wall_clock_capture_times() {
    let cam = webcam();
    let opener = FakeOpener::with("/dev/video0", &cam);
    let mut src = open_source(&opener, request(640, 480, 30)).unwrap();
    assert!(src.is_live());
    assert_eq!(
        src.format(),
        VideoFormat {
            width: 640,
            height: 480,
            fps: Rational::new(30, 1).unwrap()
        }
    );
    let a = src.next_frame(Vec::new()).unwrap().unwrap();
    let now = wall_now_us();
    let b = src.next_frame(a.i420.clone()).unwrap().unwrap();
    assert_eq!((a.index, b.index), (0, 1));
    assert_eq!(a.i420.len(), src.format().i420_len());
    let (y, u, v) = (a.i420[0], a.i420[640 * 480], a.i420[640 * 480 + 320 * 240]);
    assert_eq!((y, u, v), (81, 90, 240));
    // The driver's monotonic time maps to now-ish wall time, 33.333 ms apart.
    let (ta, tb) = (a.captured_us.unwrap() as i64, b.captured_us.unwrap() as i64);
    assert!((ta - now).abs() < 50_000, "{ta} vs {now}");
    assert_eq!(tb - ta, 33_333);
}

#[test]
fn nv12_device_streams_i420() {
    let cam = FakeCamera::new(vec![(FourCc::NV12, discrete(&[(320, 240)]), rates(&[25]))]);
    let opener = FakeOpener::with("/dev/video0", &cam);
    let mut src = open_source(&opener, request(320, 240, 25)).unwrap();
    let f = src.next_frame(Vec::new()).unwrap().unwrap();
    assert_eq!(src.format().fps, Rational::new(25, 1).unwrap());
    assert_eq!(
        (f.i420[0], f.i420[320 * 240], f.i420[320 * 240 + 160 * 120]),
        (81, 90, 240)
    );
}

#[test]
fn unplug_is_an_error_naming_the_device_and_replug_resumes() {
    let cam = webcam();
    let opener = FakeOpener::with("/dev/video0", &cam);
    let mut src = open_source(&opener, request(640, 480, 30)).unwrap();
    src.next_frame(Vec::new()).unwrap().unwrap();

    cam.unplug();
    let e = src.next_frame(Vec::new()).unwrap_err().to_string();
    assert!(e.starts_with("device /dev/video0: unplugged"), "{e}");
    assert!(!cam.state().streaming, "the lost device is stopped");
    // Still gone: reopening fails, clearly, every time it is tried.
    let e = src.next_frame(Vec::new()).unwrap_err().to_string();
    assert_eq!(e, "device /dev/video0: not found");
    let e = open_source(&opener, request(640, 480, 30))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "device /dev/video0: not found");

    cam.replug();
    let f = src.next_frame(Vec::new()).unwrap().unwrap();
    assert_eq!(f.index, 1, "indexes continue across the replug");
    assert!(cam.state().streaming);
    // A fresh open (the pipeline restarting the source) works as well.
    drop(src);
    let mut again = open_source(&opener, request(640, 480, 30)).unwrap();
    assert_eq!(again.next_frame(Vec::new()).unwrap().unwrap().index, 0);
}

#[test]
fn a_device_back_with_another_format_is_an_error() {
    let cam = webcam();
    let opener = FakeOpener::with("/dev/video0", &cam);
    cam.state().scripted = [ffmpeg_jpeg(1280, 720)].into();
    let mut src = open_source(&opener, request(1280, 720, 30)).unwrap();
    src.next_frame(Vec::new()).unwrap().unwrap();
    cam.unplug();
    assert!(src.next_frame(Vec::new()).is_err());
    // Replugged into a port where MJPEG is gone: 720p30 is no longer possible.
    cam.state().modes.retain(|(f, _, _)| *f != FourCc::MJPG);
    cam.replug();
    let e = src.next_frame(Vec::new()).unwrap_err().to_string();
    assert!(
        e.contains("came back with 1280x720 YUYV @ 10.00 fps, was 1280x720 MJPG @ 30.00 fps"),
        "{e}"
    );
}

#[test]
fn missing_and_non_capture_devices_are_clear_errors() {
    let e = open_source(&FakeOpener::default(), request(640, 480, 30))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "device /dev/video0: not found");

    let meta = webcam();
    meta.state().caps = DeviceCaps {
        capabilities: vec!["META_CAPTURE".into(), "STREAMING".into()],
        video_capture: false,
        ..capture_caps("Fake Cam")
    };
    let e = open_source(
        &FakeOpener::with("/dev/video0", &meta),
        request(640, 480, 30),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(
            "\"Fake Cam\" is not a video capture device (capabilities: META_CAPTURE STREAMING)"
        ),
        "{e}"
    );
}

#[test]
fn a_driver_adjusting_the_request_is_accepted_unless_exact() {
    let cam = webcam();
    cam.state().adjust = Some(|mut f| {
        f.width = 632;
        f.stride = 2 * 632;
        f
    });
    let opener = FakeOpener::with("/dev/video0", &cam);
    let src = open_source(&opener, request(640, 480, 30)).unwrap();
    assert_eq!(src.format().width, 632);
    let mut req = request(640, 480, 30);
    req.exact = true;
    let e = open_source(&opener, req).err().unwrap().to_string();
    assert!(
        e.contains("it set 632x480 YUYV @ 30 fps (exact = true)"),
        "{e}"
    );

    cam.state().adjust = Some(|mut f| {
        f.fourcc = FourCc(*b"RGB3");
        f
    });
    let e = open_source(&opener, request(640, 480, 30))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("driver set pixel format RGB3 when asked for YUYV"),
        "{e}"
    );
}

/// A real JPEG of `width` x `height` made by ffmpeg.
fn ffmpeg_jpeg(width: u32, height: u32) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={width}x{height}:rate=1"))
        .args(["-frames:v", "1", "-c:v", "mjpeg", "-f", "mjpeg", "-"])
        .output()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn bad_mjpeg_frames_are_skipped_and_counted_and_the_stream_goes_on() {
    let cam = FakeCamera::new(vec![(FourCc::MJPG, discrete(&[(320, 240)]), rates(&[30]))]);
    let good = ffmpeg_jpeg(320, 240);
    let truncated = good[..good.len() / 2].to_vec();
    let wrong_size = ffmpeg_jpeg(160, 120);
    cam.state().scripted = [
        good.clone(),
        truncated,
        b"garbage".to_vec(),
        wrong_size,
        good.clone(),
    ]
    .into();
    let opener = FakeOpener::with("/dev/video0", &cam);
    let mut src = open_source(&opener, request(320, 240, 30)).unwrap();
    let skipped = src.skipped_frames();
    let a = src.next_frame(Vec::new()).unwrap().unwrap();
    assert_eq!(skipped.load(Ordering::Relaxed), 0);
    let b = src.next_frame(Vec::new()).unwrap().unwrap();
    assert_eq!(skipped.load(Ordering::Relaxed), 3);
    assert_eq!((a.index, b.index), (0, 1));
    assert_eq!(a.i420, b.i420, "both are the good frame");
    // The skipped frames' time passed: b was captured 4 intervals after a.
    assert_eq!(b.captured_us.unwrap() - a.captured_us.unwrap(), 4 * 33_333);
}

#[test]
fn a_camera_sending_only_bad_frames_becomes_an_error_and_is_reopened() {
    // The default fake MJPEG payload is not a JPEG.
    let cam = FakeCamera::new(vec![(FourCc::MJPG, discrete(&[(320, 240)]), rates(&[30]))]);
    let opener = FakeOpener::with("/dev/video0", &cam);
    let mut src = open_source(&opener, request(320, 240, 30)).unwrap();
    let e = src.next_frame(Vec::new()).unwrap_err().to_string();
    assert!(
        e.starts_with("device /dev/video0: 100 bad frames in a row (last: bad MJPEG frame"),
        "{e}"
    );
    assert_eq!(src.skipped_frames().load(Ordering::Relaxed), 100);
    assert_eq!(cam.state().opens, 1);
    // Good frames again: the next call reopens and streams.
    let good = ffmpeg_jpeg(320, 240);
    cam.state().payload = Box::new(move |_, _| good.clone());
    assert_eq!(src.next_frame(Vec::new()).unwrap().unwrap().index, 0);
    assert_eq!(cam.state().opens, 2);
}

#[test]
fn probe_lists_devices_and_the_ones_it_cannot_open() {
    let opener = FakeOpener::with("/dev/video0", &webcam());
    let gone = webcam();
    gone.unplug();
    opener
        .0
        .lock()
        .unwrap()
        .insert(PathBuf::from("/dev/video1"), gone);
    let report = probe(&opener);
    assert_eq!(report.devices.len(), 2);
    let text = report.to_text();
    assert!(
        text.contains("/dev/video0: Fake Cam (driver fake, bus usb-fake-1)"),
        "{text}"
    );
    assert!(text.contains("    1280x720 @ 10, 5 fps"), "{text}");
    assert!(
        text.contains("  H264 (fake H264) [not supported by camfleet]"),
        "{text}"
    );
    assert!(text.contains("/dev/video1: not found"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["devices"][0]["driver"], "fake");
    assert_eq!(json["devices"][0]["formats"][0]["fourcc"], "YUYV");
    assert_eq!(json["devices"][0]["formats"][0]["sizes"][1]["fps"][0], 10.0);
    assert_eq!(json["devices"][1]["error"], "not found");

    let empty = probe(&FakeOpener::default());
    assert_eq!(
        empty.to_text(),
        "no V4L2 capture devices found (looked for /dev/video*)\n"
    );
    assert_eq!(serde_json::to_string(&empty).unwrap(), r#"{"devices":[]}"#);
}

#[test]
fn video_nodes_are_listed_in_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    for n in ["video10", "video2", "video0", "vbi0", "videoX"] {
        std::fs::write(dir.path().join(n), b"").unwrap();
    }
    let names: Vec<String> = real::list_video_nodes(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["video0", "video2", "video10"]);
}

mod pipeline {
    //! The real `V4l2Source` over the fake camera, through the agent's camera
    //! pipeline (`app::run_with`): an unplug is a failed run that is
    //! restarted once the device is back, and driver timestamps become the
    //! frames' capture times.

    use super::*;
    use crate::camera::SourceOpener;
    use crate::sink::Recorder;
    use crate::spool::SpoolSink;
    use camfleet_shared::clock::SystemClock;
    use camfleet_shared::config::{AgentConfig, SourceConfig, SpoolConfig};
    use std::sync::Mutex;

    /// Opens V4L2 configs on the fake; the camera is plugged back in during
    /// the pipeline's backoff, before the second open.
    struct FakeSources {
        opener: FakeOpener,
        camera: FakeCamera,
        opens: Mutex<u32>,
    }

    impl SourceOpener for FakeSources {
        fn open(&self, config: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
            let SourceConfig::V4l2 {
                device,
                width,
                height,
                fps,
                pixel_format,
                exact,
                buffers,
            } = config
            else {
                unreachable!("v4l2 configs only")
            };
            let mut opens = self.opens.lock().unwrap();
            *opens += 1;
            if *opens == 2 {
                self.camera.replug();
            }
            let request = Request {
                width: *width,
                height: *height,
                fps: *fps,
                pixel_format: *pixel_format,
                exact: *exact,
                buffers: *buffers,
            };
            Ok(Box::new(V4l2Source::open_with(
                Arc::new(self.opener.clone()),
                device,
                request,
            )?))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unplugged_camera_restarts_when_replugged_with_driver_capture_times() {
        let camera = FakeCamera::new(vec![(FourCc::YUYV, discrete(&[(64, 64)]), rates(&[30]))]);
        {
            let mut s = camera.state();
            s.paced = true;
            s.unplug_after = Some(15);
        }
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::from_toml(&format!(
            r#"
            data_dir = "{}"
            kafka = {{ bootstrap_servers = "127.0.0.1:9" }}
            [[camera]]
            id = "s/usb"
            source = {{ kind = "v4l2", device = "/dev/video0", width = 64, height = 64 }}
            max_frames = 40
            "#,
            dir.path().display()
        ))
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        let spool_cfg = SpoolConfig {
            min_free_bytes: 0,
            ..SpoolConfig::default()
        };
        let sink = SpoolSink::open(
            &spool_cfg,
            &dir.path().join("spool"),
            recorder.clone(),
            Arc::new(SystemClock),
        )
        .unwrap();
        let sources = Arc::new(FakeSources {
            opener: FakeOpener::with("/dev/video0", &camera),
            camera: camera.clone(),
            opens: Mutex::new(0),
        });
        let reports = crate::app::run_with(
            config,
            sink,
            Arc::new(SystemClock),
            sources.clone(),
            std::future::pending(),
        )
        .await;

        let frames = recorder.frames.lock().unwrap().clone();
        let report = &reports[0];
        assert_eq!(*sources.opens.lock().unwrap(), 2);
        assert_eq!(report.stats.restarts.get(), 1);
        // A loaded machine may make the pipeline drop a frame while the
        // encoder is busy (counted); every other frame arrives.
        let dropped = report.stats.frames_dropped_busy.get();
        assert_eq!(frames.len() as u64 + dropped, 40);
        assert!(frames.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        let split = frames
            .iter()
            .position(|f| f.epoch != frames[0].epoch)
            .expect("a second run after the replug");
        if dropped == 0 {
            assert_eq!(split, 15, "15 frames before the unplug");
        }
        assert_eq!(frames[split].epoch, frames[0].epoch + 1);
        assert!(frames[0].keyframe && frames[split].keyframe);
        // Capture times are the driver's timestamps mapped to the wall clock:
        // whole frame intervals apart within a run (pipeline stamps would
        // jitter), and near now.
        for run in [&frames[..split], &frames[split..]] {
            assert!(
                run.windows(2).all(|w| {
                    let d = w[1].capture_us - w[0].capture_us;
                    d > 0 && d % 33_333 == 0
                }),
                "{:?}",
                run.iter().map(|f| f.capture_us).collect::<Vec<_>>()
            );
        }
        let now = wall_now_us();
        assert!((frames[39].capture_us as i64 - now).abs() < 1_000_000);
    }
}
