//! camfleet-bench: measures camfleet against peers run on the same input on
//! the same machine, and prints tables (ratios, not pass/fail).
//!
//! Normally run through `scripts/bench`, which starts the services, builds
//! release binaries, prepares the clips and the Python venv, and passes them
//! here. See docs/benchmarks.md.

mod agent;
mod archive;
mod cameras;
mod convert;
mod detect;
mod encode;
mod fleet;
mod inference;
mod kafka;
mod latency;
mod learn;
mod learn_clip;
mod live;
mod measure;
mod producer;
mod quality;
mod spool;
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
    /// Fleet over MQTT: `camfleet set` -> applied for 1 and N agents vs an echo peer; telemetry bytes per hour.
    Fleet {
        /// Agent counts (simulated in-process with the agent's fleet link).
        #[arg(long, value_delimiter = ',', default_value = "1,200")]
        agents: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds of telemetry counted per agent run.
        #[arg(long, default_value_t = 10)]
        telemetry_seconds: u64,
        /// The `camfleet` binary (default: next to this one).
        #[arg(long)]
        camfleet: Option<PathBuf>,
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// The collector draining a backlog of N cameras to a local directory and HDFS (index and retention on).
    Archive {
        /// The Y4M clip replayed as every camera (720p).
        #[arg(long)]
        clip: PathBuf,
        /// Camera counts, one run each.
        #[arg(long, value_delimiter = ',', default_value = "200")]
        cameras: Vec<u32>,
        /// Seconds of video per camera.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Also archive to HDFS (HDFS_URL) and compare with FsShell -put.
        #[arg(long)]
        hdfs: bool,
        /// The collector binary; default: camfleet-collector next to this binary.
        #[arg(long)]
        collector: Option<PathBuf>,
    },
    /// Live view: glass-to-glass latency in headless chromium (LL-HLS, plain HLS, hls.js defaults, native) and collector CPU per live viewer.
    Live {
        /// Seconds of latency samples per playback mode.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds per viewer-count step.
        #[arg(long, default_value_t = 15)]
        viewer_seconds: u64,
        /// Viewer counts, comma-separated (0 = baseline).
        #[arg(long, value_delimiter = ',', default_values_t = vec![0, 1, 10, 50])]
        viewers: Vec<usize>,
        #[arg(long)]
        agent: Option<PathBuf>,
        /// The page driver (tests/browser/live_page.cjs).
        #[arg(long)]
        driver: PathBuf,
        /// hls.js and puppeteer-core ($CAMFLEET_WEB).
        #[arg(long)]
        web: PathBuf,
    },
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
    /// Camera pixel formats (YUYV, NV12, MJPEG) -> I420: CPU per 720p frame, ours vs ffmpeg.
    Convert {
        /// Frames converted per run.
        #[arg(long, default_value_t = 120)]
        frames: u32,
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
    /// Quality per bit (PSNR-Y, SSIM-Y) of openh264 settings against x264 at several bitrates.
    Quality {
        /// A Y4M clip (repeat for several).
        #[arg(long = "clip", required = true)]
        clips: Vec<PathBuf>,
        /// Encode at most this many frames of each clip.
        #[arg(long)]
        frames: Option<u64>,
        #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000")]
        kbps: Vec<u32>,
    },
    /// Several 720p30 cameras in one agent: RSS, drops, CPU per camera, CPU by thread.
    Cameras {
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Camera counts to run, one agent run each.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        counts: Vec<u32>,
        /// The agent binary; default: camfleet-agent next to this binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// The disk spool: drain rate after an outage, write cost against sled and a plain file, disk writes per mode, recovery after SIGKILL.
    Spool {
        /// Short runs, a smoke test (about a minute): 30 s backlog, 600
        /// frames, 6 s per mode, a 200 MB spool.
        #[arg(long)]
        quick: bool,
        /// Backlog to drain, in seconds of 720p30 video [default: 120; quick 30].
        #[arg(long)]
        backlog_seconds: Option<u64>,
        /// Frames each writer writes in the write-cost test [default: 3000; quick 600].
        #[arg(long)]
        frames: Option<u64>,
        /// Seconds the agent runs in each mode [default: 20; quick 6].
        #[arg(long)]
        seconds: Option<u64>,
        /// Spool sizes filled for the recovery test, MB [default: 200,1000; quick 200].
        #[arg(long, value_delimiter = ',')]
        recovery_mb: Option<Vec<u64>>,
        /// The agent binary; default: camfleet-agent next to this binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Object detection: the collector's Detector against bare ONNX Runtime in Python, same model and frames.
    /// The collector with inference on, end to end: capture -> detection latency, CPU per camera, cameras per core.
    Inference {
        /// A looped Y4M clip the camera streams in real time (720p30).
        #[arg(long)]
        clip: PathBuf,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Inference rates to run (frames per second and camera).
        #[arg(long, value_delimiter = ',', default_value = "1,5")]
        rates: Vec<f64>,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector/models/nanodet-g.toml"))]
        manifest: PathBuf,
        /// Directory the manifest's model path is relative to ($CAMFLEET_CACHE/models).
        #[arg(long)]
        models: PathBuf,
        /// The learning embedding backbone's manifest: one more run at the
        /// highest rate with `[inference.embedding]` on, for its extra cost.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector/models/ssdlite-backbone.toml"))]
        embedding: PathBuf,
        /// The agent binary; default: camfleet-agent next to this binary.
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    Detect {
        /// Clip the frames are taken from (anything ffmpeg reads; 720p Y4M from scripts/bench).
        #[arg(long)]
        clip: PathBuf,
        #[arg(long, default_value_t = 32)]
        frames: usize,
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// The model manifest.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector/models/nanodet-g.toml"))]
        manifest: PathBuf,
        /// Directory the manifest's model path is relative to ($CAMFLEET_CACHE/models).
        #[arg(long)]
        models: PathBuf,
        /// Python with onnxruntime + numpy (scripts/setup's models venv).
        #[arg(long)]
        python: PathBuf,
        /// The Python peer script.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/detect/ort_peer.py"))]
        peer: PathBuf,
    },
    /// Learned models: training time per 10k labels (vs Spark MLlib), verifier and scene cost (ONNX Runtime vs plain Rust).
    Learn {
        /// Labelled detections trained on.
        #[arg(long, default_value_t = 10_000)]
        labels: usize,
        /// Crop embedding length (the verifier's row is 7 + 80 classes + this).
        #[arg(long, default_value_t = 128)]
        embedding_dim: usize,
        /// Whole-frame embedding length of the scene model.
        #[arg(long, default_value_t = 256)]
        scene_dim: usize,
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Python with pyspark (the analytics venv) for the Spark peer.
        #[arg(long)]
        python: Option<PathBuf>,
        /// Registry photos ($CAMFLEET_PHOTOS): precision/recall on the
        /// learning clip through the real detector and backbone; needs --models.
        #[arg(long)]
        photos: Option<PathBuf>,
        /// $CAMFLEET_MODELS (the detector's and the backbone's files).
        #[arg(long)]
        models: Option<PathBuf>,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector/models/nanodet-g.toml"))]
        detector: PathBuf,
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../collector/models/ssdlite-backbone.toml"))]
        backbone: PathBuf,
    },
    /// The agent's Kafka sink alone on pre-encoded real H.264: compression
    /// codecs (broker bytes, CPU, ack latency) and plaintext vs SASL_SSL.
    Producer {
        /// A Y4M clip (repeat for several).
        #[arg(long = "clip", required = true)]
        clips: Vec<PathBuf>,
        /// Frames sent per clip and setting, at the clip's rate.
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Encoder bitrate.
        #[arg(long, default_value_t = 4000)]
        kbps: u32,
        /// Runs per setting; the median (by CPU) is shown.
        #[arg(long, default_value_t = 3)]
        reps: u32,
    },
    /// (internal, for `spool`) Write frames into a spool until killed.
    #[command(hide = true)]
    SpoolFill {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        frames_file: PathBuf,
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
        Section::Fleet {
            agents,
            rounds,
            telemetry_seconds,
            camfleet,
            agent,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = fleet::Args {
                agents,
                rounds: rounds.max(1),
                telemetry_seconds: telemetry_seconds.max(2),
                camfleet: match camfleet {
                    Some(c) => c,
                    None => std::env::current_exe()?.with_file_name("camfleet"),
                },
                agent: default_agent(agent)?,
                work,
            };
            fleet::run(&kafka, args, results).await
        }
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
        Section::Convert { frames, reps } => convert::run(
            convert::Args {
                frames: frames.max(1),
                reps: reps.max(1),
                work,
            },
            results,
        ),
        Section::Archive {
            clip,
            cameras,
            seconds,
            partitions,
            hdfs,
            collector,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let collector = match collector {
                Some(c) => c,
                None => std::env::current_exe()?.with_file_name("camfleet-collector"),
            };
            let args = archive::Args {
                clip,
                cameras,
                seconds,
                partitions,
                collector,
                hdfs,
            };
            archive::run(&kafka, args, &work.join("archive"), results).await
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
        Section::Quality {
            clips,
            frames,
            kbps,
        } => quality::run(
            quality::Args {
                clips,
                frames,
                kbps,
                work,
            },
            results,
        ),
        Section::Cameras {
            seconds,
            counts,
            agent,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = cameras::Args {
                seconds,
                counts,
                agent: default_agent(agent)?,
                work,
            };
            cameras::run(&kafka, args, results).await
        }
        Section::Spool {
            quick,
            backlog_seconds,
            frames,
            seconds,
            recovery_mb,
            agent,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = spool::Args {
                backlog_s: backlog_seconds.unwrap_or(if quick { 30 } else { 120 }),
                store_frames: frames.unwrap_or(if quick { 600 } else { 3000 }),
                mode_s: seconds.unwrap_or(if quick { 6 } else { 20 }),
                recovery_mb: recovery_mb.unwrap_or(if quick { vec![200] } else { vec![200, 1000] }),
                agent: default_agent(agent)?,
                work,
            };
            spool::run(&kafka, args, results).await
        }
        Section::Live {
            seconds,
            viewer_seconds,
            viewers,
            agent,
            driver,
            web,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let agent = default_agent(agent)?;
            let collector = agent.with_file_name("camfleet-collector");
            let args = live::Args {
                seconds,
                viewer_seconds,
                viewers,
                agent,
                collector,
                driver,
                web,
                work,
            };
            live::run(&kafka, args, results).await
        }
        Section::Inference {
            clip,
            seconds,
            rates,
            manifest,
            models,
            embedding,
            agent,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let agent = default_agent(agent)?;
            let collector = agent.with_file_name("camfleet-collector");
            let args = inference::Args {
                clip,
                seconds,
                rates,
                manifest,
                models,
                embedding,
                agent,
                collector,
                work,
            };
            inference::run(&kafka, args, results).await
        }
        Section::Learn {
            labels,
            embedding_dim,
            scene_dim,
            reps,
            python,
            photos,
            models,
            detector,
            backbone,
        } => {
            learn::run(
                learn::Args {
                    labels: labels.max(100),
                    embedding_dim,
                    scene_dim: scene_dim.max(2),
                    reps: reps.max(1),
                    python,
                    work: work.clone(),
                },
                results,
            )?;
            match (photos, models) {
                (Some(photos), Some(models)) => learn_clip::run(
                    &learn_clip::Args {
                        photos,
                        detector,
                        backbone,
                        models,
                        work,
                    },
                    results,
                ),
                _ => {
                    eprintln!(
                        "learn: no --photos/--models, the test clip's precision/recall is skipped"
                    );
                    Ok(())
                }
            }
        }
        Section::Detect {
            clip,
            frames,
            reps,
            manifest,
            models,
            python,
            peer,
        } => detect::run(
            detect::Args {
                clip,
                frames: frames.max(1),
                reps: reps.max(1),
                manifest,
                models,
                python,
                peer,
                work,
            },
            results,
        ),
        Section::Producer {
            clips,
            frames,
            kbps,
            reps,
        } => {
            let kafka = kafka::Kafka::from_env()?;
            let args = producer::Args {
                clips,
                frames,
                kbps,
                reps,
            };
            producer::run(&kafka, args, results).await
        }
        Section::SpoolFill {
            dir,
            bytes,
            frames_file,
        } => spool::fill(&dir, bytes, &frames_file),
    }
}
