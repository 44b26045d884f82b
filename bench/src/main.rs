//! camfleet-bench: measures camfleet against peers run on the same input on
//! the same machine, and prints tables (ratios, not pass/fail).
//!
//! Normally run through `scripts/bench`, which starts the services, builds
//! release binaries, prepares the clips and the Python venv, and passes them
//! here. See docs/benchmarks.md.

mod agent;
mod encode;
mod kafka;
mod latency;
mod measure;
mod table;
mod tutorial;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Also append each table, as markdown, to this file.
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// Scratch directory for encoded outputs, agent configs and logs.
    #[arg(long, global = true, default_value = "target/bench-work")]
    work_dir: PathBuf,
    #[command(subcommand)]
    section: Section,
}

#[derive(Subcommand)]
enum Section {
    /// Encoder CPU cost (fps per core) and PSNR: agent pipeline, bare openh264, ffmpeg libx264.
    Encode {
        /// A Y4M clip (repeat for several).
        #[arg(long = "clip", required = true)]
        clips: Vec<PathBuf>,
        /// Encode at most this many frames of each clip.
        #[arg(long)]
        frames: Option<u64>,
        /// Runs per implementation; the least CPU time counts.
        #[arg(long, default_value_t = 3)]
        reps: u32,
    },
    /// Capture -> Kafka ack and -> consumer latency, RSS and CPU of the agent binary.
    Latency {
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The agent binary; default: camfleet-agent next to this binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// The common ffmpeg -> kafka-python tutorial pipeline side by side with the agent.
    Tutorial {
        /// The Y4M clip both pipelines stream (looped, in real time).
        #[arg(long)]
        clip: PathBuf,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Bitrates to compare, Mbit/s.
        #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
        mbps: Vec<u32>,
        /// Python with kafka-python installed.
        #[arg(long, default_value = "python3")]
        python: PathBuf,
        /// Directory holding producer.py and consumer.py.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tutorial"))]
        scripts: PathBuf,
        /// The agent binary; default: camfleet-agent next to this binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

fn default_agent(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(p) => Ok(p),
        None => Ok(std::env::current_exe()?.with_file_name("camfleet-agent")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work_dir)?;
    let work = std::path::absolute(&cli.work_dir)?;
    let results = cli.results.as_deref();
    match cli.section {
        Section::Encode {
            clips,
            frames,
            reps,
        } => {
            let args = encode::Args {
                clips,
                frames,
                reps: reps.max(1),
                work,
            };
            encode::run(args, results).await
        }
        Section::Latency { seconds, agent } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = latency::Args {
                seconds,
                agent: default_agent(agent)?,
                work,
            };
            latency::run(&kafka, args, results).await
        }
        Section::Tutorial {
            clip,
            seconds,
            mbps,
            python,
            scripts,
            agent,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = tutorial::Args {
                clip,
                seconds,
                mbps,
                python,
                scripts,
                agent: default_agent(agent)?,
                work,
            };
            tutorial::run(&kafka, args, results).await
        }
    }
}
