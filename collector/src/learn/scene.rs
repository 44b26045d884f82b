//! Scene events from a scene model's distances on sampled whole frames
//! (docs/events.md, `scene_changed` / `tampered`). Sans-I/O.
//!
//! Hysteresis: an event *starts* after [`RAISE_SAMPLES`] sampled frames in a
//! row at or above the model's threshold and *ends* after [`CLEAR_SAMPLES`]
//! in a row below [`CLEAR_RATIO`] x threshold, so a distance hovering at
//! the threshold raises one event, not a storm. It is `tampered` when the
//! picture that started it is dark or flat (covered, sprayed, unplugged
//! lens), else `scene_changed` (the camera was moved or the view changed).

pub const RAISE_SAMPLES: u32 = 2;
pub const CLEAR_SAMPLES: u32 = 2;
pub const CLEAR_RATIO: f32 = 0.8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SceneKind {
    SceneChanged,
    Tampered,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SceneTransition {
    Started(SceneKind),
    Ended(SceneKind),
}

#[derive(Debug, Default)]
pub struct SceneWatch {
    active: Option<SceneKind>,
    streak: u32,
}

impl SceneWatch {
    /// One sampled frame: its distance, the model's threshold and whether
    /// the picture is dark or flat.
    pub fn observe(
        &mut self,
        distance: f32,
        threshold: f32,
        blind: bool,
    ) -> Option<SceneTransition> {
        match self.active {
            None => {
                if distance >= threshold {
                    self.streak += 1;
                } else {
                    self.streak = 0;
                }
                if self.streak >= RAISE_SAMPLES {
                    self.streak = 0;
                    let kind = if blind {
                        SceneKind::Tampered
                    } else {
                        SceneKind::SceneChanged
                    };
                    self.active = Some(kind);
                    return Some(SceneTransition::Started(kind));
                }
                None
            }
            Some(kind) => {
                if distance < threshold * CLEAR_RATIO {
                    self.streak += 1;
                } else {
                    self.streak = 0;
                }
                if self.streak >= CLEAR_SAMPLES {
                    self.streak = 0;
                    self.active = None;
                    return Some(SceneTransition::Ended(kind));
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_after_two_far_frames_and_ends_after_two_near_ones() {
        let mut w = SceneWatch::default();
        assert_eq!(w.observe(5.0, 3.0, false), None);
        assert_eq!(w.observe(1.0, 3.0, false), None, "one far frame is noise");
        assert_eq!(w.observe(5.0, 3.0, true), None);
        assert_eq!(
            w.observe(5.0, 3.0, true),
            Some(SceneTransition::Started(SceneKind::Tampered))
        );
        // Hovering just under the threshold is not the end (hysteresis).
        assert_eq!(w.observe(2.9, 3.0, false), None);
        assert_eq!(w.observe(2.9, 3.0, false), None);
        assert_eq!(w.observe(1.0, 3.0, false), None);
        assert_eq!(
            w.observe(1.0, 3.0, false),
            Some(SceneTransition::Ended(SceneKind::Tampered))
        );
        assert_eq!(w.observe(9.0, 3.0, false), None);
        assert_eq!(
            w.observe(9.0, 3.0, false),
            Some(SceneTransition::Started(SceneKind::SceneChanged))
        );
    }
}
