//! `quality`: quality per bit of the agent's encoder settings against x264
//! veryfast/zerolatency (one thread) at 1, 2 and 4 Mbit/s: PSNR-Y and SSIM-Y
//! (ffmpeg's psnr and ssim filters), bytes, and fps per core beside them.
//! Every openh264 variant is the agent's own `H264Encoder` with one
//! `[camera.encoder]` setting changed, so a winner can become the default.

use crate::encode::{x264, Run};
use crate::measure::{psnr_y, ssim_y, thread_cpu};
use crate::table::{f, Table};
use camfleet_agent::encode::H264Encoder;
use camfleet_agent::source::y4m::Y4mFile;
use camfleet_agent::source::FrameSource;
use camfleet_shared::config::{EncoderComplexity, EncoderConfig, EntropyCoding, RateControl};
use std::path::{Path, PathBuf};

pub struct Args {
    pub clips: Vec<PathBuf>,
    pub frames: Option<u64>,
    pub kbps: Vec<u32>,
    pub work: PathBuf,
}

const GOP: u32 = 60;

fn variants(kbps: u32) -> Vec<(&'static str, EncoderConfig)> {
    let base = EncoderConfig {
        bitrate_kbps: kbps,
        keyframe_interval_frames: GOP,
        ..EncoderConfig::default()
    };
    let with = |label, change: fn(&mut EncoderConfig)| {
        let mut config = base.clone();
        change(&mut config);
        (label, config)
    };
    vec![
        (
            "openh264 default (CABAC/Main, complexity low, 1 ref, BG off, bitrate RC)",
            base.clone(),
        ),
        with(
            "CAVLC/Baseline + complexity medium (the old default)",
            |c| {
                c.entropy_coding = EntropyCoding::Cavlc;
                c.complexity = EncoderComplexity::Medium;
            },
        ),
        with("CAVLC/Baseline", |c| {
            c.entropy_coding = EntropyCoding::Cavlc
        }),
        with("complexity medium", |c| {
            c.complexity = EncoderComplexity::Medium
        }),
        with("complexity high", |c| {
            c.complexity = EncoderComplexity::High
        }),
        with("2 reference frames", |c| c.reference_frames = 2),
        with("4 reference frames", |c| c.reference_frames = 4),
        with("adaptive quantisation off", |c| {
            c.adaptive_quantization = false
        }),
        with("scene-change detection on", |c| {
            c.scene_change_detection = true
        }),
        with("background detection on", |c| c.background_detection = true),
        with("rate control quality", |c| {
            c.rate_control = RateControl::Quality
        }),
        with("rate control timestamp", |c| {
            c.rate_control = RateControl::Timestamp
        }),
        with("rate control buffer", |c| {
            c.rate_control = RateControl::Buffer
        }),
    ]
}

fn openh264(
    clip: &Path,
    config: &EncoderConfig,
    frames: Option<u64>,
    out: &Path,
) -> anyhow::Result<Run> {
    let mut src = Y4mFile::open(clip, false, false)?;
    let t = thread_cpu();
    let mut encoder = H264Encoder::new(src.format(), config)?;
    let mut cpu = thread_cpu() - t;
    let mut stream = Vec::new();
    let (mut n, mut buf) = (0u64, Vec::new());
    while frames.is_none_or(|max| n < max) {
        let Some(frame) = src.next_frame(std::mem::take(&mut buf))? else {
            break;
        };
        let t = thread_cpu();
        let out = encoder.encode(frame.index, &frame.i420)?;
        cpu += thread_cpu() - t;
        stream.extend_from_slice(&out.annex_b);
        buf = frame.i420;
        n += 1;
    }
    std::fs::write(out, &stream)?;
    Ok(Run {
        cpu,
        read_cpu: None,
        frames: n,
        bytes: stream.len() as u64,
    })
}

pub fn run(args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let dir = args.work.join("quality");
    std::fs::create_dir_all(&dir)?;
    for clip in &args.clips {
        let name = clip
            .file_stem()
            .map_or("clip".into(), |s| s.to_string_lossy().into_owned());
        let mut table = Table::new(
            format!("quality per bit, {name} (GOP {GOP})"),
            &[
                "kbit/s",
                "encoder",
                "PSNR-Y dB",
                "vs x264",
                "SSIM-Y",
                "kbit/s made",
                "fps/core",
                "speed vs x264",
            ],
        );
        let clip_fps = Y4mFile::open(clip, false, false)?.format().fps.as_f64();
        for &kbps in &args.kbps {
            let score = |run: &Run, file: &Path| -> anyhow::Result<(f64, f64, f64, f64)> {
                let psnr = psnr_y(file, clip, run.frames)?;
                let ssim = ssim_y(file, clip, run.frames)?;
                let fps = run.frames as f64 / run.cpu.as_secs_f64().max(1e-6);
                let seconds = run.frames as f64 / clip_fps;
                Ok((psnr, ssim, fps, run.bytes as f64 * 8.0 / 1000.0 / seconds))
            };
            let x264_file = dir.join(format!("{name}-{kbps}-x264.h264"));
            let x = x264(clip, kbps, args.frames, &x264_file)?;
            let (xp, xs, xf, xk) = score(&x, &x264_file)?;
            table.row(vec![
                kbps.to_string(),
                "x264 veryfast zerolatency".into(),
                f(xp, 2),
                "".into(),
                f(xs, 4),
                f(xk, 0),
                f(xf, 0),
                "1.00x".into(),
            ]);
            for (i, (label, config)) in variants(kbps).into_iter().enumerate() {
                let file = dir.join(format!("{name}-{kbps}-v{i}.h264"));
                let run = openh264(clip, &config, args.frames, &file)?;
                let (p, s, fps, k) = score(&run, &file)?;
                table.row(vec![
                    kbps.to_string(),
                    label.into(),
                    f(p, 2),
                    format!("{:+.2}", p - xp),
                    f(s, 4),
                    f(k, 0),
                    f(fps, 0),
                    format!("{}x", f(fps / xf, 2)),
                ]);
            }
        }
        table
            .note("target: within 0.5 dB PSNR-Y of x264 at equal bitrate, at >= 1.3x its fps/core");
        table.note("kbit/s made: what each encoder actually produced (over the clip's frame rate); fps/core from thread CPU time (x264: process CPU minus ffmpeg start-up)");
        table.emit(results)?;
    }
    Ok(())
}
