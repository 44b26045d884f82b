use anyhow::Context;
use camfleet_agent::app;
use camfleet_agent::sink::kafka::KafkaSink;
use camfleet_agent::sink::switch::SwitchSink;
use camfleet_agent::spool::{self, control, SpoolSink};
use camfleet_shared::clock::SystemClock;
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
    /// Check the config, the spool directory and budget, and open every
    /// source and encoder; with --check-kafka also check the broker answers
    /// and the topic exists.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        check_kafka: bool,
    },
    /// List V4L2 cameras (/dev/video*): driver, card, bus, capabilities,
    /// pixel formats, sizes and frame rates. Exits 0 when there are none.
    Probe {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Look at the disk spool (works while the agent runs or is stopped).
    Spool {
        #[command(subcommand)]
        command: SpoolCommand,
    },
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Per camera: frames and bytes spooled, oldest frame age, evicted ranges.
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check every record's checksum and the spool's structure; exits
    /// non-zero on damage.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
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
                let out = camfleet_agent::encode::output_format(f, &cam.encoder);
                camfleet_agent::encode::H264Encoder::new(out, &cam.encoder)
                    .with_context(|| format!("camera {}", cam.id))?;
                println!(
                    "ok camera {} {}x{} @ {} fps, sent as {}x{} @ {} fps",
                    cam.id, f.width, f.height, f.fps, out.width, out.height, out.fps
                );
            }
            check_spool(&cfg)?;
            check_kafka_security(&cfg)?;
            if let Some(mqtt) = &cfg.mqtt {
                camfleet_agent::fleet::check_files(mqtt)?;
            }
            if check_kafka {
                let sink = KafkaSink::new(&cfg.kafka)?;
                let partitions = sink.check_topic(std::time::Duration::from_secs(10))?;
                println!(
                    "ok kafka {} topic {} ({partitions} partitions, {})",
                    cfg.kafka.connection.bootstrap_servers,
                    cfg.kafka.connection.topic,
                    cfg.kafka.connection.security_protocol.as_str()
                );
            }
            println!("config {} is valid", config.display());
            Ok(())
        }
        Command::Spool { command } => spool_command(command).await,
        Command::Probe { json } => {
            use camfleet_agent::source::v4l2;
            let report = v4l2::probe(&v4l2::real::RealOpener);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            Ok(())
        }
        Command::Run { config } => {
            let local_toml = std::fs::read_to_string(&config)
                .with_context(|| format!("cannot read config {}", config.display()))?;
            let local = AgentConfig::from_toml(&local_toml)
                .with_context(|| format!("invalid config {}", config.display()))?;
            // The last config applied from the fleet, when there is one.
            let (cfg, applied, source) = camfleet_agent::fleet::applied::boot(&local_toml, local);
            if !cfg.http.listen.is_empty() {
                let addr: std::net::SocketAddr = cfg.http.listen.parse()?;
                use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
                // Encode: 1-100 ms; capture -> ack: 2 ms to a minute (spool drains).
                PrometheusBuilder::new()
                    .with_http_listener(addr)
                    .set_buckets_for_metric(
                        Matcher::Full("camfleet_agent_encode_seconds".into()),
                        &[0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.1],
                    )?
                    .set_buckets_for_metric(
                        Matcher::Full("camfleet_agent_capture_to_ack_seconds".into()),
                        &[
                            0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
                        ],
                    )?
                    .install()
                    .with_context(|| format!("cannot serve /metrics on {addr}"))?;
                spool::describe_metrics();
                camfleet_agent::stats::describe_metrics();
            }
            let kafka = Arc::new(SwitchSink::new(KafkaSink::new(&cfg.kafka)?));
            let dir = cfg.spool.dir(&cfg.data_dir);
            let sink = SpoolSink::open(&cfg.spool, &dir, kafka.clone(), Arc::new(SystemClock))
                .with_context(|| format!("spool {}", dir.display()))?;
            control::serve(sink.clone())
                .with_context(|| format!("control socket in {}", dir.display()))?;
            let live = app::live_kafka(local_toml, applied, source, kafka);
            let reports = app::run_live(
                cfg,
                sink,
                Arc::new(SystemClock),
                Arc::new(camfleet_agent::camera::SystemSources),
                Some(live),
                shutdown_signal(),
            )
            .await;
            for r in &reports {
                println!("{}", r.to_json());
            }
            Ok(())
        }
    }
}

/// `validate`: the password file and certificates are readable; prints the
/// security settings, never the password.
fn check_kafka_security(cfg: &AgentConfig) -> anyhow::Result<()> {
    let k = &cfg.kafka.connection;
    let props = k.client_properties(&camfleet_agent::sink::kafka::read_file)?;
    let mut line = format!("ok kafka security {}", k.security_protocol.as_str());
    if let Some(ca) = props.get("ssl.ca.location") {
        line += &format!(", CA {ca}");
    } else if k.security_protocol.uses_tls() {
        line += ", CA from the system trust store";
    }
    if let Some(sasl) = &k.sasl {
        let source = match &sasl.password_file {
            Some(f) => format!("password from {}", f.display()),
            None => "password in the config".to_string(),
        };
        line += &format!(
            ", SASL {} as {} ({source})",
            sasl.mechanism.librdkafka_name(),
            sasl.username
        );
    }
    println!("{line}");
    Ok(())
}

/// `validate`: the spool directory is writable and the budget fits the disk.
fn check_spool(cfg: &AgentConfig) -> anyhow::Result<()> {
    let dir = cfg.spool.dir(&cfg.data_dir);
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("spool.dir {}: cannot create", dir.display()))?;
    let probe = dir.join(".validate-probe");
    std::fs::write(&probe, b"ok")
        .with_context(|| format!("spool.dir {}: not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    let free = spool::store::free_bytes(&dir);
    let used = spool::store::du(&dir.join("db"));
    if free.saturating_add(used) < cfg.spool.min_free_bytes.saturating_add(16 << 20) {
        anyhow::bail!(
            "spool.min_free_bytes: {} leaves no room on the spool's filesystem ({} bytes free)",
            cfg.spool.min_free_bytes,
            free
        );
    }
    let usable = (free + used).saturating_sub(cfg.spool.min_free_bytes);
    if usable < cfg.spool.max_bytes {
        println!(
            "note: spool.max_bytes {} is more than the {} bytes the disk can give it now; the disk floor (min_free_bytes) will limit it",
            cfg.spool.max_bytes, usable
        );
    }
    println!(
        "ok spool {} (mode {}, up to {} bytes, {} bytes free)",
        dir.display(),
        cfg.spool.mode.as_str(),
        cfg.spool.max_bytes,
        free
    );
    Ok(())
}

async fn spool_command(command: SpoolCommand) -> anyhow::Result<()> {
    let (config, request) = match &command {
        SpoolCommand::Status { config, .. } => (config, "status"),
        SpoolCommand::Verify { config } => (config, "verify"),
    };
    let cfg = load(config)?;
    let dir = cfg.spool.dir(&cfg.data_dir);
    // A running agent holds the database; ask it. Else open it ourselves.
    let (status, problems) = match control::query(&dir, request).await {
        Some(v) if v.get("error").is_some() => anyhow::bail!("agent: {}", v["error"]),
        Some(v) if request == "verify" => (
            None,
            v["problems"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p.as_str().unwrap_or("?").to_string())
                        .collect()
                })
                .unwrap_or_default(),
        ),
        Some(v) => (Some(v), vec![]),
        None => {
            let dir2 = dir.clone();
            let (status, problems) = tokio::task::spawn_blocking(move || spool::inspect(&dir2))
                .await?
                .with_context(|| format!("spool {}", dir.display()))?;
            (Some(status), problems)
        }
    };
    match command {
        SpoolCommand::Status { json: true, .. } => {
            println!("{}", status.expect("status requested"));
        }
        SpoolCommand::Status { json: false, .. } => {
            print_status(&status.expect("status requested"))
        }
        SpoolCommand::Verify { .. } => {
            for p in &problems {
                println!("damaged: {p}");
            }
            if !problems.is_empty() {
                anyhow::bail!("spool {}: {} problems", dir.display(), problems.len());
            }
            println!("spool {} verified: no damage", dir.display());
        }
    }
    Ok(())
}

fn print_status(s: &serde_json::Value) {
    println!(
        "spool {} ({}): {} bytes on disk, {} bytes of frames, {} bytes free",
        s["dir"].as_str().unwrap_or("?"),
        if s["agent_running"].as_bool() == Some(true) {
            "agent running"
        } else {
            "agent stopped"
        },
        s["disk_bytes"],
        s["live_bytes"],
        s["free_bytes"]
    );
    println!(
        "{:<32} {:>8} {:>12} {:>12} {:>8}  evicted, not yet reported",
        "camera", "frames", "bytes", "oldest (s)", "route"
    );
    for c in s["cameras"].as_array().into_iter().flatten() {
        let gaps: Vec<String> = c["evicted_unreported"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| {
                format!(
                    "{}-{} ({})",
                    g["first"],
                    g["last"],
                    g["reason"].as_str().unwrap_or("?")
                )
            })
            .collect();
        println!(
            "{:<32} {:>8} {:>12} {:>12} {:>8}  {}",
            c["camera"].as_str().unwrap_or("?"),
            c["frames"].as_u64().unwrap_or(0),
            c["bytes"].as_u64().unwrap_or(0),
            c["oldest_age_s"]
                .as_f64()
                .map_or("-".into(), |a| format!("{a:.1}")),
            c["route"].as_str().unwrap_or("-"),
            if gaps.is_empty() {
                "-".into()
            } else {
                gaps.join(", ")
            }
        );
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
