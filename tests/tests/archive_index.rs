//! The archive's Parquet index, retention and export (issue 9), end to end:
//! agent -> real Kafka -> collector -> local directory or real HDFS, checked
//! by independent readers: pyarrow and pyspark (PyPI, installed by
//! scripts/setup into a cached venv), ffprobe/ffmpeg, the Java FsShell.

use camfleet_tests::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const W: u32 = 320;
const H: u32 = 240;

fn pattern(id: &str, frames: u64, paced: bool) -> PatternCamera<'_> {
    PatternCamera {
        id,
        width: W,
        height: H,
        fps: 30,
        frames,
        paced,
    }
}

/// Runs `camfleet-collector archive <args> --config <config>`; (success, stdout, stderr).
fn archive_cmd(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("camfleet-collector"))
        .arg("archive")
        .args(args)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn archive_ok(config: &Path, args: &[&str]) -> String {
    let (ok, out, err) = archive_cmd(config, args);
    assert!(ok, "archive {args:?} failed:\n{err}\n{out}");
    out
}

fn ls_json(config: &Path) -> Value {
    serde_json::from_str(&archive_ok(config, &["ls", "--json"])).unwrap()
}

/// Frames in all segment rows of an `archive ls --json` answer.
fn indexed_frames(ls: &Value) -> u64 {
    ls["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["frames"].as_u64().unwrap())
        .sum()
}

/// The python of the analytics venv (pyarrow, pyspark).
fn analytics_python() -> String {
    std::env::var("CAMFLEET_ANALYTICS_PYTHON")
        .expect("CAMFLEET_ANALYTICS_PYTHON is not set: run scripts/setup and source .services/env")
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(analytics_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("SPARK_LOCAL_IP", "127.0.0.1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// pyarrow reads every index file under `root`: (path, frames, bytes,
/// complete) of each segment row, and every gaps row.
const PYARROW_ROWS: &str = r#"
import json, os, sys
import pyarrow.parquet as pq
root = sys.argv[1]
segs, gaps = [], []
for d, _, files in sorted(os.walk(root)):
    for f in files:
        if f == "segments.parquet":
            t = pq.read_table(os.path.join(d, f))
            assert t.schema.metadata[b"camfleet.index.version"] == b"1"
            assert str(t.schema.field("start_capture_time").type) == "timestamp[us, tz=UTC]"
            for r in t.to_pylist():
                segs.append([r["path"], r["frames"], r["bytes"], r["complete"], r["camera"]])
        elif f == "gaps.parquet":
            gaps.extend(pq.read_table(os.path.join(d, f)).to_pylist())
print(json.dumps({"segments": sorted(segs), "gaps": len(gaps)}))
"#;

/// Spark SQL over the segments table of a local archive: frames and
/// segments per camera and UTC hour.
const PYSPARK_PER_HOUR: &str = r#"
import json, sys
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[1]")
         .config("spark.driver.host", "127.0.0.1")
         .config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.ui.enabled", "false")
         .config("spark.sql.session.timeZone", "UTC")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
spark.read.parquet(sys.argv[1] + "/*/*/*/*/*/*/segments.parquet").createOrReplaceTempView("segments")
rows = spark.sql("""
  SELECT camera, date_format(date_trunc('HOUR', start_capture_time), 'yyyy/MM/dd/HH') AS hour,
         CAST(SUM(frames) AS BIGINT) AS frames, COUNT(*) AS segments
  FROM segments GROUP BY 1, 2 ORDER BY 1, 2""").collect()
print(json.dumps([[r.camera, r.hour, r.frames, r.segments] for r in rows]))
spark.stop()
"#;

/// (relative path, bytes) of every segment file under `root`.
fn files_on_disk(root: &Path) -> BTreeSet<(String, u64)> {
    segments_under(root)
        .into_iter()
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (
                p.strip_prefix(root).unwrap().to_string_lossy().into_owned(),
                len,
            )
        })
        .collect()
}

/// Every index row as pyarrow reads it: path -> (frames, bytes, complete).
fn rows_by_pyarrow(root: &Path) -> BTreeMap<String, (u64, u64, bool)> {
    let v: Value = serde_json::from_str(&python(PYARROW_ROWS, &[root.to_str().unwrap()])).unwrap();
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                (
                    r[1].as_u64().unwrap(),
                    r[2].as_u64().unwrap(),
                    r[3].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// Index rows == segment files (same paths, same sizes), and each row's
/// frame count is what ffprobe counts in its file.
fn assert_index_matches_disk(root: &Path) {
    let rows = rows_by_pyarrow(root);
    let disk = files_on_disk(root);
    let from_rows: BTreeSet<(String, u64)> =
        rows.iter().map(|(p, (_, b, _))| (p.clone(), *b)).collect();
    assert_eq!(from_rows, disk, "index rows vs segment files");
    for (path, (frames, _, _)) in &rows {
        let (_, _, _, n) = ffprobe_frames(&root.join(path));
        assert_eq!(*frames, n, "{path}: index frames vs ffprobe");
    }
}

fn config_file(run: &Scenario, name: &str, root: &str, retention: &str) -> PathBuf {
    let text = run.collector_config(root);
    let text = text.replace(
        "idle_flush_ms = 1500\n",
        &format!("idle_flush_ms = 1500\n{retention}"),
    );
    let path = run.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn archive_ops_index_lists_every_segment_and_spark_counts_frames_per_camera_and_hour() {
    let run = Scenario::new("index", 3);
    let n = 90;
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    for cam in ["depot/gate", "yard/north"] {
        run.agent(&pattern(cam, n, false), "")
            .wait_success(Duration::from_secs(60));
    }
    wait_until(Duration::from_secs(60), "all frames archived", || {
        segments_under(&root)
            .iter()
            .map(|s| ffprobe_frames(s).3)
            .sum::<u64>()
            == 2 * n
    });
    collector.signal("TERM");
    collector.wait_success(Duration::from_secs(15));

    assert_index_matches_disk(&root);
    let rows = rows_by_pyarrow(&root);
    // The open segment of each camera was snapshotted at shutdown: listed, not complete.
    assert_eq!(rows.values().filter(|r| !r.2).count(), 2, "{rows:?}");

    // Expected frames per camera and hour, from the files: ffprobe counts,
    // grouped by the directory they are in.
    let mut expected: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for (path, _) in files_on_disk(&root) {
        let parts: Vec<&str> = path.split('/').collect();
        let key = (parts[..2].join("/"), parts[2..6].join("/"));
        let e = expected.entry(key).or_default();
        e.0 += ffprobe_frames(&root.join(&path)).3;
        e.1 += 1;
    }
    let spark: Value =
        serde_json::from_str(python(PYSPARK_PER_HOUR, &[root.to_str().unwrap()]).trim()).unwrap();
    let got: BTreeMap<(String, String), (u64, u64)> = spark
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (
                    r[0].as_str().unwrap().to_string(),
                    r[1].as_str().unwrap().to_string(),
                ),
                (r[2].as_u64().unwrap(), r[3].as_u64().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        got, expected,
        "Spark SQL over the index vs ffprobe over the files"
    );
    assert_eq!(got.values().map(|v| v.0).sum::<u64>(), 2 * n);

    // `archive ls` reads the same index.
    let config = config_file(&run, "ls", root.to_str().unwrap(), "");
    let ls = ls_json(&config);
    assert_eq!(ls["segments"].as_array().unwrap().len(), rows.len(), "{ls}");
    let one = archive_ok(&config, &["ls", "--camera", "yard/north", "--from", "-1h"]);
    assert!(
        one.contains("yard/north") && !one.contains("depot/gate"),
        "{one}"
    );
    let (ok, _, err) = archive_cmd(&config, &["ls", "--from", "yesterday"]);
    assert!(!ok && err.contains("\"yesterday\""), "{err}");
}

/// Paths of the segment rows of `camera` in `ls` order (oldest first).
fn paths_of(ls: &Value, camera: &str) -> Vec<(String, u64, bool)> {
    ls["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["camera"] == camera)
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
                r["complete"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Bytes of every file under `root` (index files included), to prove a dry run touched nothing.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn archive_ops_retention_by_size_and_age_deletes_exactly_the_oldest_whole_segments() {
    let run = Scenario::new("retention", 3);
    let n = 150; // 5 s of video in 1 s segments
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    run.agent(&pattern("old/cam", n, false), "")
        .wait_success(Duration::from_secs(60));
    let plain = config_file(&run, "plain", root.to_str().unwrap(), "");
    wait_until(Duration::from_secs(60), "old/cam archived", || {
        paths_of(&ls_json(&plain), "old/cam").len() >= 5
    });
    // The two cameras' video is 10 s apart in capture time.
    std::thread::sleep(Duration::from_secs(10));
    run.agent(&pattern("new/cam", n, false), "")
        .wait_success(Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "new/cam archived", || {
        paths_of(&ls_json(&plain), "new/cam").len() >= 5
    });
    collector.signal("TERM");
    collector.wait_success(Duration::from_secs(15));

    let before = ls_json(&plain);
    let old = paths_of(&before, "old/cam");
    let new = paths_of(&before, "new/cam");
    assert!(
        !old.last().unwrap().2,
        "the open segment is marked: {old:?}"
    );
    let total: u64 = old.iter().chain(&new).map(|s| s.1).sum();

    // By size: exactly the two oldest segments must go.
    let max = total - old[0].1 - old[1].1;
    let by_size = config_file(
        &run,
        "size",
        root.to_str().unwrap(),
        &format!("[archive.retention]\nmax_bytes = {max}\n"),
    );
    let tree_before = tree(&root);
    let dry: Value =
        serde_json::from_str(&archive_ok(&by_size, &["prune", "--dry-run", "--json"])).unwrap();
    let planned: Vec<&str> = dry["planned"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(planned, [old[0].0.as_str(), old[1].0.as_str()], "{dry}");
    assert_eq!(tree(&root), tree_before, "--dry-run changed the archive");

    let done: Value = serde_json::from_str(&archive_ok(&by_size, &["prune", "--json"])).unwrap();
    assert_eq!(done["deleted_segments"], 2, "{done}");
    assert_eq!(done["deleted_bytes"], old[0].1 + old[1].1, "{done}");
    assert!(!root.join(&old[0].0).exists() && !root.join(&old[1].0).exists());
    let after = ls_json(&plain);
    assert_eq!(paths_of(&after, "old/cam"), old[2..]);
    assert_eq!(paths_of(&after, "new/cam"), new);
    assert_index_matches_disk(&root);
    // Under the limit now: a second run deletes nothing.
    let again: Value = serde_json::from_str(&archive_ok(&by_size, &["prune", "--json"])).unwrap();
    assert_eq!(again["deleted_segments"], 0, "{again}");

    // By age: old/cam's video ended >= 10 s ago, new/cam's within a few
    // seconds. Its whole segments go, except the one still open in the
    // collector (never deleted); new/cam is untouched.
    let by_age = config_file(
        &run,
        "age",
        root.to_str().unwrap(),
        "[archive.retention]\nmax_age_s = 7\n",
    );
    let done: Value = serde_json::from_str(&archive_ok(&by_age, &["prune", "--json"])).unwrap();
    assert_eq!(
        done["deleted_segments"].as_u64().unwrap(),
        old.len() as u64 - 3,
        "{done}"
    );
    let after = ls_json(&plain);
    assert_eq!(paths_of(&after, "old/cam"), old[old.len() - 1..]);
    assert_eq!(paths_of(&after, "new/cam"), new);
    assert_index_matches_disk(&root);

    // A limit Kafka's commits do not cover yet is not applied: a fresh
    // consumer group has committed nothing, so nothing is deletable.
    let foreign = config_file(
        &run,
        "foreign",
        root.to_str().unwrap(),
        "[archive.retention]\nmax_bytes = 1\n",
    );
    let text = std::fs::read_to_string(&foreign)
        .unwrap()
        .replace(".collectors\"", ".nobody\"");
    std::fs::write(&foreign, text).unwrap();
    let none: Value = serde_json::from_str(&archive_ok(&foreign, &["prune", "--json"])).unwrap();
    assert_eq!(none["deleted_segments"], 0, "{none}");
    let (ok, _, err) = archive_cmd(&plain, &["prune"]);
    assert!(!ok && err.contains("sets no limit"), "{err}");
}

/// (pts of every frame in seconds, key_frame flags) by ffprobe.
fn ffprobe_pts(path: &Path) -> Vec<(f64, bool)> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pts_time,key_frame",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            // ffprobe prints key_frame first, then pts_time.
            (f[1].parse().unwrap(), f[0] == "1")
        })
        .collect()
}

/// Starts at a keyframe, frames 1/30 s apart with no jump anywhere.
fn assert_plays_smoothly(path: &Path) -> f64 {
    let pts = ffprobe_pts(path);
    assert!(pts[0].1, "{}: does not start at a keyframe", path.display());
    for w in pts.windows(2) {
        let d = w[1].0 - w[0].0;
        assert!(
            (d - 1.0 / 30.0).abs() < 0.002,
            "{}: timestamp jump {d} s at {}",
            path.display(),
            w[0].0
        );
    }
    pts.last().unwrap().0 - pts[0].0 + 1.0 / 30.0
}

#[test]
fn archive_ops_export_trims_to_keyframes_and_plays_through_an_epoch_change() {
    let run = Scenario::new("export", 3);
    let root = run.dir.path().join("archive");
    let collector = run.collector("collector", root.to_str().unwrap());
    // Two runs of one live camera: the restart begins a new stream epoch
    // (a new media clock), sequence numbers continue.
    run.agent(&pattern("dock/cam", 120, true), "")
        .wait_success(Duration::from_secs(60));
    run.agent(&pattern("dock/cam", 90, true), "")
        .wait_success(Duration::from_secs(60));
    let config = config_file(&run, "export", root.to_str().unwrap(), "");
    wait_until(Duration::from_secs(60), "all 210 frames indexed", || {
        indexed_frames(&ls_json(&config)) == 210
    });
    collector.signal("TERM");
    collector.wait_success(Duration::from_secs(15));
    let ls = ls_json(&config);
    let segs = ls["segments"].as_array().unwrap();
    let epochs: BTreeSet<u64> = segs.iter().map(|r| r["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs.len(), 2, "{ls}");
    let start = segs[0]["start"].as_str().unwrap();
    let end = segs.last().unwrap()["end"].as_str().unwrap();

    // The whole range, across the epoch change: every frame, in order, one timeline.
    let all = run.dir.path().join("all.ts");
    archive_ok(
        &config,
        &[
            "export",
            "--camera",
            "dock/cam",
            "--from",
            start,
            "--to",
            end,
            "-o",
            all.to_str().unwrap(),
        ],
    );
    // The test pattern numbers each run's frames from 0.
    assert_eq!(
        frame_numbers(&all, W, H),
        (0..120).chain(0..90).collect::<Vec<_>>()
    );
    let secs = assert_plays_smoothly(&all);
    assert!((secs - 7.0).abs() < 0.01, "duration {secs}");

    // 2 s from 1.2 s into the first run: starts at the keyframe at or before
    // it (GOP = 15 frames = 0.5 s), so 2 s to 2.5 s long.
    let t0 = segs[0]["start_capture_us"].as_i64().unwrap();
    let rfc = |us: i64| {
        let s = us.div_euclid(1_000_000);
        let out = Command::new("date")
            .args([
                "-u",
                "-d",
                &format!("@{s}.{:06}", us.rem_euclid(1_000_000)),
                "+%Y-%m-%dT%H:%M:%S.%6NZ",
            ])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let part = run.dir.path().join("part.ts");
    archive_ok(
        &config,
        &[
            "export",
            "--camera",
            "dock/cam",
            "--from",
            &rfc(t0 + 1_200_000),
            "--to",
            &rfc(t0 + 3_200_000),
            "-o",
            part.to_str().unwrap(),
        ],
    );
    let secs = assert_plays_smoothly(&part);
    assert!(
        (2.0 - 1.0 / 30.0..=2.5 + 1.0 / 30.0).contains(&secs),
        "duration {secs}"
    );
    let numbers = frame_numbers(&part, W, H);
    assert!(
        numbers[0].is_multiple_of(15),
        "starts at a keyframe: {numbers:?}"
    );
    assert_eq!(
        numbers,
        (numbers[0]..numbers[0] + numbers.len() as u64).collect::<Vec<_>>()
    );

    // A range with no video: a clear error, no file.
    let none = run.dir.path().join("none.ts");
    let (ok, _, err) = archive_cmd(
        &config,
        &[
            "export",
            "--camera",
            "dock/cam",
            "--from",
            "-10d",
            "--to",
            "-9d",
            "-o",
            none.to_str().unwrap(),
        ],
    );
    assert!(!ok && err.contains("no video of dock/cam between"), "{err}");
    assert!(!none.exists());
}

/// The HDFS path of `root` (`hdfs://host:port/base` -> `/base`).
fn hdfs_base(root: &str) -> String {
    let rest = root.strip_prefix("hdfs://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

/// (path relative to `base`, bytes) of every segment file, by the Java FsShell.
fn fsshell_segments(run: &Scenario, base: &str) -> BTreeSet<(String, u64)> {
    run.services
        .hdfs_shell(&["-ls", "-R", base])
        .lines()
        .filter(|l| l.ends_with(".ts") && !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[f.len() - 1];
            let rel = path.strip_prefix(&format!("{base}/")).unwrap().to_string();
            (rel, f[4].parse().unwrap())
        })
        .filter(|(rel, _)| !rel.rsplit('/').next().unwrap().starts_with('.'))
        .collect()
}

fn services_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: source .services/env"))
}

/// Stops the HDFS service (the MiniDFSCluster JVM: NameNode and DataNode).
fn stop_hdfs() {
    let pid_file = Path::new(&services_var("CAMFLEET_SERVICES_DIR")).join("run/hdfs.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let pid = pid.trim();
    assert!(Command::new("kill").arg(pid).status().unwrap().success());
    wait_until(Duration::from_secs(30), "HDFS stopped", || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

/// Starts what is missing of the services again (HDFS keeps its data).
fn start_hdfs() {
    let nodes = services_var("KAFKA_NODES");
    let out = Command::new(services_var("CAMFLEET_SERVICES"))
        .args(["up", "--kafka-nodes", &nodes])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/services up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn archive_ops_on_hdfs_index_matches_fsshell_survives_a_30_s_outage_and_prunes() {
    let run = Scenario::new("hdfs-index", 3);
    let n = 450; // 15 s of live video
    let root = format!("{}/camfleet-test/{}", run.services.hdfs, run.topic);
    let base = hdfs_base(&root);
    let collector = run.collector("collector", &root);
    let agent = run.agent(&pattern("quay/crane", n, true), "");
    collector.wait_log(Duration::from_secs(30), "first segments", |log| {
        log.matches("segment archived").count() >= 3
    });
    stop_hdfs();
    let at_stop = collector.log_text().matches("segment archived").count();
    // The camera finishes its 15 s while HDFS is away; Kafka holds the video.
    agent.wait_success(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(30));
    let before_restart = collector.log_text().matches("segment archived").count();
    assert!(
        before_restart <= at_stop + 1,
        "segments archived while HDFS was down: {at_stop} -> {before_restart}"
    );
    start_hdfs();
    let config = config_file(&run, "hdfs", &root, "");
    wait_until(
        Duration::from_secs(90),
        "all frames indexed after the outage",
        || {
            let (ok, out, _) = archive_cmd(&config, &["ls", "--json"]);
            ok && serde_json::from_str::<Value>(&out).is_ok_and(|v| indexed_frames(&v) == n)
        },
    );
    collector.signal("TERM");
    let summary = collector.wait_summary(Duration::from_secs(20));
    assert_eq!(summary["frames_archived"], n, "{summary}");

    // The index (read by our ls, and by pyarrow from a copy FsShell made)
    // lists exactly the files FsShell lists, and every frame once.
    let listed = fsshell_segments(&run, &base);
    let ls = ls_json(&config);
    let rows: BTreeSet<(String, u64)> = paths_of(&ls, "quay/crane")
        .into_iter()
        .map(|(p, b, _)| (p, b))
        .collect();
    assert_eq!(rows, listed, "index rows vs FsShell -ls");
    let local = run.dir.path().join("from-hdfs");
    std::fs::create_dir_all(&local).unwrap();
    run.services.hdfs_shell(&[
        "-copyToLocal",
        &format!("{base}/quay"),
        local.to_str().unwrap(),
    ]);
    assert_index_matches_disk(&local);
    let numbers: Vec<u64> = segments_under(&local)
        .iter()
        .flat_map(|s| frame_numbers(s, W, H))
        .collect();
    assert_eq!(
        numbers,
        (0..n).collect::<Vec<_>>(),
        "every frame exactly once"
    );

    // Retention by size on HDFS: the two oldest segments go, files and rows.
    let segs = paths_of(&ls, "quay/crane");
    let total: u64 = segs.iter().map(|s| s.1).sum();
    let max = total - segs[0].1 - segs[1].1;
    let prune = config_file(
        &run,
        "hdfs-prune",
        &root,
        &format!("[archive.retention]\nmax_bytes = {max}\n"),
    );
    let dry: Value =
        serde_json::from_str(&archive_ok(&prune, &["prune", "--dry-run", "--json"])).unwrap();
    assert_eq!(dry["planned"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(
        fsshell_segments(&run, &base),
        listed,
        "--dry-run deleted something"
    );
    let done: Value = serde_json::from_str(&archive_ok(&prune, &["prune", "--json"])).unwrap();
    assert_eq!(done["deleted_segments"], 2, "{done}");
    let expected: BTreeSet<(String, u64)> =
        segs[2..].iter().map(|(p, b, _)| (p.clone(), *b)).collect();
    assert_eq!(fsshell_segments(&run, &base), expected);
    let rows: BTreeSet<(String, u64)> = paths_of(&ls_json(&config), "quay/crane")
        .into_iter()
        .map(|(p, b, _)| (p, b))
        .collect();
    assert_eq!(rows, expected);
}

#[test]
fn archive_ops_sigkill_during_index_rewrites_leaves_every_index_file_whole() {
    let run = Scenario::new("index-kill", 3);
    let root = run.dir.path().join("archive");
    // One segment per GOP (0.5 s) for three cameras: six index rewrites a second.
    let config = run
        .collector_config(root.to_str().unwrap())
        .replace("segment_target_ms = 1000", "segment_target_ms = 100");
    let n = 300; // 10 s
    let cams = ["k/a", "k/b", "k/c"];
    let agents: Vec<Proc> = cams
        .iter()
        .map(|c| run.agent(&pattern(c, n, true), ""))
        .collect();
    for round in 0..6u64 {
        let c = run.spawn(&format!("collector-{round}"), "camfleet-collector", &config);
        c.wait_log(Duration::from_secs(30), "index writes", |log| {
            log.matches("segment archived").count() >= 2
        });
        // Somewhere inside the next rewrites.
        std::thread::sleep(Duration::from_millis(150 + 97 * round));
        c.signal("KILL");
        drop(c);
        // Every index file reads whole (pyarrow raises on a torn file).
        rows_by_pyarrow(&root);
    }
    let last = run.spawn("collector-last", "camfleet-collector", &config);
    for a in agents {
        a.wait_success(Duration::from_secs(60));
    }
    let ls_config = config_file(&run, "ls", root.to_str().unwrap(), "");
    wait_until(Duration::from_secs(60), "all frames indexed", || {
        indexed_frames(&ls_json(&ls_config)) == 3 * n
    });
    last.signal("TERM");
    last.wait_success(Duration::from_secs(20));
    assert_index_matches_disk(&root);
    for cam in cams {
        let numbers: Vec<u64> = segments_under(&root.join(cam))
            .iter()
            .flat_map(|s| frame_numbers(s, W, H))
            .collect();
        assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "{cam}");
    }
}

#[test]
fn archive_ops_the_collector_applies_retention_while_it_runs() {
    let run = Scenario::new("retention-live", 3);
    let root = run.dir.path().join("archive");
    let max = 150_000u64;
    let config = run.collector_config(root.to_str().unwrap()).replace(
        "idle_flush_ms = 1500\n",
        &format!("idle_flush_ms = 1500\n[archive.retention]\nmax_bytes = {max}\ninterval_s = 1\n"),
    );
    let metrics = free_local_addr();
    let config = config.replace("listen = \"\"", &format!("listen = \"{metrics}\""));
    let collector = run.spawn("collector", "camfleet-collector", &config);
    let n = 300; // 10 s, ~47 KB per 1 s segment
    run.agent(&pattern("live/cam", n, true), "")
        .wait_success(Duration::from_secs(60));
    let ls_config = config_file(&run, "ls", root.to_str().unwrap(), "");
    // Retention keeps the complete segments within the limit as it goes.
    wait_until(Duration::from_secs(60), "retention to catch up", || {
        let ls = ls_json(&ls_config);
        let segs = paths_of(&ls, "live/cam");
        let complete: u64 = segs.iter().filter(|s| s.2).map(|s| s.1).sum();
        segs.last().is_some_and(|s| !s.2) && complete <= max && {
            // The open segment reached the last frame.
            ls["segments"].as_array().unwrap().last().unwrap()["last_seq"] == n - 1
        }
    });
    let text = http_get(&metrics, "/metrics");
    let deleted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("camfleet_collector_retention_segments_deleted_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(deleted >= 3, "{text}");
    collector.signal("TERM");
    collector.wait_success(Duration::from_secs(20));
    assert_index_matches_disk(&root);
    // What is left is the newest video, whole: a contiguous tail of frames.
    let numbers: Vec<u64> = segments_under(&root)
        .iter()
        .flat_map(|s| frame_numbers(s, W, H))
        .collect();
    assert_eq!(numbers.last(), Some(&(n - 1)));
    assert_eq!(numbers, (numbers[0]..n).collect::<Vec<_>>());
    assert!(
        numbers[0] > 0 && numbers[0].is_multiple_of(15),
        "starts at a GOP: {}",
        numbers[0]
    );
}
