//! `encode`: CPU cost and quality of H.264 encoding, three ways, on the same Y4M.
//!
//! * agent pipeline: `camfleet_agent::app::run` with a Y4M source (unpaced)
//!   and a sink that builds each frame's Kafka headers but sends nothing, so
//!   the cost is the agent's own (threads, queues, sequence numbers, headers)
//!   plus the encoder, without the broker's;
//! * bare openh264: the same encoder settings, called directly in a loop
//!   (only its set-up and `encode` calls are timed: this is the encoder's floor);
//! * ffmpeg libx264 veryfast/zerolatency, one thread, as the peer.
//!
//! Every implementation writes an Annex-B file and the same ffmpeg psnr run
//! scores each one against the source, so quality is measured one way.

use crate::agent::toml_path;
use crate::measure::{ffmpeg, process_cpu, psnr_y, thread_cpu, wait_with_cpu};
use crate::table::{f, Table};
use anyhow::{bail, Context};
use camfleet_agent::app;
use camfleet_agent::encode::encoder_params;
use camfleet_agent::openh264_encoder::SvcEncoder;
use camfleet_agent::sink::{AckFuture, Delivery, FrameSink, SinkError};
use camfleet_agent::source::y4m::Y4mFile;
use camfleet_agent::source::{FrameSource, VideoFormat};
use camfleet_shared::config::AgentConfig;
use camfleet_shared::wire::{self, FrameMeta};
use rdkafka::message::{Header, OwnedHeaders};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Args {
    pub clips: Vec<PathBuf>,
    /// Encode at most this many frames of each clip.
    pub frames: Option<u64>,
    /// Runs per implementation; the least CPU time counts.
    pub reps: u32,
    pub work: PathBuf,
}

const GOP: u32 = 60;

/// The brief's operating points: 2 Mbit/s up to 720p, 4 Mbit/s above.
fn bitrate_kbps(format: VideoFormat) -> u32 {
    if format.width * format.height > 1280 * 720 {
        4000
    } else {
        2000
    }
}

/// One encode of one clip.
pub(crate) struct Run {
    pub cpu: Duration,
    /// CPU time spent reading the Y4M, when measured apart from `cpu`.
    pub read_cpu: Option<Duration>,
    pub frames: u64,
    pub bytes: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Impl {
    Agent,
    Bare,
    X264,
}

impl Impl {
    const ALL: [Impl; 3] = [Impl::Agent, Impl::Bare, Impl::X264];

    fn label(self) -> &'static str {
        match self {
            Impl::Agent => "camfleet agent pipeline",
            Impl::Bare => "bare openh264",
            Impl::X264 => "ffmpeg libx264 veryfast zerolatency",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Impl::Agent => "agent.h264",
            Impl::Bare => "openh264.h264",
            Impl::X264 => "x264.h264",
        }
    }
}

pub async fn run(args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let mut table = Table::new(
        format!(
            "encode: CPU cost and quality, IDR every {GOP}, best of {} run(s)",
            args.reps
        ),
        &[
            "impl",
            "clip",
            "res",
            "frames",
            "fps/core",
            "PSNR-Y dB",
            "kbit/s (target)",
            "fps/core vs x264",
        ],
    );
    for clip in &args.clips {
        let format = Y4mFile::open(clip, false, false)?.format();
        let kbps = bitrate_kbps(format);
        let name = clip
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('.').next())
            .unwrap_or("clip");
        let dir = args.work.join(format!("encode-{name}-{}p", format.height));
        std::fs::create_dir_all(&dir)?;
        // Read the clip once, so no implementation pays for loading it from disk.
        std::io::copy(&mut std::fs::File::open(clip)?, &mut std::io::sink())?;
        // Reps are interleaved so a noisy spell on the machine hits every
        // implementation, and the cheapest run of each is kept.
        let mut best: Vec<Option<Run>> = Impl::ALL.iter().map(|_| None).collect();
        for _ in 0..args.reps {
            for (i, imp) in Impl::ALL.into_iter().enumerate() {
                let out = dir.join(imp.file());
                let run = match imp {
                    Impl::Agent => agent_pipeline(clip, kbps, args.frames, &dir, &out).await?,
                    Impl::Bare => bare_openh264(clip, kbps, args.frames, &out)?,
                    Impl::X264 => x264(clip, kbps, args.frames, &out)?,
                };
                if best[i].as_ref().is_none_or(|b| run.cpu < b.cpu) {
                    best[i] = Some(run);
                }
            }
        }
        let best: Vec<Run> = best.into_iter().map(|b| b.expect("reps >= 1")).collect();
        let frames = best[0].frames;
        if best.iter().any(|r| r.frames != frames) {
            bail!(
                "{}: implementations encoded different frame counts",
                clip.display()
            );
        }
        let fps_core = |r: &Run| r.frames as f64 / r.cpu.as_secs_f64();
        let x264_fps = fps_core(&best[2]);
        for (imp, run) in Impl::ALL.into_iter().zip(&best) {
            let psnr = psnr_y(&dir.join(imp.file()), clip, frames)?;
            let kbit_s = run.bytes as f64 * 8.0 * format.fps.as_f64() / run.frames as f64 / 1000.0;
            table.row(vec![
                imp.label().into(),
                name.into(),
                format!("{}x{}", format.width, format.height),
                frames.to_string(),
                f(fps_core(run), 0),
                f(psnr, 2),
                format!("{} ({kbps})", f(kbit_s, 0)),
                format!("{}x", f(fps_core(run) / x264_fps, 2)),
            ]);
        }
        let bare = best[1].cpu.as_secs_f64();
        let read = best[1].read_cpu.unwrap_or_default().as_secs_f64();
        table.note(format!(
            "{name} {}p: agent pipeline CPU = bare openh264 + {}%; reading the same Y4M frames alone costs {}% of bare openh264",
            format.height,
            f((best[0].cpu.as_secs_f64() / bare - 1.0) * 100.0, 1),
            f(read / bare * 100.0, 1),
        ));
    }
    table.note("fps/core = frames / (user+sys CPU s): the agent pipeline's whole process, the bare encoder's set-up and encode calls only, ffmpeg's child rusage minus a no-encode ffmpeg run on the same clip (process start-up)");
    table.note("PSNR-Y: ffmpeg psnr filter, each output decoded by ffmpeg and compared frame by frame with the source Y4M");
    table.emit(results)
}

/// Stands in for `KafkaSink`: builds the record headers exactly as it does
/// and keeps the payloads (for the PSNR check), but sends nothing.
#[derive(Default)]
struct NullSink {
    stream: Mutex<Vec<u8>>,
}

impl FrameSink for NullSink {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        payload: &[u8],
        _evicted: &[std::ops::RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let mut headers = OwnedHeaders::new_with_capacity(12);
        for (name, value) in wire::headers(meta, None) {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        std::hint::black_box(headers);
        self.stream
            .lock()
            .expect("sink lock")
            .extend_from_slice(payload);
        let ack = Delivery::Kafka {
            partition: 0,
            offset: meta.seq as i64,
        };
        Ok(Box::pin(async move { Ok(ack) }))
    }

    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

async fn agent_pipeline(
    clip: &Path,
    kbps: u32,
    frames: Option<u64>,
    dir: &Path,
    out: &Path,
) -> anyhow::Result<Run> {
    let data = dir.join("agent-data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    // The broker address is never contacted: the sink above replaces Kafka.
    let config = AgentConfig::from_toml(&format!(
        r#"data_dir = {data}
kafka = {{ bootstrap_servers = "127.0.0.1:9" }}
[[camera]]
id = "bench/encode"
{max_frames}
source = {{ kind = "y4m", path = {clip}, unpaced = true }}
encoder = {{ bitrate_kbps = {kbps}, keyframe_interval_frames = {GOP} }}
"#,
        data = toml_path(&data),
        clip = toml_path(clip),
        max_frames = frames.map_or(String::new(), |n| format!("max_frames = {n}")),
    ))?;
    let sink = Arc::new(NullSink::default());
    let cpu0 = process_cpu();
    // The agent's real sink stack: the spool (outage mode: frames pass
    // straight through while the sink keeps up) around the stand-in.
    let spool = camfleet_agent::spool::SpoolSink::open(
        &config.spool,
        &config.spool.dir(&config.data_dir),
        sink.clone(),
        Arc::new(camfleet_shared::clock::SystemClock),
    )?;
    let reports = app::run(config, spool, std::future::pending()).await;
    let cpu = process_cpu() - cpu0;
    let summary = reports[0].to_json();
    let stream = std::mem::take(&mut *sink.stream.lock().expect("sink lock"));
    std::fs::write(out, &stream)?;
    Ok(Run {
        cpu,
        read_cpu: None,
        frames: summary["frames_encoded"]
            .as_u64()
            .context("frames_encoded")?,
        bytes: stream.len() as u64,
    })
}

fn bare_openh264(clip: &Path, kbps: u32, frames: Option<u64>, out: &Path) -> anyhow::Result<Run> {
    let mut src = Y4mFile::open(clip, false, false)?;
    let format = src.format();
    // H264Encoder's parameters (agent/src/encode.rs), minus its wrapper
    // (frame checks, forced IDRs, per-frame output vectors).
    let config = camfleet_shared::config::EncoderConfig {
        bitrate_kbps: kbps,
        keyframe_interval_frames: GOP,
        ..Default::default()
    };
    // Set-up is charged, as it is to the other two.
    let t = thread_cpu();
    let mut encoder = SvcEncoder::new(&encoder_params(format, &config)?)?;
    let (mut cpu, mut read_cpu) = (thread_cpu() - t, Duration::ZERO);
    let (w, h) = (format.width as usize, format.height as usize);
    let mut stream = Vec::new();
    let mut n = 0u64;
    let mut buf = Vec::new();
    while frames.is_none_or(|max| n < max) {
        let t = thread_cpu();
        let frame = src.next_frame(std::mem::take(&mut buf))?;
        read_cpu += thread_cpu() - t;
        let Some(frame) = frame else {
            break;
        };
        let (y, uv) = frame.i420.split_at(w * h);
        let (u, v) = uv.split_at((w / 2) * (h / 2));
        let t = thread_cpu();
        let ms = (n as f64 * 1000.0 / format.fps.as_f64()) as i64;
        encoder.encode(
            [y, u, v],
            [w, w / 2, w / 2],
            format.width,
            format.height,
            ms,
            &mut stream,
        )?;
        cpu += thread_cpu() - t;
        buf = frame.i420;
        n += 1;
    }
    std::fs::write(out, &stream)?;
    Ok(Run {
        cpu,
        read_cpu: Some(read_cpu),
        frames: n,
        bytes: stream.len() as u64,
    })
}

pub(crate) fn x264(clip: &Path, kbps: u32, frames: Option<u64>, out: &Path) -> anyhow::Result<Run> {
    let mut cmd = ffmpeg();
    // -threads before -i is the decoder's, after it the encoder's: one each,
    // so fps per core compares single-threaded encoders.
    cmd.args(["-loglevel", "error", "-threads", "1", "-i"])
        .arg(clip);
    if let Some(n) = frames {
        cmd.args(["-frames:v", &n.to_string()]);
    }
    cmd.args([
        "-c:v",
        "libx264",
        "-threads",
        "1",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-b:v",
        &format!("{kbps}k"),
        "-g",
        &GOP.to_string(),
        "-f",
        "h264",
    ])
    .arg(out)
    .stdout(Stdio::null());
    let (status, cpu) = wait_with_cpu(cmd.spawn().context("run ffmpeg")?)?;
    if !status.success() {
        bail!("ffmpeg libx264 on {} failed: {status}", clip.display());
    }
    let frames = frames_in(out)?;
    Ok(Run {
        cpu: cpu.saturating_sub(ffmpeg_startup(clip)?),
        read_cpu: None,
        frames,
        bytes: std::fs::metadata(out)?.len(),
    })
}

/// CPU time of ffmpeg starting, probing `clip` and passing one frame on
/// without encoding. It is taken off the libx264 run so that, like the
/// in-process encoders, x264 is charged for its encoder and the encoder's
/// set-up, not for starting a process.
fn ffmpeg_startup(clip: &Path) -> anyhow::Result<Duration> {
    let child = ffmpeg()
        .args(["-loglevel", "error", "-threads", "1", "-i"])
        .arg(clip)
        .args(["-frames:v", "1", "-f", "null", "-"])
        .stdout(Stdio::null())
        .spawn()
        .context("run ffmpeg")?;
    let (status, cpu) = wait_with_cpu(child)?;
    if !status.success() {
        bail!("ffmpeg could not read {}: {status}", clip.display());
    }
    Ok(cpu)
}

/// Access units in an Annex-B stream: counted as first slices (NAL types 1
/// and 5 with first_mb_in_slice = 0, whose ue(v) code is a single 1 bit).
fn frames_in(path: &Path) -> anyhow::Result<u64> {
    let data = std::fs::read(path)?;
    Ok(openh264::nal_units(&data)
        .filter(|nal| {
            let start = nal.iter().position(|&b| b == 1).map_or(0, |p| p + 1);
            matches!(nal.get(start).map(|b| b & 0x1f), Some(1 | 5))
                && nal.get(start + 1).is_some_and(|b| b & 0x80 != 0)
        })
        .count() as u64)
}
