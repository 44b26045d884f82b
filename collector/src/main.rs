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
    /// Label a detection real or not (docs/learning.md); the last ops label wins.
    Label {
        /// `<site>/<camera>:<epoch>:<seq>:<index>`, the `id` of an object in
        /// `camfleet.detections.v1`.
        detection_id: String,
        /// `true` (a real object) or `false` (a false positive).
        #[arg(action = clap::ArgAction::Set, value_parser = clap::value_parser!(bool))]
        real: bool,
        #[arg(long, short)]
        config: PathBuf,
    },
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
        Command::Label {
            detection_id,
            real,
            config,
        } => {
            let cfg = load(&config)?;
            let archive = AnyArchive::open(&cfg.archive.root).await?;
            let label = camfleet_collector::learn::label::Labeller::new(&cfg, archive)?
                .label(&detection_id, real)
                .await?;
            println!(
                "labelled {} {} (published on {}; the tables show it after the collector's next flush)",
                label.detection_id, label.real, label.topic
            );
            Ok(())
        }
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
                if let Some(e) = &inference.embedding {
                    let embedder = camfleet_collector::learn::embed::Embedder::load(
                        &e.model,
                        &e.models_dir(),
                        inference.onnxruntime_library.as_deref(),
                    )?;
                    println!(
                        "ok embedding {} {} ({}-d, {})",
                        embedder.manifest().name,
                        embedder.manifest().version,
                        embedder.dim(),
                        e.model.display()
                    );
                }
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
                // Playback reads the archive through its own client, so a
                // slow HDFS read for a viewer never holds up archiving.
                let playback = match &live {
                    Some(_) => Some(Arc::new(
                        camfleet_collector::playback::ArchivePlayback::new(
                            AnyArchive::open(&cfg.archive.root).await?,
                        ),
                    )),
                    None => None,
                };
                let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
                    .install_recorder()
                    .context("cannot install the metrics recorder")?;
                Stats::describe();
                // Labels from the page: checked against the archive's
                // tables through their own client, like playback.
                let labels = match (
                    &live,
                    cfg.inference.as_ref().and_then(|i| i.embedding.as_ref()),
                ) {
                    (Some(_), Some(_)) => {
                        Some(Arc::new(camfleet_collector::learn::label::Labeller::new(
                            &cfg,
                            AnyArchive::open(&cfg.archive.root).await?,
                        )?))
                    }
                    _ => None,
                };
                let served = camfleet_collector::http::Served {
                    metrics,
                    service: service.clone(),
                    live: live.clone(),
                    playback,
                    labels,
                };
                camfleet_collector::http::start(&cfg.http, served).await?;
            }
            // The model is loaded before anything is consumed: a missing or
            // mismatched model stops the start with its cause.
            let mut processors: Vec<Box<dyn camfleet_collector::fanout::Processor>> = Vec::new();
            // Learned models (verifier, scene) hot-swapped from the registry,
            // read once before the first frame (docs/learning.md).
            let models = camfleet_collector::learn::source::start(&cfg).await?;
            if let Some(inference) = &cfg.inference {
                let mut processor = camfleet_collector::infer::processor::InferenceProcessor::new(
                    inference, &cfg.kafka,
                )?;
                if let Some((source, _)) = &models {
                    processor = processor.with_models(source.clone());
                }
                processors.push(Box::new(processor));
            }
            if let Some(hub) = live {
                camfleet_collector::live::start_fleet(&hub)?;
                camfleet_collector::live::start(hub, &cfg.kafka, &mut processors)?;
            }
            let archive = AnyArchive::open(&cfg.archive.root).await?;
            // The learning tables' writer (docs/learning.md), beside the
            // consumer, with its own archive handle and its own stop signal
            // so it flushes once more after the collector stopped.
            let (tables_stop, tables_stopped) = tokio::sync::watch::channel(false);
            let tables = match cfg.inference.as_ref().and_then(|i| i.embedding.clone()) {
                Some(embedding) => {
                    let archive = AnyArchive::open(&cfg.archive.root).await?;
                    let kafka = cfg.kafka.clone();
                    // Retraining on schedule, from the labels this
                    // instance's table writer records (docs/learning.md).
                    let counts = match cfg.learning.as_ref().filter(|l| l.enabled) {
                        Some(learning) => {
                            let counts = Arc::new(
                                camfleet_collector::learn::schedule::LabelCounts::default(),
                            );
                            tokio::spawn(camfleet_collector::learn::schedule::run(
                                config.clone(),
                                learning.clone(),
                                counts.clone(),
                                std::time::Duration::from_secs(5),
                                tables_stopped.clone(),
                            ));
                            Some(counts)
                        }
                        None => None,
                    };
                    Some(tokio::spawn(async move {
                        camfleet_collector::learn::table_writer::run_counting(
                            &archive,
                            &kafka,
                            &embedding,
                            tables_stopped,
                            counts,
                        )
                        .await
                    }))
                }
                None => None,
            };
            let stats = Arc::new(Stats::default());
            let result = camfleet_collector::app::run_service(
                cfg,
                archive,
                stats.clone(),
                processors,
                service,
                shutdown_signal(),
            )
            .await;
            let _ = tables_stop.send(true);
            if let Some(t) = tables {
                match t.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "learning tables writer"),
                    Err(e) => tracing::error!(error = %e, "learning tables writer panicked"),
                }
            }
            result?;
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
