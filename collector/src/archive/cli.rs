//! `camfleet-collector archive ls|prune|export --config FILE`: the archive
//! for people, read through its Parquet index (docs/archive.md).
//!
//! This is binary-edge code (anyhow errors, printing); the library parts it
//! calls are `catalog`, `retention` and `mpegts`.

use super::catalog::{self, HourDir};
use super::index::{GapRow, SegmentRow};
use super::{mpegts, retention, AnyArchive, Archive};
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

/// Segments (and gaps) of `camera` overlapping `[from, to)`, oldest first.
async fn select(
    archive: &AnyArchive,
    camera: &CameraId,
    from_us: Option<i64>,
    to_us: Option<i64>,
) -> anyhow::Result<(Vec<SegmentRow>, Vec<GapRow>)> {
    // A segment is filed under the hour of its first frame but may run past
    // it: look one hour further back.
    let hours: Vec<HourDir> = catalog::camera_hours(
        archive,
        camera,
        from_us.map(|f| f - catalog::HOUR_US),
        to_us,
    )
    .await?;
    let (mut segs, mut gaps) = (Vec::new(), Vec::new());
    for h in hours {
        let idx = catalog::load_hour(archive, &h.dir).await?;
        segs.extend(idx.segments.into_values().filter(|r| {
            from_us.is_none_or(|f| r.end_capture_us > f)
                && to_us.is_none_or(|t| r.start_capture_us < t)
        }));
        gaps.extend(idx.gaps.into_values().filter(|g| {
            from_us.is_none_or(|f| g.next_capture_us >= f)
                && to_us.is_none_or(|t| g.next_capture_us < t)
        }));
    }
    segs.sort_by_key(|r| (r.start_capture_us, r.first_seq));
    gaps.sort_by_key(|g| g.first_missing_seq);
    Ok((segs, gaps))
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
                let (s, g) = select(&archive, c, from_us, to_us).await?;
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
    let (segs, _) = select(archive, camera, Some(from_us), Some(to_us)).await?;
    if segs.is_empty() {
        let (all, _) = select(archive, camera, None, None).await?;
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
    let mut timeline = Timeline::default();
    let (mut frames_out, mut first_kf_seen) = (0u64, false);
    for row in &segs {
        let bytes = archive.get(&row.path).await?.with_context(|| {
            format!(
                "{} is in the index but not in the archive",
                archive.location(&row.path)
            )
        })?;
        let frames = mpegts::demux_segment(&bytes)
            .with_context(|| format!("cannot read {}", archive.location(&row.path)))?;
        drop(bytes);
        let keep = trim(row, &frames, from_us, to_us);
        let kept: Vec<&mpegts::DemuxedFrame> = frames[keep].iter().collect();
        if kept.is_empty() {
            bar.inc(row.bytes);
            continue;
        }
        if !first_kf_seen && !kept[0].keyframe {
            // The segment opens mid-GOP only after a gap in the stream
            // itself; skip to its first keyframe so the export starts decodable.
            tracing::warn!(path = %row.path, "segment starts without a keyframe; skipping to the first one");
        }
        let start = if first_kf_seen {
            0
        } else {
            kept.iter().position(|f| f.keyframe).unwrap_or(kept.len())
        };
        let kept = &kept[start..];
        if kept.is_empty() {
            bar.inc(row.bytes);
            continue;
        }
        first_kf_seen = true;
        let frame_ticks =
            (row.media_duration_us.max(1) as u64 * 90 / 1000) / row.frames.max(1) as u64;
        let ts_frames: Vec<mpegts::TsFrame<'_>> = kept
            .iter()
            .map(|f| mpegts::TsFrame {
                pts_90k: timeline.map(row, f.pts_90k, frame_ticks.max(1)),
                keyframe: f.keyframe,
                annex_b: &f.annex_b,
            })
            .collect();
        out.write_all(&mpegts::mux_segment(&ts_frames))
            .with_context(|| format!("cannot write {}", part.display()))?;
        frames_out += ts_frames.len() as u64;
        bar.inc(row.bytes);
    }
    bar.finish_and_clear();
    if frames_out == 0 {
        let _ = std::fs::remove_file(&part);
        bail!("no decodable video of {camera} in the range (no keyframe in it)");
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&part, output)
        .with_context(|| format!("cannot rename {} to {}", part.display(), output.display()))?;
    eprintln!(
        "exported {frames_out} frames of {camera} from {} segments ({:.1} s) to {}",
        segs.len(),
        timeline.out_ticks_end as f64 / 90_000.0,
        output.display()
    );
    Ok(())
}

/// The frames of a segment to keep for `[from, to)`: from the last keyframe
/// at or before `from` (each frame's capture time is estimated from the
/// segment's start and the frame's media time) to the last frame before `to`.
fn trim(
    row: &SegmentRow,
    frames: &[mpegts::DemuxedFrame],
    from_us: i64,
    to_us: i64,
) -> std::ops::Range<usize> {
    let Some(first) = frames.first() else {
        return 0..0;
    };
    let at = |f: &mpegts::DemuxedFrame| {
        let ticks = f.pts_90k.wrapping_sub(first.pts_90k) & ((1 << 33) - 1);
        row.start_capture_us + (ticks * 1000 / 90) as i64
    };
    let mut start = 0;
    for (i, f) in frames.iter().enumerate() {
        if f.keyframe && at(f) <= from_us {
            start = i;
        }
    }
    let end = frames
        .iter()
        .rposition(|f| at(f) < to_us)
        .map_or(0, |i| i + 1);
    start..end.max(start)
}

/// Maps each segment's media time onto one continuous output timeline.
#[derive(Default)]
struct Timeline {
    /// (epoch, last sequence number, last input PTS) of the previous segment.
    prev: Option<(u64, u64, u64)>,
    /// Output PTS of the previous frame, and where the next would fall.
    last_out: Option<u64>,
    out_ticks_end: u64,
    /// Input PTS of the segment's first frame, and its output PTS.
    base: (u64, u64),
    segment: Option<u64>,
}

impl Timeline {
    fn map(&mut self, row: &SegmentRow, pts_in: u64, frame_ticks: u64) -> u64 {
        const MASK: u64 = (1 << 33) - 1;
        if self.segment != Some(row.first_seq) {
            // A new segment: continue the previous one's clock if it follows
            // it directly in the same epoch, else start right after it.
            let out = match (self.prev, self.last_out) {
                (Some((epoch, last_seq, last_pts)), Some(last_out))
                    if epoch == row.epoch && last_seq + 1 == row.first_seq =>
                {
                    let d = pts_in.wrapping_sub(last_pts) & MASK;
                    last_out
                        + if d > 0 && d < 10 * 90_000 {
                            d
                        } else {
                            frame_ticks
                        }
                }
                (_, Some(last_out)) => last_out + frame_ticks,
                _ => 0,
            };
            self.base = (pts_in, out);
            self.segment = Some(row.first_seq);
        }
        let out = self.base.1 + (pts_in.wrapping_sub(self.base.0) & MASK);
        self.last_out = Some(out);
        self.out_ticks_end = out + frame_ticks;
        self.prev = Some((row.epoch, row.last_seq, pts_in));
        out
    }
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

    fn row(first: u64, frames: u32, epoch: u64, start_us: i64) -> SegmentRow {
        SegmentRow {
            camera: "s/c".into(),
            first_seq: first,
            last_seq: first + frames as u64 - 1,
            start_capture_us: start_us,
            end_capture_us: start_us + frames as i64 * 100_000,
            media_duration_us: frames as i64 * 100_000,
            frames,
            keyframes: 1,
            bytes: 1,
            path: String::new(),
            epoch,
            width: 1,
            height: 1,
            complete: true,
        }
    }

    fn frames(n: u64, gop: u64, pts0: u64) -> Vec<mpegts::DemuxedFrame> {
        (0..n)
            .map(|i| mpegts::DemuxedFrame {
                pts_90k: pts0 + i * 9000,
                keyframe: i % gop == 0,
                annex_b: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn trim_starts_at_the_keyframe_before_from_and_ends_before_to() {
        // 10 fps, 40 frames, keyframes every 10 (1 s); segment starts at t=0.
        let r = row(0, 40, 1, 0);
        let f = frames(40, 10, 500);
        assert_eq!(trim(&r, &f, 1_500_000, 3_050_000), 10..31);
        assert_eq!(trim(&r, &f, 0, 10_000_000), 0..40);
        assert_eq!(
            trim(&r, &f, -2_000_000, -1_000_000).len(),
            0,
            "before the start"
        );
    }

    #[test]
    fn the_timeline_is_continuous_across_segments_and_epochs() {
        let mut t = Timeline::default();
        let a = row(0, 3, 1, 0);
        let b = row(3, 3, 1, 0);
        let c = row(6, 3, 2, 0); // new epoch: media clock restarted
        let mut out = Vec::new();
        for (r, pts) in [(&a, 1000u64), (&b, 28_000), (&c, 0)] {
            for i in 0..3 {
                out.push(t.map(r, pts + i * 9000, 9000));
            }
        }
        assert_eq!(out, (0..9).map(|i| i * 9000).collect::<Vec<_>>());
    }
}
