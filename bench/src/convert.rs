//! `convert`: CPU cost of camera pixel formats -> I420 per 720p frame, ours
//! (`camfleet_agent::source::convert`) against ffmpeg's (swscale; for MJPEG
//! its decoder plus swscale), on the same ffmpeg-made frames.
//!
//! Ours: thread CPU time of converting frames already in memory, least of
//! `reps` runs. ffmpeg: child CPU time (`wait4`) of `-threads 1` runs that
//! convert the frames to yuv420p into the null muxer, minus the CPU time of
//! the same run on an input that is yuv420p already (reading, demuxing and
//! process start), least of `reps` runs each.

use crate::measure::{ffmpeg, thread_cpu, wait_with_cpu};
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
    let (status, cpu) = wait_with_cpu(child)?;
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
        "-f",
        "rawvideo",
        "-pix_fmt",
        pix_fmt,
        "-s",
        &format!("{W}x{H}"),
        "-i",
        path.to_str().unwrap(),
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
            out.to_str().unwrap(),
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
        pattern.to_str().unwrap(),
    ])?;

    let baseline = least(args.reps, || {
        run_ffmpeg(
            &to_i420_null(raw_input("yuv420p", &dir.join("frames.yuv420p")))
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
    })?;

    let mut table = Table::new(
        format!(
            "Pixel conversion to I420, {W}x{H}, CPU ms per frame ({} frames, least of {} runs)",
            args.frames, args.reps
        ),
        &[
            "format",
            "camfleet ms/frame",
            "ffmpeg ms/frame",
            "ffmpeg / camfleet",
        ],
    );
    let per_frame = |d: Duration| d.as_secs_f64() * 1000.0 / args.frames as f64;
    let mut out = Vec::new();

    for (label, pix_fmt) in [("YUYV", "yuyv422"), ("NV12", "nv12")] {
        let data = std::fs::read(dir.join(format!("frames.{pix_fmt}")))?;
        let len = data.len() / args.frames as usize;
        let ours = least(args.reps, || {
            let t = thread_cpu();
            for frame in data.chunks_exact(len) {
                match pix_fmt {
                    "yuyv422" => yuyv_to_i420(frame, 2 * W as usize, W, H, &mut out)?,
                    _ => nv12_to_i420(frame, W as usize, W, H, &mut out)?,
                }
            }
            Ok(thread_cpu() - t)
        })?;
        let theirs = least(args.reps, || {
            run_ffmpeg(
                &to_i420_null(raw_input(pix_fmt, &dir.join(format!("frames.{pix_fmt}"))))
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
            )
        })?
        .saturating_sub(baseline);
        table.row(vec![
            label.into(),
            f(per_frame(ours), 3),
            f(per_frame(theirs), 3),
            f(theirs.as_secs_f64() / ours.as_secs_f64(), 2),
        ]);
    }

    let jpegs: Vec<Vec<u8>> = (1..=args.frames)
        .map(|i| std::fs::read(dir.join(format!("frame{i:04}.jpg"))))
        .collect::<Result<_, _>>()?;
    let mut decoder = MjpegDecoder::default();
    let ours = least(args.reps, || {
        let t = thread_cpu();
        for jpeg in &jpegs {
            decoder.decode_to_i420(jpeg, W, H, &mut out)?;
        }
        Ok(thread_cpu() - t)
    })?;
    let theirs = least(args.reps, || {
        run_ffmpeg(&[
            "-f",
            "image2",
            "-framerate",
            "30",
            "-i",
            pattern.to_str().unwrap(),
            "-pix_fmt",
            "yuv420p",
            "-f",
            "null",
            "-",
        ])
    })?
    .saturating_sub(baseline);
    table.row(vec![
        "MJPEG (decode + convert)".into(),
        f(per_frame(ours), 3),
        f(per_frame(theirs), 3),
        f(theirs.as_secs_f64() / ours.as_secs_f64(), 2),
    ]);
    table.note("Frames: ffmpeg testsrc2; MJPEG 4:2:2 at -q:v 3 with the standard Huffman tables, as UVC cameras send.");
    table.note(format!(
        "ffmpeg runs with -threads 1 -filter_threads 1; its baseline (a yuv420p input, no conversion) of {:.3} ms/frame is subtracted.",
        per_frame(baseline)
    ));
    table.note("Ratio > 1: camfleet is cheaper than ffmpeg. Conversion quality is checked in agent/tests/convert_psnr.rs.");
    table.emit(results)
}
