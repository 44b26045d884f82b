//! The stillness rule: automatic hard negatives. A detection whose box stays
//! at the same place (IoU with the first box of its track >= `iou_min`, same
//! class) for at least `min_still_us` of capture time is not a real object
//! passing by (a statue, a poster, a boat-shaped garden): every detection of
//! such a track gets a `real = false` label from source `stillness`. Ops'
//! labels win over these when the training data is read
//! ([`super::dataset::load_labelled`]), so a person ops marked true stays
//! true however long they stood still.
//!
//! Sans-I/O. Two users: the table writer feeds it live, picture by picture
//! ([`StillnessTracker`]); the trainer can run it over whole tables
//! ([`still_labels`]).

use super::features::LabelSource;
use super::tables::{DetectionRow, LabelRow};
use camfleet_shared::clock::Clock;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StillnessRule {
    /// Same place: IoU with the track's first box at least this.
    pub iou_min: f32,
    /// Still for at least this long (capture time, µs).
    pub min_still_us: i64,
    /// A track not seen for this long is over (the object left).
    pub max_gap_us: i64,
}

struct Track {
    class_id: u32,
    anchor: [f32; 4],
    first_us: i64,
    last_us: i64,
    /// Detections not labelled yet: (id, capture_us).
    unlabelled: Vec<(String, i64)>,
}

/// One camera's still tracks, fed in capture order.
pub struct StillnessTracker {
    rule: StillnessRule,
    camera: String,
    tracks: Vec<Track>,
    /// Labels found and not taken yet, with the capture time of their detection.
    ready: Vec<(String, i64)>,
}

impl StillnessTracker {
    pub fn new(camera: &str, rule: StillnessRule) -> Self {
        Self {
            rule,
            camera: camera.into(),
            tracks: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// One picture's detections: `(detection_id, class_id, box)`.
    pub fn observe(&mut self, capture_us: i64, detections: &[(String, u32, [f32; 4])]) {
        let rule = self.rule;
        self.tracks
            .retain(|t| capture_us.saturating_sub(t.last_us) <= rule.max_gap_us);
        for (id, class_id, bbox) in detections {
            let best = self
                .tracks
                .iter_mut()
                .filter(|t| t.class_id == *class_id && t.last_us < capture_us)
                .map(|t| (crate::detect::decode::iou(&t.anchor, bbox), t))
                .filter(|(iou, _)| *iou >= rule.iou_min)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match best {
                Some((_, t)) => {
                    t.last_us = capture_us;
                    t.unlabelled.push((id.clone(), capture_us));
                }
                None => self.tracks.push(Track {
                    class_id: *class_id,
                    anchor: *bbox,
                    first_us: capture_us,
                    last_us: capture_us,
                    unlabelled: vec![(id.clone(), capture_us)],
                }),
            }
        }
        for t in &mut self.tracks {
            if t.last_us - t.first_us >= rule.min_still_us {
                self.ready.append(&mut t.unlabelled);
            }
        }
    }

    /// Hard negatives found since the last call, labelled now.
    pub fn take_labels(&mut self, clock: &dyn Clock) -> Vec<(i64, LabelRow)> {
        let now = i64::try_from(clock.now_us()).unwrap_or(i64::MAX);
        self.ready
            .drain(..)
            .map(|(id, capture_us)| {
                (
                    capture_us,
                    LabelRow {
                        detection_id: id,
                        camera: self.camera.clone(),
                        real: false,
                        source: LabelSource::Stillness,
                        labelled_at_us: now,
                    },
                )
            })
            .collect()
    }
}

/// The stillness labels of a whole table's worth of one camera's detections.
pub fn still_labels(
    rows: &[DetectionRow],
    rule: StillnessRule,
    clock: &dyn Clock,
) -> Vec<LabelRow> {
    let mut by_camera: std::collections::BTreeMap<&str, Vec<&DetectionRow>> = Default::default();
    for r in rows {
        by_camera.entry(&r.camera).or_default().push(r);
    }
    let mut out = Vec::new();
    for (camera, mut rows) in by_camera {
        rows.sort_by_key(|r| (r.capture_us, r.epoch, r.seq));
        let mut tracker = StillnessTracker::new(camera, rule);
        for picture in rows.chunk_by(|a, b| (a.epoch, a.seq) == (b.epoch, b.seq)) {
            let dets: Vec<_> = picture
                .iter()
                .map(|r| (r.detection_id.clone(), r.class_id, r.bbox))
                .collect();
            tracker.observe(picture[0].capture_us, &dets);
        }
        out.extend(tracker.take_labels(clock).into_iter().map(|(_, l)| l));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now_us(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    const S: i64 = 1_000_000;
    const RULE: StillnessRule = StillnessRule {
        iou_min: 0.8,
        min_still_us: 60 * S,
        max_gap_us: 10 * S,
    };

    #[test]
    fn a_box_that_stays_becomes_a_hard_negative_and_a_passer_by_does_not() {
        let clock = FakeClock(AtomicU64::new(42));
        let mut t = StillnessTracker::new("s/c", RULE);
        let poster = [0.1, 0.1, 0.3, 0.6];
        let mut ids = Vec::new();
        // 2 pictures a second for 70 s; the person walks left to right.
        for i in 0..140i64 {
            let at = 1_000 * S + i * S / 2;
            let x = i as f32 / 200.0;
            let poster_id = format!("s/c:1:{i}:0");
            ids.push(poster_id.clone());
            t.observe(
                at,
                &[
                    (poster_id, 0, [0.1 + 0.002 * (i % 2) as f32, 0.1, 0.3, 0.6]),
                    (format!("s/c:1:{i}:1"), 0, [x, 0.5, x + 0.1, 0.9]),
                ],
            );
            if i == 100 {
                assert!(t.take_labels(&clock).is_empty(), "50 s is not still enough");
            }
        }
        clock.0.store(99, Ordering::Relaxed);
        let labels = t.take_labels(&clock);
        let got: Vec<&str> = labels
            .iter()
            .map(|(_, l)| l.detection_id.as_str())
            .collect();
        assert_eq!(
            got,
            ids.iter().map(String::as_str).collect::<Vec<_>>(),
            "every poster detection, none of the person's"
        );
        assert!(labels
            .iter()
            .all(|(_, l)| !l.real && l.source == LabelSource::Stillness && l.labelled_at_us == 99));
        assert_eq!(
            labels[0].0,
            1_000 * S,
            "capture time of the detection, for its hour"
        );
        // Later detections of the same still track are labelled as they come.
        t.observe(1_071 * S, &[("late".into(), 0, poster)]);
        assert_eq!(t.take_labels(&clock).len(), 1);
    }

    #[test]
    fn a_track_ends_when_the_object_is_gone_longer_than_the_gap() {
        let clock = FakeClock(AtomicU64::new(0));
        let mut t = StillnessTracker::new("s/c", RULE);
        let b = [0.1, 0.1, 0.3, 0.6];
        t.observe(0, &[("a".into(), 0, b)]);
        t.observe(30 * S, &[("b".into(), 0, b)]); // gap 30 s > 10 s: a new track
        t.observe(65 * S, &[("c".into(), 0, b)]);
        assert!(t.take_labels(&clock).is_empty());
        // Another class at the same place is another track.
        let mut t = StillnessTracker::new("s/c", RULE);
        for i in 0..=60 {
            t.observe(i * S, &[(format!("{i}"), u32::from(i > 30), b)]);
        }
        assert!(
            t.take_labels(&clock).is_empty(),
            "a class change at the same place starts a new track"
        );
    }

    #[test]
    fn the_batch_form_gives_the_same_labels() {
        let clock = FakeClock(AtomicU64::new(5));
        let rows: Vec<DetectionRow> = (0..130)
            .map(|i| DetectionRow {
                detection_id: format!("s/c:1:{i}:0"),
                camera: "s/c".into(),
                capture_us: i * S / 2,
                epoch: 1,
                seq: i as u64,
                class_id: 0,
                label: "person".into(),
                score: 0.6,
                bbox: [0.1, 0.1, 0.3, 0.6],
                model_name: "m".into(),
                model_version: "1".into(),
                verifier: None,
                shadow: None,
                backbone: "b".into(),
                embedding: vec![],
            })
            .collect();
        let labels = still_labels(&rows, RULE, &clock);
        assert_eq!(labels.len(), 130);
        assert!(still_labels(&rows[..100], RULE, &clock).is_empty());
    }
}
