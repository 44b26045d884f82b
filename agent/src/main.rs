use anyhow::Context;
use camfleet_agent::app;
use camfleet_agent::sink::kafka::KafkaSink;
use camfleet_shared::config::AgentConfig;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// camfleet edge agent: captures video, encodes H.264 and pushes it to Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cameras in the config until SIGTERM/SIGINT (or every finite source ends).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the config and open every source and encoder; with --check-kafka
    /// also check the broker answers and the topic exists.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        check_kafka: bool,
    },
}

fn load(path: &Path) -> anyhow::Result<AgentConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    AgentConfig::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camfleet-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate {
            config,
            check_kafka,
        } => {
            let cfg = load(&config)?;
            for cam in &cfg.cameras {
                let src = camfleet_agent::source::open(&cam.source)
                    .with_context(|| format!("camera {}", cam.id))?;
                let f = src.format();
                camfleet_agent::encode::H264Encoder::new(f, &cam.encoder)
                    .with_context(|| format!("camera {}", cam.id))?;
                println!(
                    "ok camera {} {}x{} @ {} fps",
                    cam.id, f.width, f.height, f.fps
                );
            }
            if check_kafka {
                let sink = KafkaSink::new(&cfg.kafka)?;
                let partitions = sink.check_topic(std::time::Duration::from_secs(10))?;
                println!(
                    "ok kafka {} topic {} ({partitions} partitions)",
                    cfg.kafka.connection.bootstrap_servers, cfg.kafka.connection.topic
                );
            }
            println!("config {} is valid", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let cfg = load(&config)?;
            let sink = Arc::new(KafkaSink::new(&cfg.kafka)?);
            let reports = app::run(cfg, sink, shutdown_signal()).await?;
            for r in &reports {
                println!("{}", r.to_json());
            }
            Ok(())
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
