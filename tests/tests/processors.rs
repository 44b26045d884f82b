//! The collector's frame fan-out against the real broker: a processor that
//! fails on one camera's frames holds back that partition's commit (others
//! wait at most for their frames queued behind it), the archive of both
//! partitions goes on, and once the processor recovers it has seen every
//! frame, in order, and the commits catch up.

use camfleet_collector::archive::AnyArchive;
use camfleet_collector::fanout::{Delivery, Frame, ProcessFuture, Processor, ProcessorError};
use camfleet_collector::stats::Stats;
use camfleet_shared::config::CollectorConfig;
use camfleet_tests::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Records every frame it finishes; fails camera `stuck_camera`'s frames
/// from `stuck_from` on while `failing` is set.
struct Recorder {
    seen: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    failing: Arc<AtomicBool>,
    stuck_camera: String,
    stuck_from: u64,
}

impl Processor for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn delivery(&self) -> Delivery {
        Delivery::Lossless
    }
    fn process<'a>(&'a mut self, frame: &'a Frame) -> ProcessFuture<'a> {
        Box::pin(async move {
            let cam = frame.meta.camera.to_string();
            if cam == self.stuck_camera
                && frame.meta.seq >= self.stuck_from
                && self.failing.load(Relaxed)
            {
                return Err(ProcessorError("downstream unavailable".into()));
            }
            self.seen
                .lock()
                .unwrap()
                .entry(cam)
                .or_default()
                .push(frame.meta.seq);
            Ok(())
        })
    }
}

/// Two camera ids librdkafka's default partitioner (CRC-32 of the key)
/// puts on partitions 0 and 1 of a two-partition topic.
fn cameras_on_both_partitions() -> (String, String) {
    let on = |p: u32| {
        (0..)
            .map(|i| format!("fan/cam{i}"))
            .find(|id| crc32fast::hash(id.as_bytes()) % 2 == p)
            .unwrap()
    };
    (on(0), on(1))
}

fn committed(s: &Services, topic: &str, group: &str) -> [i64; 2] {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &s.kafka)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tpl.add_partition(topic, 1);
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let at = |p| match c.find_partition(topic, p).unwrap().offset() {
        Offset::Offset(o) => o,
        _ => -1,
    };
    [at(0), at(1)]
}

#[test]
fn processors_a_failing_processor_holds_back_the_commit_not_the_archive_and_loses_nothing() {
    let run = Scenario::new("fanout", 2);
    let (stuck, free) = cameras_on_both_partitions();
    let data = run.dir.path().join("agent-data");
    let agent_config = format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[[camera]]
id = "{stuck}"
max_frames = 90
source = {{ kind = "test_pattern", width = 160, height = 96, unpaced = true }}
encoder = {{ bitrate_kbps = 200, keyframe_interval_frames = 15 }}
[[camera]]
id = "{free}"
max_frames = 90
source = {{ kind = "test_pattern", width = 160, height = 96, unpaced = true }}
encoder = {{ bitrate_kbps = 200, keyframe_interval_frames = 15 }}
"#,
        data = data.display(),
        kafka = run.services.kafka,
        topic = run.topic,
    );
    run.spawn("agent", "camfleet-agent", &agent_config)
        .wait_success(Duration::from_secs(60));
    let frames = read_topic(&run.services, &run.topic);
    // Each camera is alone in its partition and its frames are small (one
    // record each), so a frame's index among its camera's is its offset.
    let offset_of = |cam: &str, seq: u64| -> i64 {
        frames
            .iter()
            .filter(|f| f.meta.camera.as_str() == cam)
            .position(|f| f.meta.seq == seq)
            .unwrap() as i64
    };
    assert_eq!(check_stream(&frames, &stuck).distinct, 90);
    assert_eq!(check_stream(&frames, &free).distinct, 90);

    let root = run.dir.path().join("archive");
    let group = format!("{}.collectors", run.topic);
    let config = CollectorConfig::from_toml(&collector_config(
        &run.services,
        &run.topic,
        &group,
        root.to_str().unwrap(),
        1000,
    ))
    .unwrap();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let failing = Arc::new(AtomicBool::new(true));
    let recorder = Recorder {
        seen: seen.clone(),
        failing: failing.clone(),
        stuck_camera: stuck.clone(),
        stuck_from: 30,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = rt.spawn(async move {
        let archive = AnyArchive::open(root.to_str().unwrap()).await.unwrap();
        camfleet_collector::app::run_with(
            config,
            archive,
            Arc::new(Stats::default()),
            vec![Box::new(recorder)],
            async {
                let _ = stop_rx.await;
            },
        )
        .await
        .unwrap();
    });
    let root = run.dir.path().join("archive");
    let archived = |cam: &str| -> u64 {
        let dir = root.join(cam);
        segments_under(&dir)
            .iter()
            .map(|s| ffprobe_frames(s).3)
            .sum()
    };

    // The archive of both cameras goes on: every closed segment (seq 0-59)
    // lands while the processor is stuck at the first camera's seq 30.
    wait_until(Duration::from_secs(60), "both cameras archived", || {
        archived(&stuck) >= 60 && archived(&free) >= 60
    });
    std::thread::sleep(Duration::from_secs(2));
    let held = committed(&run.services, &run.topic, &group);
    assert!(
        held[0] <= offset_of(&stuck, 30),
        "the stuck partition committed {} past the unprocessed frame at {}",
        held[0],
        offset_of(&stuck, 30)
    );
    assert_eq!(
        seen.lock().unwrap().get(&stuck).map(Vec::len),
        Some(30),
        "the processor finished seq 0-29 of the stuck camera"
    );

    // It recovers: every frame seen once, in order, and the commit catches up.
    failing.store(false, Relaxed);
    wait_until(
        Duration::from_secs(60),
        "both partitions' commits to move",
        || {
            let c = committed(&run.services, &run.topic, &group);
            c[0] >= offset_of(&stuck, 60) && c[1] >= offset_of(&free, 60)
        },
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[&stuck], (0..90).collect::<Vec<u64>>());
    assert_eq!(seen[&free], (0..90).collect::<Vec<u64>>());
    let _ = stop_tx.send(());
    rt.block_on(collector).unwrap();
    assert_eq!(archived(&stuck), 90);
    assert_eq!(archived(&free), 90);
}
