//! Per-camera state (the stream processor's role): picture conditions and
//! objects over media time, turned into debounced events. Sans-I/O: fed one
//! observation per inferred picture, returns the events to publish.
//!
//! Debounce rules (docs/events.md):
//! * a condition (`dark`, `covered`, `blurred`, `frozen`) *starts* when it has
//!   held on every inferred picture for [`RAISE_S`] seconds of media time, and
//!   *ends* when it has been absent on every inferred picture for
//!   [`CLEAR_S`] seconds; one event each;
//! * an object class *appears* when detected on [`APPEAR_FRAMES`] inferred
//!   pictures in a row, and *leaves* when not detected for [`LEAVE_S`] seconds;
//! * a new stream epoch keeps the state (same camera, same scene) but the
//!   media clock restarts, so durations restart too.
//!
//! Conditions, from luma statistics of the decoded picture:
//! * `dark`: mean luma below [`DARK_MEAN`] (of 255);
//! * `covered`: not dark, but flat: luma standard deviation below [`FLAT_STD`]
//!   (a hand, a cap, paper on the lens);
//! * `blurred`: sharpness (mean absolute Laplacian of a 160x90 thumbnail)
//!   below a quarter of this camera's normal level (learnt from its first
//!   pictures without any condition);
//! * `frozen`: a textured picture identical to the previous inferred one
//!   (thumbnail mean absolute difference below 0.25) while media time moves.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub const RAISE_S: f64 = 2.0;
pub const CLEAR_S: f64 = 2.0;
pub const APPEAR_FRAMES: u32 = 2;
pub const LEAVE_S: f64 = 3.0;
pub const DARK_MEAN: f32 = 40.0;
pub const FLAT_STD: f32 = 6.0;
const BLUR_RATIO: f32 = 0.25;
const FROZEN_DIFF: f32 = 0.25;
const BASELINE_PICTURES: u32 = 10;
const THUMB_W: usize = 160;
const THUMB_H: usize = 90;

/// Luma statistics of one picture.
#[derive(Clone, Debug)]
pub struct PictureStats {
    pub mean: f32,
    pub std: f32,
    pub sharpness: f32,
    thumb: Vec<u8>,
}

impl PictureStats {
    /// From the luma plane of a tight I420 picture.
    pub fn of_i420(width: u32, height: u32, i420: &[u8]) -> Self {
        let (w, h) = (width as usize, height as usize);
        let y = &i420[..w * h];
        // Nearest-neighbour thumbnail: statistics need no filtering.
        let mut thumb = Vec::with_capacity(THUMB_W * THUMB_H);
        for ty in 0..THUMB_H {
            let row = (ty * h / THUMB_H) * w;
            for tx in 0..THUMB_W {
                thumb.push(y[row + tx * w / THUMB_W]);
            }
        }
        let n = thumb.len() as f32;
        let mean = thumb.iter().map(|&v| v as f32).sum::<f32>() / n;
        let var = thumb
            .iter()
            .map(|&v| (v as f32 - mean).powi(2))
            .sum::<f32>()
            / n;
        let mut lap = 0f32;
        for ty in 1..THUMB_H - 1 {
            for tx in 1..THUMB_W - 1 {
                let at = |x: usize, y: usize| thumb[y * THUMB_W + x] as f32;
                lap += (4.0 * at(tx, ty)
                    - at(tx - 1, ty)
                    - at(tx + 1, ty)
                    - at(tx, ty - 1)
                    - at(tx, ty + 1))
                .abs();
            }
        }
        let sharpness = lap / ((THUMB_W - 2) * (THUMB_H - 2)) as f32;
        Self {
            mean,
            std: var.sqrt(),
            sharpness,
            thumb,
        }
    }

    fn diff(&self, other: &Self) -> f32 {
        self.thumb
            .iter()
            .zip(&other.thumb)
            .map(|(&a, &b)| (a as f32 - b as f32).abs())
            .sum::<f32>()
            / self.thumb.len() as f32
    }
}

/// One inferred picture, as the state sees it.
pub struct Observation<'a> {
    pub seq: u64,
    pub epoch: u64,
    pub pts_90k: u64,
    pub capture_us: u64,
    pub stats: PictureStats,
    /// Labels detected on the picture (repeats allowed).
    pub labels: &'a [&'a str],
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ObjectAppeared,
    ObjectLeft,
    Dark,
    Covered,
    Blurred,
    Frozen,
    /// The scene model says the view is far from normal (docs/events.md).
    SceneChanged,
    /// As `scene_changed`, on a dark or flat picture.
    Tampered,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Started,
    Ended,
}

/// What the events topic carries (docs/events.md), minus the camera.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub kind: EventKind,
    /// Conditions start and end; object events are instants.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The picture that decided it.
    pub seq: u64,
    pub capture_us: u64,
}

#[derive(Default, Debug)]
struct Condition {
    active: bool,
    /// Media time (µs since epoch start) since which the opposite state held.
    since: Option<f64>,
}

impl Condition {
    /// Feeds one picture; `Some(phase)` when the condition starts or ends.
    fn observe(&mut self, holds: bool, t: f64) -> Option<Phase> {
        if holds == self.active {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(t);
        let needed = if self.active { CLEAR_S } else { RAISE_S };
        if t - since >= needed {
            self.active = holds;
            self.since = None;
            Some(if holds { Phase::Started } else { Phase::Ended })
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct Presence {
    present: bool,
    streak: u32,
    last_seen: f64,
}

#[derive(Default)]
pub struct CameraState {
    epoch: Option<u64>,
    dark: Condition,
    covered: Condition,
    blurred: Condition,
    frozen: Condition,
    sharpness_baseline: Option<f32>,
    baseline_samples: u32,
    previous: Option<PictureStats>,
    objects: BTreeMap<String, Presence>,
}

impl CameraState {
    pub fn observe(&mut self, obs: Observation<'_>) -> Vec<Event> {
        if self.epoch != Some(obs.epoch) {
            // A new media clock: restart durations, keep what is active.
            self.epoch = Some(obs.epoch);
            for c in [
                &mut self.dark,
                &mut self.covered,
                &mut self.blurred,
                &mut self.frozen,
            ] {
                c.since = None;
            }
            for p in self.objects.values_mut() {
                p.last_seen = 0.0;
            }
            self.previous = None;
        }
        let t = obs.pts_90k as f64 / 90_000.0;
        let s = &obs.stats;
        let dark = s.mean < DARK_MEAN;
        let flat = s.std < FLAT_STD;
        let covered = !dark && flat;
        let blurred = !dark
            && !flat
            && self
                .sharpness_baseline
                .is_some_and(|b| s.sharpness < b * BLUR_RATIO);
        let frozen = !flat
            && self
                .previous
                .as_ref()
                .is_some_and(|p| s.diff(p) < FROZEN_DIFF);
        let any = dark || covered || blurred || frozen;
        if !any && self.baseline_samples < BASELINE_PICTURES {
            let n = self.baseline_samples as f32;
            let b = self.sharpness_baseline.unwrap_or(0.0);
            self.sharpness_baseline = Some((b * n + s.sharpness) / (n + 1.0));
            self.baseline_samples += 1;
        }
        let mut events = Vec::new();
        let event = |kind, phase, label| Event {
            kind,
            phase,
            label,
            seq: obs.seq,
            capture_us: obs.capture_us,
        };
        for (cond, holds, kind) in [
            (&mut self.dark, dark, EventKind::Dark),
            (&mut self.covered, covered, EventKind::Covered),
            (&mut self.blurred, blurred, EventKind::Blurred),
            (&mut self.frozen, frozen, EventKind::Frozen),
        ] {
            if let Some(phase) = cond.observe(holds, t) {
                events.push(event(kind, Some(phase), None));
            }
        }

        let seen: BTreeSet<&str> = obs.labels.iter().copied().collect();
        for label in &seen {
            let p = self.objects.entry(label.to_string()).or_default();
            p.streak += 1;
            p.last_seen = t;
            if !p.present && p.streak >= APPEAR_FRAMES {
                p.present = true;
                events.push(event(
                    EventKind::ObjectAppeared,
                    None,
                    Some(label.to_string()),
                ));
            }
        }
        for (label, p) in self.objects.iter_mut() {
            if seen.contains(label.as_str()) {
                continue;
            }
            p.streak = 0;
            if p.present && t - p.last_seen >= LEAVE_S {
                p.present = false;
                events.push(event(EventKind::ObjectLeft, None, Some(label.clone())));
            }
        }
        self.objects.retain(|_, p| p.present || p.streak > 0);
        self.previous = Some(obs.stats);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(kind: &str, n: u64) -> Vec<u8> {
        let (w, h) = (320usize, 180usize);
        let mut p = vec![128u8; w * h * 3 / 2];
        for y in 0..h {
            for x in 0..w {
                p[y * w + x] = match kind {
                    "scene" => (16 + ((x * 7 + y * 3 + n as usize * 5) % 200)) as u8,
                    "still" => (16 + ((x * 7 + y * 3) % 200)) as u8,
                    "black" => 16,
                    "grey" => 120,
                    "soft" => (100 + (x / 40) * 5) as u8,
                    _ => unreachable!(),
                };
            }
        }
        p
    }

    /// Feeds `seconds` of pictures at 5 fps from media time `t0`.
    fn feed(s: &mut CameraState, kind: &str, t0: f64, seconds: f64, labels: &[&str]) -> Vec<Event> {
        let mut out = vec![];
        let n = (seconds * 5.0) as u64;
        for i in 0..n {
            let t = t0 + i as f64 / 5.0;
            let stats = PictureStats::of_i420(320, 180, &picture(kind, (t * 5.0) as u64));
            out.extend(s.observe(Observation {
                seq: (t * 30.0) as u64,
                epoch: 1,
                pts_90k: (t * 90_000.0) as u64,
                capture_us: (t * 1e6) as u64,
                stats,
                labels,
            }));
        }
        out
    }

    fn kinds(events: &[Event]) -> Vec<(EventKind, Option<Phase>, Option<String>)> {
        events
            .iter()
            .map(|e| (e.kind.clone(), e.phase.clone(), e.label.clone()))
            .collect()
    }

    #[test]
    fn a_dark_section_starts_once_and_ends_once() {
        let mut s = CameraState::default();
        assert!(feed(&mut s, "scene", 0.0, 3.0, &[]).is_empty());
        let dark = feed(&mut s, "black", 3.0, 4.0, &[]);
        assert_eq!(
            kinds(&dark),
            [(EventKind::Dark, Some(Phase::Started), None)]
        );
        // Raised after RAISE_S of darkness, not before.
        assert!(dark[0].capture_us >= 5_000_000 && dark[0].capture_us < 5_400_000);
        let back = feed(&mut s, "scene", 7.0, 4.0, &[]);
        assert_eq!(kinds(&back), [(EventKind::Dark, Some(Phase::Ended), None)]);
    }

    #[test]
    fn a_short_flicker_raises_nothing() {
        let mut s = CameraState::default();
        feed(&mut s, "scene", 0.0, 3.0, &[]);
        assert!(feed(&mut s, "black", 3.0, 1.0, &[]).is_empty());
        assert!(feed(&mut s, "scene", 4.0, 3.0, &[]).is_empty());
    }

    #[test]
    fn flat_covered_soft_blurred_and_still_frozen_are_told_apart() {
        let mut s = CameraState::default();
        feed(&mut s, "scene", 0.0, 3.0, &[]);
        let covered = feed(&mut s, "grey", 3.0, 3.0, &[]);
        assert_eq!(
            kinds(&covered),
            [(EventKind::Covered, Some(Phase::Started), None)]
        );
        let mut s = CameraState::default();
        feed(&mut s, "scene", 0.0, 3.0, &[]);
        let frozen = feed(&mut s, "still", 3.0, 3.0, &[]);
        assert_eq!(
            kinds(&frozen),
            [(EventKind::Frozen, Some(Phase::Started), None)]
        );
        let mut s = CameraState::default();
        feed(&mut s, "scene", 0.0, 3.0, &[]);
        let blurred: Vec<_> = kinds(&feed(&mut s, "soft", 3.0, 3.0, &[]));
        assert!(
            blurred.contains(&(EventKind::Blurred, Some(Phase::Started), None)),
            "{blurred:?}"
        );
    }

    #[test]
    fn objects_appear_after_two_pictures_and_leave_after_three_seconds() {
        let mut s = CameraState::default();
        let one = feed(&mut s, "scene", 0.0, 0.2, &["person"]);
        assert!(one.is_empty(), "one picture is not enough: {one:?}");
        let on = feed(&mut s, "scene", 0.2, 2.0, &["person", "person", "car"]);
        assert_eq!(
            kinds(&on),
            // The person was already seen once: it appears a picture earlier.
            [
                (EventKind::ObjectAppeared, None, Some("person".into())),
                (EventKind::ObjectAppeared, None, Some("car".into())),
            ]
        );
        let gone = feed(&mut s, "scene", 2.2, 4.0, &["car"]);
        assert_eq!(
            kinds(&gone),
            [(EventKind::ObjectLeft, None, Some("person".into()))]
        );
    }
}
