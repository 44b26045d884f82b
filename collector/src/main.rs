use anyhow::Context;
use camfleet_collector::archive::AnyArchive;
use camfleet_collector::service::ServiceState;
use camfleet_collector::stats::Stats;
use camfleet_shared::config::CollectorConfig;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// camfleet central collector: consumes camera video from Kafka and archives it.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume and archive until SIGTERM/SIGINT; prints a JSON summary at exit.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check the config (and, with --check-archive, that the archive root is writable).
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        check_archive: bool,
    },
    /// The archive: `ls`, `prune`, `export` (docs/archive.md).
    #[command(subcommand)]
    Archive(camfleet_collector::archive::cli::ArchiveCommand),
    /// Train verifier/scene models, evaluate them against the ones in force,
    /// promote the better ones (docs/learning.md).
    Train(camfleet_collector::learn::cli::TrainArgs),
    /// The model registry: `list`, `show`, `promote`, `rollback`, `import`.
    #[command(subcommand)]
    Model(camfleet_collector::learn::cli::ModelCommand),
}

fn load(path: &Path) -> anyhow::Result<CollectorConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    CollectorConfig::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,librdkafka=warn,hdfs_native=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match real_main(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("camfleet-collector: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Archive(command) => camfleet_collector::archive::cli::run(command).await,
        Command::Train(args) => camfleet_collector::learn::cli::train(args).await,
        Command::Model(command) => camfleet_collector::learn::cli::model(command).await,
        Command::Validate {
            config,
            check_archive,
        } => {
            let cfg = load(&config)?;
            if let Some(inference) = &cfg.inference {
                let detector = camfleet_collector::infer::processor::load_detector(inference)?;
                println!(
                    "ok model {} {} ({})",
                    detector.manifest().name,
                    detector.manifest().version,
                    inference.model.display()
                );
            }
            if check_archive {
                // The HDFS client retries a refused connection without end; a
                // check must answer.
                let limit = std::time::Duration::from_secs(20);
                tokio::time::timeout(limit, AnyArchive::open(&cfg.archive.root))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "archive root {:?} did not answer within {limit:?}",
                            cfg.archive.root
                        )
                    })??;
                println!("ok archive {}", cfg.archive.root);
            }
            println!("config {} is valid", config.display());
            Ok(())
        }
        Command::Run { config } => {
            let cfg = load(&config)?;
            let service = Arc::new(ServiceState::from_env());
            let live = cfg.live.clone().map(camfleet_collector::live::LiveHub::new);
            if !cfg.http.listen.is_empty() {
                let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .context("cannot install the metrics recorder")?;
                Stats::describe();
                let served = camfleet_collector::http::Served {
                    metrics,
                    service: service.clone(),
                    live: live.clone(),
                    playback: live
                        .as_ref()
                        .and_then(|_| camfleet_collector::playback::catalog_for(&cfg.archive.root)),
                };
                camfleet_collector::http::start(&cfg.http, served).await?;
            }
            // The model is loaded before anything is consumed: a missing or
            // mismatched model stops the start with its cause.
            let mut processors: Vec<Box<dyn camfleet_collector::fanout::Processor>> = Vec::new();
            if let Some(inference) = &cfg.inference {
                processors.push(Box::new(
                    camfleet_collector::infer::processor::InferenceProcessor::new(
                        inference, &cfg.kafka,
                    )?,
                ));
            }
            // Learned models (verifier, scene) hot-swapped from the registry.
            // Merge note (issue 11 data side): hand `models.0` to the
            // inference processor as its `ModelSource`.
            let _models = camfleet_collector::learn::source::start(&cfg).await?;
            if let Some(hub) = live {
                camfleet_collector::live::start(hub, &cfg.kafka, &mut processors)?;
            }
            let archive = AnyArchive::open(&cfg.archive.root).await?;
            let stats = Arc::new(Stats::default());
            camfleet_collector::app::run_service(
                cfg,
                archive,
                stats.clone(),
                processors,
                service,
                shutdown_signal(),
            )
            .await?;
            println!("{}", stats.to_json());
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
