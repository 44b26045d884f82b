//! `tutorial`: the common Kafka video tutorial pipeline side by side with
//! camfleet on the same clip, at several bitrates, each in real time.
//!
//! Tutorial: `ffmpeg -re ... libx264 ... -f mpegts -` -> producer.py
//! (kafka-python, 1 KiB chunks, 10 ms sleep) -> consumer.py. This process
//! sits in the pipe between ffmpeg and the producer as an unbounded buffer:
//! a live camera cannot be paused, so what the producer has not taken yet
//! waits there, and every byte ffmpeg writes is timestamped.
//!
//! camfleet: the agent binary on the same Y4M, paced and looped, consumed
//! by a collector-style consumer.
//!
//! Both are scored in the window [first data out of the encoder, + N s]:
//! bytes offered by the encoder, bytes delivered to the consumer, and the
//! lag (age of the newest data the consumer has).

use crate::agent::{self, AgentSpec};
use crate::kafka::{FrameConsumer, Kafka};
use crate::measure::{ffmpeg, percentile};
use crate::table::{f, ms, Table};
use anyhow::{bail, Context};
use camfleet_agent::source::y4m::Y4mFile;
use camfleet_agent::source::FrameSource;
use camfleet_shared::clock::{Clock, SystemClock};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Args {
    pub clip: PathBuf,
    pub seconds: u64,
    pub mbps: Vec<u32>,
    pub python: PathBuf,
    pub scripts: PathBuf,
    pub agent: PathBuf,
    pub work: PathBuf,
}

/// One pipeline's score over the window.
struct Flow {
    offered_bytes: u64,
    delivered_bytes: u64,
    /// Age of the consumer's newest data at each delivery in the window, µs,
    /// in delivery order.
    lags: Vec<u64>,
}

impl Flow {
    fn kbit_s(bytes: u64, seconds: u64) -> f64 {
        bytes as f64 * 8.0 / seconds as f64 / 1000.0
    }
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let format = Y4mFile::open(&args.clip, false, false)?.format();
    let clip = args
        .clip
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("clip");
    let mut table = Table::new(
        format!(
            "tutorial pipeline vs camfleet: {clip} {}x{} @ {} fps, real time, {} s each",
            format.width, format.height, format.fps, args.seconds
        ),
        &[
            "pipeline",
            "Mbit/s",
            "offered kbit/s",
            "delivered kbit/s",
            "delivered %",
            "lag p50 ms",
            "lag at end ms",
            "delivered vs tutorial",
        ],
    );
    let window_us = args.seconds * 1_000_000;
    for &mbps in &args.mbps {
        let topic = kafka.fresh_topic(&format!("tutorial.{mbps}m")).await?;
        let tutorial = {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            let (clip, python, scripts) =
                (args.clip.clone(), args.python.clone(), args.scripts.clone());
            let seconds = args.seconds;
            tokio::task::spawn_blocking(move || {
                tutorial(&kafka, &topic, &clip, &python, &scripts, mbps, seconds)
            })
            .await??
        };
        kafka.delete_topic(&topic).await?;

        let topic = kafka.fresh_topic(&format!("ours.{mbps}m")).await?;
        let consumer = FrameConsumer::start(kafka, &topic).await?;
        let frames = (args.seconds as f64 * format.fps.as_f64()).round() as u64;
        let run = {
            let (kafka, topic) = (kafka.clone(), topic.clone());
            let (agent, work, source) = (
                args.agent.clone(),
                args.work.clone(),
                agent::y4m_source(&args.clip),
            );
            tokio::task::spawn_blocking(move || {
                agent::run(
                    &agent,
                    &work,
                    &kafka,
                    &AgentSpec {
                        name: &format!("tutorial-{mbps}m"),
                        topic: &topic,
                        source,
                        bitrate_kbps: mbps * 1000,
                        frames,
                        cameras: 1,
                    },
                )
            })
            .await??
        };
        let received = consumer
            .finish(run.u64("frames_acked")?, Duration::from_secs(10))
            .await?;
        kafka.delete_topic(&topic).await?;
        let t0 = received
            .iter()
            .map(|r| r.capture_us)
            .min()
            .context("camfleet: no frame reached the consumer")?;
        let end = t0 + window_us;
        let in_time: Vec<_> = received.iter().filter(|r| r.recv_us <= end).collect();
        let ours = Flow {
            offered_bytes: run.u64("bytes_encoded")?,
            delivered_bytes: in_time.iter().map(|r| r.bytes).sum(),
            lags: in_time
                .iter()
                .map(|r| r.recv_us.saturating_sub(r.capture_us))
                .collect(),
        };

        let tutorial_rate = Flow::kbit_s(tutorial.delivered_bytes, args.seconds);
        for (label, flow) in [
            ("tutorial: ffmpeg -> kafka-python 1 KiB / 10 ms", &tutorial),
            ("camfleet agent", &ours),
        ] {
            let (p50, last) = match flow.lags.last() {
                Some(&last) => {
                    let mut sorted = flow.lags.clone();
                    sorted.sort_unstable();
                    (ms(percentile(&sorted, 0.5)), ms(last))
                }
                None => ("-".into(), "-".into()),
            };
            let delivered = Flow::kbit_s(flow.delivered_bytes, args.seconds);
            table.row(vec![
                label.into(),
                mbps.to_string(),
                f(Flow::kbit_s(flow.offered_bytes, args.seconds), 0),
                f(delivered, 0),
                f(
                    flow.delivered_bytes as f64 / flow.offered_bytes.max(1) as f64 * 100.0,
                    1,
                ),
                p50,
                last,
                format!("{}x", f(delivered / tutorial_rate, 2)),
            ]);
        }
    }
    table.note("offered = bytes out of the encoder in the window (tutorial: ffmpeg's MPEG-TS stdout; camfleet: H.264 access units); delivered = value bytes the consumer had by the window's end");
    table.note("lag = age of the consumer's newest data at each receipt: since it left ffmpeg (tutorial) or was captured, before encoding (camfleet); at end = at the last receipt in the window");
    table.note(
        "the tutorial's producer cannot exceed 1 KiB per 10 ms + send time, about 0.8 Mbit/s",
    );
    table.emit(results)
}

/// A child killed and reaped when dropped, so an error path leaves no process behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python(python: &Path, script: &Path, kafka: &Kafka, topic: &str) -> anyhow::Result<Reaped> {
    let child = Command::new(python)
        .arg("-u")
        .arg(script)
        .args(["--bootstrap", &kafka.bootstrap, "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", script.display()))?;
    Ok(Reaped(child))
}

/// Waits for the script's "ready" line; returns the rest of its output.
fn ready(out: ChildStdout, script: &str) -> anyhow::Result<std::io::Lines<BufReader<ChildStdout>>> {
    let mut lines = BufReader::new(out).lines();
    match lines.next() {
        Some(Ok(l)) if l == "ready" => Ok(lines),
        other => bail!("{script} did not start (got {other:?}); see its error above"),
    }
}

fn tutorial(
    kafka: &Kafka,
    topic: &str,
    clip: &Path,
    python_bin: &Path,
    scripts: &Path,
    mbps: u32,
    seconds: u64,
) -> anyhow::Result<Flow> {
    let mut consumer = python(python_bin, &scripts.join("consumer.py"), kafka, topic)?;
    let lines = ready(consumer.0.stdout.take().expect("piped"), "consumer.py")?;
    // (unix µs, total bytes) after each message.
    let progress = std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .filter_map(|l| {
                let (t, b) = l.split_once(' ')?;
                Some((
                    (t.parse::<f64>().ok()? * 1e6) as u64,
                    b.parse::<u64>().ok()?,
                ))
            })
            .collect::<Vec<_>>()
    });
    let mut producer = python(python_bin, &scripts.join("producer.py"), kafka, topic)?;
    let mut producer_in = producer.0.stdin.take().expect("piped");
    ready(producer.0.stdout.take().expect("piped"), "producer.py")?;

    let mut encoder = Reaped(
        ffmpeg()
            .args(["-loglevel", "error", "-re", "-stream_loop", "-1", "-i"])
            .arg(clip)
            .args([
                "-t",
                &seconds.to_string(),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-tune",
                "zerolatency",
                "-b:v",
                &format!("{mbps}M"),
                "-f",
                "mpegts",
                "-",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .context("start ffmpeg")?,
    );
    let mut stdout = encoder.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    // Reader: drains ffmpeg at once (never blocks it) and logs (unix µs, total bytes).
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<(u64, u64)>> {
        let mut emitted = Vec::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf)?;
            if n == 0 {
                return Ok(emitted);
            }
            total += n as u64;
            emitted.push((SystemClock.now_us(), total));
            if tx.send(buf[..n].to_vec()).is_err() {
                return Ok(emitted);
            }
        }
    });
    // Writer: feeds the producer as fast as it reads; stops when it is killed.
    let writer = std::thread::spawn(move || {
        for chunk in rx {
            if producer_in.write_all(&chunk).is_err() {
                break;
            }
        }
    });

    let status = encoder.0.wait()?;
    if !status.success() {
        bail!("tutorial ffmpeg failed: {status}");
    }
    let emitted = reader.join().expect("reader thread")?;
    let t0 = emitted.first().context("ffmpeg wrote nothing")?.0;
    let end = t0 + seconds * 1_000_000;
    // Let the consumer report up to the window's end, then stop the tutorial.
    let now = SystemClock.now_us();
    if end + 200_000 > now {
        std::thread::sleep(Duration::from_micros(end + 200_000 - now));
    }
    drop(producer);
    drop(consumer);
    writer.join().expect("writer thread");
    let progress = progress.join().expect("progress thread");

    // When the byte at offset `total` left ffmpeg.
    let left_encoder = |total: u64| {
        let i = emitted.partition_point(|&(_, b)| b < total);
        emitted.get(i).map_or(u64::MAX, |&(t, _)| t)
    };
    let in_time: Vec<_> = progress.iter().filter(|&&(t, _)| t <= end).collect();
    let delivered_bytes = in_time.last().map_or(0, |&&(_, b)| b);
    Ok(Flow {
        offered_bytes: emitted
            .iter()
            .take_while(|&&(t, _)| t <= end)
            .last()
            .map_or(0, |&(_, b)| b),
        delivered_bytes,
        lags: in_time
            .iter()
            .map(|&&(t, b)| t.saturating_sub(left_encoder(b)))
            .collect(),
    })
}
