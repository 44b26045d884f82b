//! Unit tests of the spool sink's routing against a controllable in-memory
//! sink standing in for Kafka (the end-to-end tests in tests/tests/spool.rs
//! use the real broker through a fault-injecting proxy).

use super::*;
use camfleet_shared::clock::SystemClock;
use camfleet_shared::wire::{Codec, Rational};

/// Records what it is given; acknowledges when `open`, fails when `failing`.
struct FakeKafka {
    open: watch::Sender<bool>,
    failing: AtomicBool,
    sent: Mutex<Vec<Attempt>>,
}

/// One delivery attempt: (seq, evicted ranges, whether it failed).
type Attempt = (u64, Vec<RangeInclusive<u64>>, bool);

impl FakeKafka {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            open: watch::channel(open).0,
            failing: AtomicBool::new(false),
            sent: Mutex::new(vec![]),
        })
    }

    fn sent_seqs(&self) -> Vec<u64> {
        self.sent.lock().unwrap().iter().map(|s| s.0).collect()
    }
}

impl FrameSink for FakeKafka {
    async fn enqueue(
        &self,
        meta: &FrameMeta,
        _payload: &[u8],
        evicted: &[RangeInclusive<u64>],
    ) -> Result<AckFuture, SinkError> {
        let fail = self.failing.load(Relaxed);
        self.sent
            .lock()
            .unwrap()
            .push((meta.seq, evicted.to_vec(), fail));
        let mut open = self.open.subscribe();
        let seq = meta.seq;
        Ok(Box::pin(async move {
            if fail {
                return Err(SinkError::Delivery {
                    camera: "s/c".into(),
                    seq,
                    kind: ErrorKind::Timeout,
                    message: "timed out".into(),
                });
            }
            let _ = open.wait_for(|o| *o).await;
            Ok(Delivery::Kafka {
                partition: 0,
                offset: seq as i64,
            })
        }))
    }

    async fn flush(&self, _: Duration) -> Result<(), SinkError> {
        Ok(())
    }
}

fn meta(seq: u64) -> FrameMeta {
    FrameMeta {
        camera: CameraId::new("s/c").unwrap(),
        seq,
        capture_us: SystemClock.now_us(),
        pts_90k: seq * 3000,
        keyframe: seq.is_multiple_of(10),
        width: 64,
        height: 64,
        fps: Rational::new(30, 1).unwrap(),
        codec: Codec::H264,
        epoch: 1,
    }
}

fn config(mode: SpoolMode) -> SpoolConfig {
    SpoolConfig {
        mode,
        switch_after_ms: 100,
        min_free_bytes: 0,
        ..SpoolConfig::default()
    }
}

async fn send(sink: &SpoolSink<FakeKafka>, seqs: std::ops::Range<u64>) -> Vec<AckFuture> {
    let mut acks = vec![];
    for s in seqs {
        acks.push(
            sink.enqueue(&meta(s), &[0, 0, 0, 1, 0x65], &[])
                .await
                .unwrap(),
        );
    }
    acks
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn in_order_once(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mode_sends_directly_while_kafka_keeps_up() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = FakeKafka::new(true);
    let sink = SpoolSink::open(
        &config(SpoolMode::Outage),
        dir.path(),
        kafka.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    for ack in send(&sink, 0..20).await {
        assert!(matches!(ack.await.unwrap(), Delivery::Kafka { .. }));
    }
    let lane = sink.lane_stats(&meta(0).camera).unwrap();
    assert_eq!(lane.stats.frames_spooled.load(Relaxed), 0);
    assert_eq!(kafka.sent_seqs(), (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_sends_frames_to_disk_then_they_drain_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = FakeKafka::new(false);
    let sink = SpoolSink::open(
        &config(SpoolMode::Outage),
        dir.path(),
        kafka.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    // Kafka takes frames but never acknowledges: after switch_after_ms the
    // camera spools, including the frames still unacknowledged.
    let mut acks = send(&sink, 0..5).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    acks.extend(send(&sink, 5..40).await);
    let mut spooled = 0;
    for ack in acks {
        if ack.await.unwrap() == Delivery::Spooled {
            spooled += 1;
        }
    }
    assert_eq!(
        spooled, 40,
        "every frame accepted by the spool once Kafka stalled"
    );
    assert_eq!(
        kafka.sent_seqs(),
        (0..5).collect::<Vec<_>>(),
        "nothing drains past unacknowledged frames"
    );
    // Kafka comes back: the five in flight are acknowledged, the rest drain.
    kafka.open.send_replace(true);
    let lane = sink.lane_stats(&meta(0).camera).unwrap();
    eventually("the spool to drain", || {
        lane.stats.frames_drained.load(Relaxed) == 40
    })
    .await;
    assert!(in_order_once(&kafka.sent_seqs()), "{:?}", kafka.sent_seqs());
    assert_eq!(kafka.sent_seqs().len(), 40);
    // And the camera is direct again.
    let ack = send(&sink, 40..41).await.pop().unwrap();
    assert!(matches!(ack.await.unwrap(), Delivery::Kafka { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_delivery_is_kept_and_sent_again_before_later_frames() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = FakeKafka::new(true);
    let sink = SpoolSink::open(
        &config(SpoolMode::Outage),
        dir.path(),
        kafka.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    kafka.failing.store(true, Relaxed);
    let acks = send(&sink, 0..3).await;
    for ack in acks {
        assert_eq!(ack.await.unwrap(), Delivery::Spooled);
    }
    // Kafka recovers between two drain rounds (after a failed round the
    // drain backs off >= 250 ms), as a broker outage ends: never in the
    // middle of a window of resends, whose later frames would then land
    // before the failed one.
    let failed = |seq: u64| {
        let sent = kafka.sent.lock().unwrap();
        sent.iter().filter(|s| s.0 == seq && s.2).count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(0..3).all(|seq| failed(seq) >= 2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the drain did not retry: {:?}",
            kafka.sent.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    kafka.failing.store(false, Relaxed);
    let later = send(&sink, 3..6).await;
    for ack in later {
        ack.await.unwrap();
    }
    let lane = sink.lane_stats(&meta(0).camera).unwrap();
    eventually("the failed frames to be resent", || {
        lane.stats.frames_drained.load(Relaxed) >= 6
    })
    .await;
    let sent = kafka.sent.lock().unwrap().clone();
    let ok: Vec<u64> = sent.iter().filter(|s| !s.2).map(|s| s.0).collect();
    assert!(sent.iter().any(|s| s.2), "some attempts failed");
    // Each frame was delivered exactly once, in order, failed ones first.
    assert_eq!(ok, (0..6).collect::<Vec<_>>(), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_mode_writes_every_frame_before_it_is_sent_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // The first "process": its own runtime, dropped with every task in it.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let kafka = FakeKafka::new(false);
            let sink = SpoolSink::open(
                &config(SpoolMode::Always),
                &path,
                kafka.clone(),
                Arc::new(SystemClock),
            )
            .unwrap();
            for ack in send(&sink, 0..12).await {
                assert_eq!(ack.await.unwrap(), Delivery::Spooled);
            }
            eventually("the frames to be sent", || kafka.sent_seqs().len() == 12).await;
            // Never acknowledged; the process "dies" here.
        });
        rt.shutdown_timeout(Duration::from_secs(5));
    })
    .join()
    .unwrap();
    let kafka = FakeKafka::new(true);
    let sink = SpoolSink::open(
        &config(SpoolMode::Always),
        dir.path(),
        kafka.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    let lane = sink.lane_stats(&meta(0).camera).unwrap();
    eventually("the recovered frames to drain", || {
        lane.stats.frames_drained.load(Relaxed) == 12
    })
    .await;
    assert_eq!(kafka.sent_seqs(), (0..12).collect::<Vec<_>>());
    let start = sink.open_camera(dir.path(), &meta(0).camera).unwrap();
    assert_eq!(
        start.first_seq, 12,
        "the sequence continues after the spool's high-water mark"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_ranges_ride_on_the_next_frame_sent() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = FakeKafka::new(false);
    let sink = SpoolSink::open(
        &config(SpoolMode::Outage),
        dir.path(),
        kafka.clone(),
        Arc::new(SystemClock),
    )
    .unwrap();
    // 0..5 go straight to a stalled Kafka; then the camera spools 5..40
    // (keyframes every 10), and nothing drains past the five in flight.
    let mut acks = send(&sink, 0..5).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    acks.extend(send(&sink, 5..40).await);
    for ack in acks {
        ack.await.unwrap();
    }
    // The budget is full: the oldest evictable unit is the tail of the GOP
    // whose head is in flight (5..=9), then the next whole GOP (10..=19).
    assert_eq!(
        sink.shared
            .evict_oldest(GapReason::Budget, None)
            .map(|_| ()),
        Some(())
    );
    assert_eq!(
        sink.shared
            .evict_oldest(GapReason::Budget, None)
            .map(|_| ()),
        Some(())
    );
    kafka.open.send_replace(true);
    let lane = sink.lane_stats(&meta(0).camera).unwrap();
    eventually("the rest to drain", || kafka.sent_seqs().len() == 25).await;
    let sent = kafka.sent.lock().unwrap().clone();
    assert_eq!(
        sent.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
            .into_iter()
            .chain(20..40)
            .collect::<Vec<_>>()
    );
    assert_eq!(sent[5].1, vec![5..=19], "one merged range on frame 20");
    assert!(sent
        .iter()
        .enumerate()
        .all(|(i, s)| i == 5 || s.1.is_empty()));
    assert_eq!(lane.stats.frames_evicted.load(Relaxed), 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_older_than_max_age_are_evicted_whole_gops_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let kafka = FakeKafka::new(false);
    let cfg = SpoolConfig {
        max_age_s: 10,
        ..config(SpoolMode::Always)
    };
    let sink = SpoolSink::open(&cfg, dir.path(), kafka.clone(), Arc::new(SystemClock)).unwrap();
    let lane = sink.lane(&meta(0).camera);
    // Keep the drain away so nothing is in flight.
    lane.state.lock().unwrap().retry_at = Some(Instant::now() + Duration::from_secs(3600));
    lane.state.lock().unwrap().route = Route::Spool;
    let now = SystemClock.now_us();
    for s in 0..30 {
        let mut m = meta(s);
        // 0..20 were captured a minute ago, 20..30 just now.
        m.capture_us = if s < 20 { now - 60_000_000 } else { now };
        sink.enqueue(&m, &[0, 0, 0, 1, 0x65], &[])
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually("the old GOPs to be evicted", || {
        lane.stats.frames_evicted.load(Relaxed) == 20
    })
    .await;
    let st = lane.state.lock().unwrap();
    assert_eq!(st.ledger.first_seq(), Some(20));
    let gaps: Vec<_> = st
        .ledger
        .pending_gaps()
        .map(|(f, g)| (f, g.last, g.reason))
        .collect();
    assert_eq!(gaps, vec![(0, 19, GapReason::Age)]);
}
