//! Agent -> real Kafka -> collector -> archive (local directory and real HDFS),
//! checked by ffprobe/ffmpeg as independent peers; and the collector killed
//! with SIGKILL mid-run and restarted still archives every frame exactly once.

use camfleet_tests::*;
use std::path::Path;
use std::time::Duration;

const W: u32 = 320;
const H: u32 = 240;

/// A 320x240 test-pattern camera at 30 fps.
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

/// Every frame number seen across the archive's segments, in path order.
fn archived_frame_numbers(root: &Path) -> Vec<u64> {
    segments_under(root)
        .iter()
        .flat_map(|seg| frame_numbers(seg, W, H))
        .collect()
}

fn archived_frames_by_ffprobe(root: &Path) -> u64 {
    segments_under(root)
        .iter()
        .map(|seg| {
            let (codec, w, h, n) = ffprobe_frames(seg);
            assert_eq!((codec.as_str(), w, h), ("h264", W, H), "{}", seg.display());
            n
        })
        .sum()
}

#[test]
fn collector_archives_playable_segments_to_a_local_directory() {
    let run = Scenario::new("local", 3);
    let n = 120;
    let agent = run.agent(&pattern("yard/east", n, false), "");
    let root = run.dir.path().join("archive");
    let metrics = free_local_addr();
    let config = run.collector_config(root.to_str().unwrap());
    let config = config.replace("listen = \"\"", &format!("listen = \"{metrics}\""));
    let collector = run.spawn("collector", "camfleet-collector", &config);
    agent.wait_success(Duration::from_secs(60));
    wait_until(Duration::from_secs(60), "all frames archived", || {
        archived_frames_by_ffprobe(&root) == n
    });
    // Ops scrape the same numbers from /metrics.
    let text = http_get(&metrics, "/metrics");
    assert!(
        text.lines()
            .any(|l| l == format!("camfleet_collector_frames_archived_total {n}")),
        "{text}"
    );
    assert!(
        text.contains("# HELP camfleet_collector_sequence_gap_frames_total"),
        "{text}"
    );
    // Consumer lag per partition (librdkafka statistics, every 5 s): the
    // collector has caught up with all three partitions.
    let mut text = text;
    wait_until(Duration::from_secs(20), "consumer lag on /metrics", || {
        text = http_get(&metrics, "/metrics");
        text.lines()
            .filter(|l| l.starts_with("camfleet_collector_consumer_lag_records{partition="))
            .count()
            == 3
    });
    assert!(
        text.lines()
            .filter(|l| l.starts_with("camfleet_collector_consumer_lag_records{"))
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
    collector.signal("TERM");
    let summary = collector.wait_summary(Duration::from_secs(15));
    assert_eq!(summary["frames_archived"], n, "{summary}");
    assert_eq!(summary["sequence_gaps"], 0, "{summary}");

    let segs = segments_under(&root);
    assert!(segs.len() >= 3, "1 s segments of a 4 s clip: {segs:?}");
    // Layout: <root>/<site>/<camera>/<yyyy>/<mm>/<dd>/<hh>/<first-seq>.ts
    let rel = segs[0]
        .strip_prefix(&root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!(&parts[..2], ["yard", "east"], "{rel}");
    assert_eq!(parts.len(), 7, "{rel}");
    assert_eq!(parts[6], "00000000000000000000.ts");
    // GOP-aligned: every segment starts with a keyframe, so each decodes alone
    // and the frame numbers across them are exactly 0..n.
    assert_eq!(archived_frame_numbers(&root), (0..n).collect::<Vec<_>>());
}

#[test]
fn collector_archives_to_real_hdfs_readable_by_the_java_shell() {
    let run = Scenario::new("hdfs", 3);
    let n = 90;
    let base = format!("/camfleet-test/{}", run.topic);
    let root = format!("{}{base}", run.services.hdfs);
    let agent = run.agent(&pattern("dock/west", n, false), "");
    let collector = run.collector("collector", &root);
    agent.wait_success(Duration::from_secs(60));
    collector.wait_log(
        Duration::from_secs(60),
        "all frames archived to HDFS",
        |log| log.matches("segment archived").count() >= 3 && log.contains("last_seq=89"),
    );
    collector.signal("TERM");
    collector.wait_success(Duration::from_secs(15));

    let listing = run.services.hdfs_shell(&["-ls", "-R", &base]);
    let names: Vec<&str> = listing.lines().filter(|l| l.ends_with(".ts")).collect();
    assert!(names.len() >= 3, "{listing}");
    assert!(
        !listing.contains(".tmp"),
        "temp files left behind: {listing}"
    );
    let local = run.dir.path().join("from-hdfs");
    std::fs::create_dir_all(&local).unwrap();
    run.services.hdfs_shell(&[
        "-copyToLocal",
        &format!("{base}/dock"),
        local.to_str().unwrap(),
    ]);
    assert_eq!(archived_frames_by_ffprobe(&local), n);
    assert_eq!(archived_frame_numbers(&local), (0..n).collect::<Vec<_>>());
}

#[test]
fn sigkill_of_the_collector_loses_and_duplicates_nothing() {
    let run = Scenario::new("sigkill", 3);
    // Two cameras on a live (paced) source, so the kill lands mid-stream and
    // the partition holds interleaved cameras.
    let n = 240; // 8 s at 30 fps
    let cams = ["site/a", "site/b"];
    let agents: Vec<Proc> = cams
        .iter()
        .map(|c| run.agent(&pattern(c, n, true), ""))
        .collect();
    let root = run.dir.path().join("archive");
    let first = run.collector("collector-1", root.to_str().unwrap());
    first.wait_log(Duration::from_secs(30), "a few segments", |log| {
        log.matches("segment archived").count() >= 3
    });
    first.signal("KILL");
    let second = run.collector("collector-2", root.to_str().unwrap());
    for a in agents {
        a.wait_success(Duration::from_secs(60));
    }
    for cam in cams {
        let dir = root.join(cam);
        wait_until(Duration::from_secs(60), "every frame archived", || {
            archived_frame_numbers(&dir).len() as u64 >= n
        });
    }
    second.signal("TERM");
    let summary = second.wait_summary(Duration::from_secs(15));
    for cam in cams {
        let numbers = archived_frame_numbers(&root.join(cam));
        assert_eq!(
            numbers,
            (0..n).collect::<Vec<_>>(),
            "{cam}: every frame exactly once"
        );
    }
    // The restarted collector resumed from the commit, skipping what was archived.
    assert!(
        summary["frames_archived"].as_u64().unwrap() < 2 * n,
        "{summary}\nfirst collector's log:\n{}",
        first.log_text()
    );
}

#[test]
fn an_archive_outage_holds_consumption_and_loses_nothing() {
    let run = Scenario::new("outage", 3);
    let n = 90;
    let root = run.dir.path().join("archive");
    std::fs::create_dir_all(&root).unwrap();
    // A plain file where the site directory must go: every write fails
    // (as root, permissions would not stop us).
    let blocker = root.join("lot");
    std::fs::write(&blocker, b"in the way").unwrap();
    let agent = run.agent(&pattern("lot/north", n, false), "");
    let collector = run.collector("collector", root.to_str().unwrap());
    agent.wait_success(Duration::from_secs(60));
    collector.wait_log(Duration::from_secs(30), "failed archive writes", |log| {
        log.matches("archive write failed").count() >= 2
    });
    assert!(segments_under(&root).is_empty());
    std::fs::remove_file(&blocker).unwrap();
    wait_until(Duration::from_secs(60), "the backlog archived", || {
        archived_frames_by_ffprobe(&root) == n
    });
    collector.signal("TERM");
    let summary = collector.wait_summary(Duration::from_secs(15));
    assert!(
        summary["archive_retries"].as_u64().unwrap() >= 2,
        "{summary}"
    );
    assert_eq!(archived_frame_numbers(&root), (0..n).collect::<Vec<_>>());
}
