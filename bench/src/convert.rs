//! `convert`: CPU cost of camera pixel formats -> I420 per 720p frame, ours
//! (`camfleet_agent::source::convert`) against ffmpeg's (swscale; for MJPEG
//! its decoder plus swscale), on the same ffmpeg-made frames.
//!
//! Ours: thread CPU time of converting frames already in memory, `PASSES`
//! times over, least of `reps` runs. ffmpeg: child user CPU time (`wait4`) of a
//! `-threads 1` run converting the same frames (`-stream_loop`, also
//! `PASSES` times) to yuv420p into the null muxer, minus a baseline run on
//! the same input without the conversion; least of `reps` runs each.

use crate::measure::{ffmpeg, thread_cpu, wait_with_user_sys};
use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_agent::source::convert::{nv12_to_i420, yuyv_to_i420, MjpegDecoder};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

pub struct Args {
    pub frames: u32,
    pub reps: u32,
    pub work: PathBuf,
}

const W: u32 = 1280;
const H: u32 = 720;
/// Each run converts the frames this many times over: ffmpeg's per-frame
/// cost is a small difference of two process totals, and more frames make
/// it rise above the noise.
const PASSES: u32 = 10;

fn run_ffmpeg(args: &[&str]) -> anyhow::Result<Duration> {
    let child = ffmpeg()
        .args([
            "-loglevel",
            "error",
            "-threads",
            "1",
            "-filter_threads",
            "1",
        ])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .context("run ffmpeg")?;
    // User time only: system time here is mostly page faults of ffmpeg's
    // frame buffers, which vary with memory pressure, not with the work.
    let (status, cpu, _sys) = wait_with_user_sys(child)?;
    if !status.success() {
        bail!("ffmpeg {args:?} failed: {status}");
    }
    Ok(cpu)
}

fn least(reps: u32, mut run: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..reps {
        best = best.min(run()?);
    }
    Ok(best)
}

/// ffmpeg input arguments for a raw file of `pix_fmt` frames.
fn raw_input(pix_fmt: &str, path: &Path) -> Vec<String> {
    [
        "-stream_loop",
        &(PASSES - 1).to_string(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        pix_fmt,
        "-s",
        &format!("{W}x{H}"),
        "-i",
        path.to_string_lossy().as_ref(),
    ]
    .map(String::from)
    .to_vec()
}

fn to_i420_null(mut input: Vec<String>) -> Vec<String> {
    input.extend(["-pix_fmt", "yuv420p", "-f", "null", "-"].map(String::from));
    input
}

pub fn run(args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let dir = args.work.join("convert");
    std::fs::create_dir_all(&dir)?;
    let n = args.frames.to_string();
    let source = format!("testsrc2=size={W}x{H}:rate=30");
    for pix_fmt in ["yuyv422", "nv12", "yuv420p"] {
        let out = dir.join(format!("frames.{pix_fmt}"));
        run_ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            &source,
            "-frames:v",
            &n,
            "-pix_fmt",
            pix_fmt,
            "-f",
            "rawvideo",
            out.to_string_lossy().as_ref(),
        ])?;
    }
    let pattern = dir.join("frame%04d.jpg");
    run_ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &source,
        "-frames:v",
        &n,
        "-c:v",
        "mjpeg",
        "-pix_fmt",
        "yuvj422p",
        "-q:v",
        "3",
        "-huffman",
        "default",
        "-f",
        "image2",
        pattern.to_string_lossy().as_ref(),
    ])?;

    let mut table = Table::new(
        format!(
            "Pixel conversion to I420, {W}x{H}, CPU ms per frame ({} frames x {PASSES} passes, least of {} runs)",
            args.frames, args.reps
        ),
        &[
            "format",
            "camfleet ms/frame",
            "ffmpeg ms/frame",
            "ffmpeg / camfleet",
        ],
    );
    let per_frame = |d: Duration| d.as_secs_f64() * 1000.0 / (args.frames * PASSES) as f64;
    let ffmpeg_cost = |convert: Vec<String>, baseline: Vec<String>| -> anyhow::Result<Duration> {
        let run = |a: &[String]| run_ffmpeg(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let theirs = least(args.reps, || run(&convert))?;
        Ok(theirs.saturating_sub(least(args.reps, || run(&baseline))?))
    };
    let mut out = Vec::new();
    let mut row = |label: &str, ours: Duration, theirs: Duration| {
        table.row(vec![
            label.into(),
            f(per_frame(ours), 3),
            f(per_frame(theirs), 3),
            f(theirs.as_secs_f64() / ours.as_secs_f64(), 2),
        ])
    };

    for (label, pix_fmt) in [("YUYV", "yuyv422"), ("NV12", "nv12")] {
        let path = dir.join(format!("frames.{pix_fmt}"));
        let data = std::fs::read(&path)?;
        let len = data.len() / args.frames as usize;
        let ours = least(args.reps, || {
            let t = thread_cpu();
            for frame in (0..PASSES).flat_map(|_| data.chunks_exact(len)) {
                match pix_fmt {
                    "yuyv422" => yuyv_to_i420(frame, 2 * W as usize, W, H, &mut out)?,
                    _ => nv12_to_i420(frame, W as usize, W, H, &mut out)?,
                }
            }
            Ok(thread_cpu() - t)
        })?;
        // Baseline: the same run with the output in the input's pixel
        // format, so swscale is not inserted.
        let mut baseline = raw_input(pix_fmt, &path);
        baseline.extend(["-pix_fmt", pix_fmt, "-f", "null", "-"].map(String::from));
        let theirs = ffmpeg_cost(to_i420_null(raw_input(pix_fmt, &path)), baseline)?;
        row(label, ours, theirs);
    }

    let jpegs: Vec<Vec<u8>> = (1..=args.frames)
        .map(|i| std::fs::read(dir.join(format!("frame{i:04}.jpg"))))
        .collect::<Result<_, _>>()?;
    let mut decoder = MjpegDecoder::default();
    let ours = least(args.reps, || {
        let t = thread_cpu();
        for jpeg in (0..PASSES).flat_map(|_| &jpegs) {
            decoder.decode_to_i420(jpeg, W, H, &mut out)?;
        }
        Ok(thread_cpu() - t)
    })?;
    let input: Vec<String> = [
        "-stream_loop",
        &(PASSES - 1).to_string(),
        "-f",
        "image2",
        "-framerate",
        "30",
        "-i",
        pattern.to_string_lossy().as_ref(),
    ]
    .map(String::from)
    .to_vec();
    // Baseline: reading and demuxing the JPEGs without decoding them.
    let mut baseline = input.clone();
    baseline.extend(["-c:v", "copy", "-f", "null", "-"].map(String::from));
    let theirs = ffmpeg_cost(to_i420_null(input), baseline)?;
    row("MJPEG (decode + convert)", ours, theirs);

    table.note("Frames: ffmpeg testsrc2; MJPEG 4:2:2 at -q:v 3 with the standard Huffman tables, as UVC cameras send.");
    table.note(
        "ffmpeg: user CPU of -threads 1 -filter_threads 1 runs, minus a baseline run on the same input without \
         the conversion (raw: output in the input's pixel format, no swscale; MJPEG: -c:v copy, no decoding).",
    );
    table.note("Ratio > 1: camfleet is cheaper than ffmpeg. Conversion quality is checked in agent/tests/convert_psnr.rs.");
    table.emit(results)
}
