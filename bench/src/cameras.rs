//! Several 720p30 cameras in one agent process against the real broker: peak
//! RSS, frames dropped, CPU per camera against one camera, and where the CPU
//! goes beyond the encoders and the (fake) cameras, by thread.

use crate::agent::{self, AgentRun, AgentSpec};
use crate::kafka::Kafka;
use crate::table::{f, Table};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 720;
const FPS: u32 = 30;
const KBPS: u32 = 2000;

pub struct Args {
    pub seconds: u64,
    pub counts: Vec<u32>,
    pub agent: PathBuf,
    pub work: PathBuf,
}

pub async fn run(kafka: &Kafka, args: Args, results: Option<&Path>) -> anyhow::Result<()> {
    let frames = args.seconds * FPS as u64;
    let mut runs = Vec::new();
    for &n in &args.counts {
        let topic = kafka.fresh_topic(&format!("cameras{n}")).await?;
        let (agent, work, bootstrap) = (args.agent.clone(), args.work.clone(), kafka.clone());
        let name = format!("{n}cams");
        let t = topic.clone();
        let run = tokio::task::spawn_blocking(move || {
            agent::run(
                &agent,
                &work,
                &bootstrap,
                &AgentSpec {
                    name: &name,
                    topic: &t,
                    source: agent::test_pattern_source(WIDTH, HEIGHT, FPS),
                    bitrate_kbps: KBPS,
                    frames,
                    cameras: n,
                },
            )
        })
        .await??;
        kafka.delete_topic(&topic).await?;
        runs.push((n, run));
    }

    let mut table = Table::new(
        format!(
            "{WIDTH}x{HEIGHT}@{FPS} test-pattern cameras in one agent, {} s, {KBPS} kbit/s each",
            args.seconds
        ),
        &[
            "cameras",
            "captured",
            "dropped (busy)",
            "acked + drained",
            "peak RSS",
            "agent CPU, % of a core",
            "CPU per camera vs 1",
            "beyond encode + capture, % of encode",
        ],
    );
    let per_camera_one = runs
        .iter()
        .find(|(n, _)| *n == 1)
        .map(|(_, r)| r.cpu.as_secs_f64());
    for (n, run) in &runs {
        let sum = |k: &str| -> u64 {
            run.summaries
                .iter()
                .map(|s| s[k].as_u64().unwrap_or(0))
                .sum()
        };
        let (encode, capture) = (thread_cpu(run, "encode"), thread_cpu(run, "capture"));
        let beyond = run.cpu.as_secs_f64() - encode - capture;
        let per_camera = run.cpu.as_secs_f64() / *n as f64;
        table.row(vec![
            n.to_string(),
            sum("frames_captured").to_string(),
            sum("frames_dropped_busy").to_string(),
            (sum("frames_acked") + sum("frames_drained")).to_string(),
            format!("{} MB", f(run.vm_hwm_kb as f64 / 1024.0, 1)),
            format!(
                "{}%",
                f(run.cpu.as_secs_f64() / run.wall.as_secs_f64() * 100.0, 1)
            ),
            per_camera_one.map_or("-".into(), |one| format!("{}x", f(per_camera / one, 2))),
            format!("{}% ({} s)", f(beyond / encode * 100.0, 1), f(beyond, 2)),
        ]);
    }
    table.note("targets: 4 cameras <= 60 MB RSS and no frame dropped on 2 cores; agent CPU beyond the encoder <= 3% of the encoder's");
    table.note("capture = the test-pattern renderer standing in for a camera; encode = the openh264 threads; the rest is Kafka, spool, tokio and metrics");
    table.emit(results)?;

    for (n, run) in &runs {
        let mut threads = Table::new(
            format!("agent CPU by thread, {n} camera(s)"),
            &["thread", "CPU s", "share of agent CPU"],
        );
        for (name, cpu) in &run.threads {
            threads.row(vec![
                name.clone(),
                f(cpu.as_secs_f64(), 2),
                format!(
                    "{}%",
                    f(cpu.as_secs_f64() / run.cpu.as_secs_f64() * 100.0, 1)
                ),
            ]);
        }
        threads
            .note("names are cut to 15 characters by the kernel; threads of one name are summed");
        threads.emit(results)?;
    }
    Ok(())
}

/// CPU seconds of the threads whose name starts with `prefix`.
fn thread_cpu(run: &AgentRun, prefix: &str) -> f64 {
    run.threads
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, cpu)| cpu.as_secs_f64())
        .sum::<f64>()
        .max(Duration::from_millis(1).as_secs_f64())
}
