//! `camfleet-collector archive ls|prune|export --config FILE`: the archive
//! for people, read through its Parquet index (docs/archive.md).
//!
//! This is binary-edge code (anyhow errors, printing); the library parts it
//! calls are `catalog`, `retention` and `mpegts`.

use super::catalog;
use super::index::{GapRow, SegmentRow};
use super::{export, retention, AnyArchive, Archive};
use anyhow::{bail, Context};
use camfleet_shared::config::CollectorConfig;
use camfleet_shared::CameraId;
use chrono::{DateTime, SecondsFormat, Utc};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Segments and gaps of the archive, from its index.
    Ls {
        #[arg(long, short)]
        config: PathBuf,
        /// `site/camera`; all cameras if left out.
        #[arg(long)]
        camera: Option<String>,
        /// Start of the range: RFC 3339 (`2025-11-21T22:00:00Z`) or relative (`-1h`, `-30m`, `-2d`).
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// End of the range (exclusive), same forms; `now` by default.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        /// One JSON object on stdout instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Applies `[archive.retention]` now: deletes whole segments, oldest first.
    Prune {
        #[arg(long, short)]
        config: PathBuf,
        /// Print what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Writes one camera's video of a time range to a single MPEG-TS file.
    Export {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        camera: String,
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        #[arg(long, allow_hyphen_values = true)]
        to: String,
        /// Output file (`.ts`).
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn load(path: &PathBuf) -> anyhow::Result<CollectorConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    CollectorConfig::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

async fn open(cfg: &CollectorConfig) -> anyhow::Result<AnyArchive> {
    // The HDFS client retries a refused connection without end; a command must answer.
    let limit = Duration::from_secs(20);
    tokio::time::timeout(limit, AnyArchive::open(&cfg.archive.root))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "archive root {:?} did not answer within {limit:?}",
                cfg.archive.root
            )
        })?
        .with_context(|| format!("cannot open archive {}", cfg.archive.root))
}

/// Parses a time: RFC 3339, `now`, or `-<n><unit>` (s, m, h, d) before now.
pub fn parse_time(text: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if text == "now" {
        return Ok(now);
    }
    if let Some(rel) = text.strip_prefix('-') {
        let (num, unit) =
            rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = num
            .parse()
            .ok()
            .filter(|_| !num.is_empty())
            .with_context(|| format!("time {text:?}: expected -<number><s|m|h|d>, e.g. -1h"))?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => bail!("time {text:?}: unit must be s, m, h or d (e.g. -90s, -30m, -1h, -2d)"),
        };
        let delta = chrono::Duration::try_seconds(n.saturating_mul(secs))
            .with_context(|| format!("time {text:?} is too far back"))?;
        return Ok(now - delta);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| {
            format!("time {text:?} is neither RFC 3339 (2025-11-21T22:00:00Z) nor relative (-1h)")
        })
}

fn camera_arg(text: &str) -> anyhow::Result<CameraId> {
    CameraId::new(text).with_context(|| format!("--camera {text:?}"))
}

fn rfc3339(us: i64) -> String {
    DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub async fn run(command: ArchiveCommand) -> anyhow::Result<()> {
    let now = Utc::now();
    match command {
        ArchiveCommand::Ls {
            config,
            camera,
            from,
            to,
            json,
        } => {
            let cfg = load(&config)?;
            let from_us = from
                .map(|t| parse_time(&t, now).map(|t| t.timestamp_micros()))
                .transpose()?;
            let to_us = to
                .map(|t| parse_time(&t, now).map(|t| t.timestamp_micros()))
                .transpose()?;
            let archive = open(&cfg).await?;
            let cameras = match camera {
                Some(c) => vec![camera_arg(&c)?],
                None => catalog::cameras(&archive).await?,
            };
            let (mut segs, mut gaps) = (Vec::new(), Vec::new());
            for c in &cameras {
                let (s, g) = catalog::select_range(&archive, c, from_us, to_us).await?;
                segs.extend(s);
                gaps.extend(g);
            }
            if json {
                let out = serde_json::json!({
                    "segments": segs.iter().map(segment_json).collect::<Vec<_>>(),
                    "gaps": gaps.iter().map(gap_json).collect::<Vec<_>>(),
                });
                println!("{out}");
            } else {
                print_ls(&segs, &gaps);
            }
            Ok(())
        }
        ArchiveCommand::Prune {
            config,
            dry_run,
            json,
        } => {
            let cfg = load(&config)?;
            prune(&cfg, dry_run, json, now).await
        }
        ArchiveCommand::Export {
            config,
            camera,
            from,
            to,
            output,
        } => {
            let cfg = load(&config)?;
            let camera = camera_arg(&camera)?;
            let from = parse_time(&from, now)?;
            let to = parse_time(&to, now)?;
            if from >= to {
                bail!(
                    "empty range: --from {} is not before --to {}",
                    from.to_rfc3339(),
                    to.to_rfc3339()
                );
            }
            match output.extension().and_then(|e| e.to_str()) {
                Some("ts") => {}
                Some("mp4") => bail!(
                    "{}: MP4 export is not built in; export .ts and remux losslessly with `ffmpeg -i out.ts -c copy out.mp4`",
                    output.display()
                ),
                _ => bail!("{}: the output must end in .ts", output.display()),
            }
            let archive = open(&cfg).await?;
            export(&archive, &camera, from, to, &output).await
        }
    }
}

fn segment_json(r: &SegmentRow) -> serde_json::Value {
    serde_json::json!({
        "camera": r.camera, "first_seq": r.first_seq, "last_seq": r.last_seq,
        "start": rfc3339(r.start_capture_us), "end": rfc3339(r.end_capture_us),
        "start_capture_us": r.start_capture_us, "end_capture_us": r.end_capture_us,
        "media_duration_us": r.media_duration_us, "frames": r.frames, "keyframes": r.keyframes,
        "bytes": r.bytes, "path": r.path, "epoch": r.epoch, "width": r.width, "height": r.height,
        "complete": r.complete,
    })
}

fn gap_json(g: &GapRow) -> serde_json::Value {
    serde_json::json!({
        "camera": g.camera, "first_missing_seq": g.first_missing_seq,
        "last_missing_seq": g.last_missing_seq, "frames": g.frames(),
        "reason": g.reason.as_str(), "before": rfc3339(g.next_capture_us),
    })
}

fn print_ls(segs: &[SegmentRow], gaps: &[GapRow]) {
    println!(
        "{:<24} {:<24} {:>9} {:>12} {:>12} {:>7} {:>10}  path",
        "camera", "start (UTC)", "seconds", "first seq", "last seq", "frames", "bytes"
    );
    for r in segs {
        println!(
            "{:<24} {:<24} {:>9.3} {:>12} {:>12} {:>7} {:>10}  {}{}",
            r.camera,
            rfc3339(r.start_capture_us),
            r.media_duration_us as f64 / 1e6,
            r.first_seq,
            r.last_seq,
            r.frames,
            r.bytes,
            r.path,
            if r.complete { "" } else { "  (open)" }
        );
    }
    let bytes: u64 = segs.iter().map(|r| r.bytes).sum();
    let secs: f64 = segs.iter().map(|r| r.media_duration_us as f64 / 1e6).sum();
    println!(
        "{} segments, {bytes} bytes, {secs:.1} s of video",
        segs.len()
    );
    for g in gaps {
        println!(
            "gap {:<24} seq {}..={} ({} frames, {}) before {}",
            g.camera,
            g.first_missing_seq,
            g.last_missing_seq,
            g.frames(),
            g.reason.as_str(),
            rfc3339(g.next_capture_us)
        );
    }
}

async fn prune(
    cfg: &CollectorConfig,
    dry_run: bool,
    json: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let limits = &cfg.archive.retention;
    if !limits.is_set() {
        bail!("[archive.retention] sets no limit (max_age_s, max_bytes or a [[archive.retention.camera]] entry)");
    }
    // What Kafka has committed bounds what may go (never anything a replay
    // would write again). A consumer in the group that never subscribes
    // reads the commits without joining the group.
    let consumer: rdkafka::consumer::BaseConsumer = crate::consume::consumer_config(&cfg.kafka)?
        .create()
        .context("Kafka consumer")?;
    let topic = cfg.kafka.connection.topic.clone();
    let committed = tokio::task::spawn_blocking(move || {
        crate::consume::committed_watermarks(&consumer, &topic, Duration::from_secs(15))
    })
    .await?
    .context("cannot read the committed watermarks from Kafka (retention needs them to know what is safe to delete)")?;
    let archive = open(cfg).await?;
    let cameras = catalog::cameras(&archive).await?;
    let held = retention::inventory(&archive, &cameras).await?;
    let plan = retention::plan(held, limits, now.timestamp_micros(), &committed);
    let done = if dry_run {
        retention::Applied::default()
    } else {
        retention::apply(&archive, &plan).await?
    };
    if json {
        let out = serde_json::json!({
            "dry_run": dry_run,
            "planned": plan.iter().map(|d| {
                let mut v = segment_json(&d.row);
                v["reason"] = serde_json::to_value(d.reason).unwrap_or_default();
                v
            }).collect::<Vec<_>>(),
            "deleted_segments": done.segments,
            "deleted_bytes": done.bytes,
            "leftovers_deleted": done.leftovers,
        });
        println!("{out}");
    } else {
        for d in &plan {
            println!(
                "{} {} ({:?}, {} bytes, {})",
                if dry_run { "would delete" } else { "deleted" },
                d.row.path,
                d.reason,
                d.row.bytes,
                rfc3339(d.row.start_capture_us)
            );
        }
        for ((camera, reason), (n, bytes)) in retention::summarize(&plan) {
            println!("{camera}: {n} segments, {bytes} bytes ({reason:?})");
        }
        if dry_run {
            println!(
                "dry run: {} segments would be deleted, nothing was",
                plan.len()
            );
        } else {
            println!(
                "deleted {} segments, {} bytes ({} leftover files of an interrupted run)",
                done.segments, done.bytes, done.leftovers
            );
        }
    }
    Ok(())
}

/// Streams the range to `output`, one segment in memory at a time: each
/// segment is read, its frames outside the range dropped (the start moves
/// back to the keyframe at or before `from`, so the file starts decodable),
/// timestamps rebased so the file plays as one continuous timeline (also
/// across an epoch change, where the agent's media clock restarts, and
/// across gaps), and muxed again. The file appears under its name only when
/// complete.
async fn export(
    archive: &AnyArchive,
    camera: &CameraId,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let (from_us, to_us) = (from.timestamp_micros(), to.timestamp_micros());
    let (segs, _) = catalog::select_range(archive, camera, Some(from_us), Some(to_us)).await?;
    if segs.is_empty() {
        let (all, _) = catalog::select_range(archive, camera, None, None).await?;
        let held = match (all.first(), all.last()) {
            (Some(a), Some(b)) => format!(
                "it holds {} .. {}",
                rfc3339(a.start_capture_us),
                rfc3339(b.end_capture_us)
            ),
            _ => "it holds no video of this camera".into(),
        };
        bail!(
            "no video of {camera} between {} and {} in the archive ({held})",
            from.to_rfc3339_opts(SecondsFormat::Secs, true),
            to.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
    }
    let total: u64 = segs.iter().map(|r| r.bytes).sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a fixed template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("export {camera}"));
    let name = output
        .file_name()
        .with_context(|| format!("{}: not a file name", output.display()))?
        .to_string_lossy();
    let part = output.with_file_name(format!(".{name}.part"));
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&part)
            .with_context(|| format!("cannot create {}", part.display()))?,
    );
    let mut range = export::RangeExport::new(from_us, to_us);
    for row in &segs {
        let bytes = archive.get(&row.path).await?.with_context(|| {
            format!(
                "{} is in the index but not in the archive",
                archive.location(&row.path)
            )
        })?;
        let ts = range
            .segment(row, &bytes)
            .with_context(|| format!("cannot read {}", archive.location(&row.path)))?;
        drop(bytes);
        out.write_all(&ts)
            .with_context(|| format!("cannot write {}", part.display()))?;
        bar.inc(row.bytes);
    }
    bar.finish_and_clear();
    if range.frames_out() == 0 {
        let _ = std::fs::remove_file(&part);
        bail!("no decodable video of {camera} in the range (no keyframe in it)");
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&part, output)
        .with_context(|| format!("cannot rename {} to {}", part.display(), output.display()))?;
    eprintln!(
        "exported {} frames of {camera} from {} segments ({:.1} s) to {}",
        range.frames_out(),
        segs.len(),
        range.duration_s(),
        output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_relative() {
        let now = DateTime::parse_from_rfc3339("2025-01-02T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(
            parse_time("-1h", now).unwrap().to_rfc3339(),
            "2025-01-02T02:00:00+00:00"
        );
        assert_eq!(
            parse_time("-90s", now).unwrap().to_rfc3339(),
            "2025-01-02T02:58:30+00:00"
        );
        assert_eq!(
            parse_time("-2d", now).unwrap().to_rfc3339(),
            "2024-12-31T03:00:00+00:00"
        );
        assert_eq!(
            parse_time("2025-01-01T01:00:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2025-01-01T00:00:00+00:00"
        );
        for bad in ["-1w", "-h", "yesterday", "2025-01-01"] {
            let e = parse_time(bad, now).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
