//! `camfleet-collector train` and `camfleet-collector model ...`
//! (docs/learning.md): thin argument handling around [`super::trainer`] and
//! [`super::registry`].

use super::evaluate::LiveDecision;
use super::manifest::ModelKind;
use super::registry::{ModelName, Registry, VersionFiles};
use super::trainer;
use crate::archive::AnyArchive;
use anyhow::{bail, Context};
use camfleet_shared::config::{CollectorConfig, LearningConfig, LearningScope};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct TrainArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Only this camera (`site/camera`); default: every camera in the data.
    #[arg(long)]
    pub camera: Option<String>,
    /// Train and evaluate, print the reports, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Labelled-detections Parquet file or directory (docs/learning.md,
    /// "Training tables"). Default: the archive's per-camera-hour tables.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Frame-embeddings Parquet file or directory: trains scene models.
    /// Default: the archive's per-camera-hour tables.
    #[arg(long)]
    pub frames: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Every model with the version in force.
    List {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A model's versions and history, or one version's manifest and
    /// evaluation report.
    Show {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        version: Option<String>,
    },
    /// Put a version in force: it must load and pass its probe run, and be
    /// better than the model in force (its shadow evaluation, or a fresh one
    /// on --labels) unless --force.
    Promote {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
        version: String,
        /// Run the shadow evaluation now on these labels (Parquet).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Skip the better-than-current gate (never the load check).
        #[arg(long)]
        force: bool,
    },
    /// Restore the version in force before the current one.
    Rollback {
        #[arg(long, short)]
        config: PathBuf,
        name: String,
    },
    /// Add a model trained elsewhere (e.g. Spark): DIR holds model.onnx and
    /// manifest.toml (metrics.json, training-data.json optional). It is
    /// checked like any candidate; promote it with `model promote`.
    Import {
        #[arg(long, short)]
        config: PathBuf,
        /// Registry name, e.g. `verifier@depot@gate`.
        #[arg(long)]
        name: String,
        dir: PathBuf,
    },
}

fn load_config(path: &Path) -> anyhow::Result<CollectorConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    CollectorConfig::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

struct Context_ {
    learning: LearningConfig,
    /// `archive.root`, for messages.
    root: String,
    registry: Registry<AnyArchive>,
    ort: Option<PathBuf>,
}

async fn open(config: &Path) -> anyhow::Result<Context_> {
    let cfg = load_config(config)?;
    let archive = AnyArchive::open(&cfg.archive.root).await?;
    Ok(Context_ {
        learning: cfg.learning.clone().unwrap_or_default(),
        root: cfg.archive.root.clone(),
        registry: Registry::new(archive),
        ort: cfg
            .inference
            .as_ref()
            .and_then(|i| i.onnxruntime_library.clone()),
    })
}

fn parse_name(name: &str) -> anyhow::Result<ModelName> {
    Ok(ModelName::parse(name)?)
}

pub async fn train(args: TrainArgs) -> anyhow::Result<()> {
    for line in train_outcomes(args).await? {
        println!("{line}");
    }
    Ok(())
}

/// One training run (the CLI's and the schedule's): one line per candidate
/// saying what became of it.
pub async fn train_outcomes(args: TrainArgs) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let cx = open(&args.config).await?;
    let ort = cx.ort.as_deref();
    let wanted = |camera: &str| args.camera.as_deref().is_none_or(|c| c == camera);
    // Candidates in shadow are judged first (docs/learning.md "Live
    // shadow"): a pending one blocks new shadows of its name.
    if !args.dry_run {
        for (_, line) in live_gates(&cx, |name| {
            args.camera
                .as_deref()
                .is_none_or(|c| trainer::covers(name, c))
        })
        .await?
        {
            lines.push(line);
        }
    }
    let mut candidates = Vec::new();
    // Without --labels/--frames, train on what the collector recorded: the
    // archive's tables (ops labels winning over stillness ones).
    let from_archive = args.labels.is_none() && args.frames.is_none();
    let only = args
        .camera
        .as_deref()
        .map(camfleet_shared::CameraId::new)
        .transpose()
        .context("--camera")?;
    let labelled = match (&args.labels, from_archive) {
        (Some(path), _) => Some((
            path.display().to_string(),
            super::table::load_labelled_files(path)?,
        )),
        (None, true) => Some((
            format!("the archive's tables under {}", cx.root),
            super::dataset::load_labelled(cx.registry.archive(), only.as_ref(), None, None).await?,
        )),
        (None, false) => None,
    };
    if let Some((source, data)) = labelled {
        let data: Vec<_> = data
            .into_iter()
            .filter(|d| wanted(&d.features.camera))
            .collect();
        // Labels given explicitly must be there; the archive may simply
        // have none yet (a camera with only frames trains its scene model).
        if data.is_empty() && !from_archive {
            bail!("no labelled detections in {source} for {:?}", args.camera);
        }
        if data.is_empty() {
            lines.push(format!(
                "no labelled detections in {source} for {}: no verifier trained",
                args.camera.as_deref().unwrap_or("any camera")
            ));
        }
        let mut names = BTreeSet::new();
        for d in &data {
            let id = camfleet_shared::CameraId::new(&d.features.camera)
                .with_context(|| format!("detection {}", d.features.detection_id))?;
            names.insert(match cx.learning.scope {
                LearningScope::Camera => ModelName::verifier_for_camera(&id).to_string(),
                LearningScope::Site => ModelName::verifier_for_site(id.site()).to_string(),
            });
        }
        for n in names {
            let name = parse_name(&n)?;
            candidates.push(
                trainer::verifier_candidate(&cx.registry, &cx.learning, &name, &data, ort)
                    .await
                    .with_context(|| format!("training {name}"))?,
            );
        }
    }
    let frames = match (&args.frames, from_archive) {
        (Some(path), _) => Some(super::table::load_frame_files(path)?),
        (None, true) => Some(
            super::dataset::load_scene_embeddings(cx.registry.archive(), only.as_ref(), None, None)
                .await?
                .into_iter()
                .map(|f| (f.camera, f.capture_us, f.embedding))
                .collect(),
        ),
        (None, false) => None,
    };
    if let Some(frames) = frames {
        let cameras: BTreeSet<String> = frames
            .iter()
            .map(|f| f.0.clone())
            .filter(|c| wanted(c))
            .collect();
        for camera in cameras {
            let id = camfleet_shared::CameraId::new(&camera)?;
            let name = ModelName::scene_for_camera(&id);
            let mine: Vec<(i64, Vec<f32>)> = frames
                .iter()
                .filter(|f| f.0 == camera)
                .map(|f| (f.1, f.2.clone()))
                .collect();
            candidates.push(
                trainer::scene_candidate(&cx.learning, &name, &mine, ort)
                    .with_context(|| format!("training {name}"))?,
            );
        }
    }
    for c in candidates {
        let verdict = if c.better { "better" } else { "not better" };
        if args.dry_run {
            lines.push(format!(
                "{} (dry run, nothing written): {verdict}: {}",
                c.name, c.reason
            ));
            lines.push(c.files.metrics_json.clone());
            continue;
        }
        let version = cx.registry.add_version(&c.name, &c.files).await?;
        let shadowed = cx.learning.shadow && c.name.kind == ModelKind::Verifier;
        if c.better && shadowed {
            match cx.registry.shadow(&c.name).await? {
                Some(pending) => lines.push(format!(
                    "{} {version}: kept, not shadowed: {} is still in shadow ({})",
                    c.name, pending.version, c.reason
                )),
                None => {
                    cx.registry.set_shadow(&c.name, &version).await?;
                    lines.push(format!(
                        "{} {version}: shadow: {}; promoted once it wins on {} live labels",
                        c.name, c.reason, cx.learning.shadow_min_labels
                    ));
                }
            }
        } else if c.better {
            cx.registry.set_current(&c.name, &version).await?;
            lines.push(format!("{} {version}: promoted: {}", c.name, c.reason));
        } else {
            lines.push(format!(
                "{} {version}: kept, not promoted: {}",
                c.name, c.reason
            ));
        }
    }
    Ok(lines)
}

/// The live gate of every verifier in shadow that `wanted` selects.
async fn live_gates(
    cx: &Context_,
    wanted: impl Fn(&ModelName) -> bool,
) -> anyhow::Result<Vec<(LiveDecision, String)>> {
    let mut out = Vec::new();
    for name in cx.registry.names().await? {
        if name.kind != ModelKind::Verifier || !wanted(&name) {
            continue;
        }
        if let Some(outcome) =
            trainer::live_gate(&cx.registry, &cx.learning, &name, cx.ort.as_deref())
                .await
                .with_context(|| format!("live gate of {name}"))?
        {
            out.push(outcome);
        }
    }
    Ok(out)
}

/// The schedule's live gate pass over the registry of `config`.
pub async fn live_gate_outcomes(config: &Path) -> anyhow::Result<Vec<(LiveDecision, String)>> {
    let cx = open(config).await?;
    live_gates(&cx, |_| true).await
}

pub async fn model(command: ModelCommand) -> anyhow::Result<()> {
    match command {
        ModelCommand::List { config } => {
            let cx = open(&config).await?;
            for name in cx.registry.names().await? {
                let versions = cx.registry.versions(&name).await?;
                let current = cx.registry.current(&name).await?;
                let shadow = cx.registry.shadow(&name).await?;
                println!(
                    "{name}\tcurrent {}\tshadow {}\t{} version(s)",
                    current.as_ref().map_or("-", |p| p.version.as_str()),
                    shadow.as_ref().map_or("-", |p| p.version.as_str()),
                    versions.len()
                );
            }
            Ok(())
        }
        ModelCommand::Show {
            config,
            name,
            version,
        } => {
            let cx = open(&config).await?;
            let name = parse_name(&name)?;
            let current = cx.registry.current(&name).await?;
            match version {
                None => {
                    let versions = cx.registry.versions(&name).await?;
                    if current.is_none() && versions.is_empty() {
                        bail!(
                            "no model {name} in the registry ({})",
                            cx.registry.location(&name, "")
                        );
                    }
                    println!("model {name}");
                    match &current {
                        Some(p) => println!(
                            "current {} (since {}), history {:?}",
                            p.version, p.changed_utc, p.previous
                        ),
                        None => println!("current - (none promoted)"),
                    }
                    if let Some(s) = cx.registry.shadow(&name).await? {
                        println!("shadow {} (since {})", s.version, s.since_utc);
                    }
                    for v in versions {
                        let mark = if current.as_ref().is_some_and(|p| p.version == v) {
                            "*"
                        } else {
                            " "
                        };
                        println!("{mark} {v}");
                    }
                }
                Some(v) => {
                    let files = cx.registry.read_version(&name, &v).await?;
                    println!("model {name} version {v}");
                    println!("location {}", cx.registry.location(&name, &v));
                    // The two halves of the shadow evaluation in words; the
                    // numbers follow in metrics.json.
                    let metrics: serde_json::Value =
                        serde_json::from_str(&files.metrics_json).unwrap_or_default();
                    let verdict = |v: &serde_json::Value| match v["better"].as_bool() {
                        Some(true) => "better",
                        Some(false) => "not better",
                        None => "-",
                    };
                    let shadow = &metrics["shadow"];
                    println!(
                        "held-out gate: {}: {}",
                        verdict(shadow),
                        shadow["reason"].as_str().unwrap_or("not evaluated")
                    );
                    let live = &metrics["live"];
                    match live["decision"].as_str() {
                        Some(d) => println!(
                            "live gate: {d} after {} s in shadow: {}",
                            live["shadow_s"],
                            live["report"]["reason"].as_str().unwrap_or("")
                        ),
                        None => println!("live gate: not decided"),
                    }
                    println!("--- manifest.toml\n{}", files.manifest_toml.trim_end());
                    println!("--- metrics.json\n{}", files.metrics_json.trim_end());
                    println!(
                        "--- training-data.json\n{}",
                        files.training_data_json.trim_end()
                    );
                }
            }
            Ok(())
        }
        ModelCommand::Promote {
            config,
            name,
            version,
            labels,
            force,
        } => {
            let cx = open(&config).await?;
            let name = parse_name(&name)?;
            let labels = labels
                .as_deref()
                .map(super::table::load_labelled_files)
                .transpose()?;
            let p = trainer::promote(
                &cx.registry,
                &cx.learning,
                &name,
                &version,
                labels.as_deref(),
                force,
                cx.ort.as_deref(),
            )
            .await?;
            println!("{name}: current {} (previous {:?})", p.version, p.previous);
            Ok(())
        }
        ModelCommand::Rollback { config, name } => {
            let cx = open(&config).await?;
            let name = parse_name(&name)?;
            let p = cx.registry.rollback(&name).await?;
            println!("{name}: current {} (previous {:?})", p.version, p.previous);
            Ok(())
        }
        ModelCommand::Import { config, name, dir } => {
            let cx = open(&config).await?;
            let name = parse_name(&name)?;
            let read = |f: &str| std::fs::read(dir.join(f));
            let onnx =
                read("model.onnx").with_context(|| format!("{}: model.onnx", dir.display()))?;
            let manifest_toml = String::from_utf8(
                read("manifest.toml")
                    .with_context(|| format!("{}: manifest.toml", dir.display()))?,
            )
            .context("manifest.toml is not UTF-8")?;
            let optional = |f: &str| {
                read(f)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_else(|| "{}".into())
            };
            // A shadow verdict is ours to make: one brought along is dropped,
            // so an import reaches `current` only through our gate (or --force).
            let mut metrics: serde_json::Value = serde_json::from_str(&optional("metrics.json"))
                .unwrap_or_else(|_| serde_json::json!({}));
            if let Some(m) = metrics.as_object_mut() {
                m.remove("shadow");
            } else {
                metrics = serde_json::json!({});
            }
            let files = VersionFiles {
                onnx: onnx.into(),
                manifest_toml,
                metrics_json: serde_json::to_string_pretty(&metrics).expect("json"),
                training_data_json: optional("training-data.json"),
            };
            // Refused before anything is written.
            trainer::check_loads(&name, "import", &files, cx.ort.as_deref())?;
            let version = cx.registry.add_version(&name, &files).await?;
            println!("{name} {version}: imported (promote with `model promote {name} {version}`)");
            Ok(())
        }
    }
}
