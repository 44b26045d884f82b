//! `[archive.retention]`: how long and how much video the archive keeps
//! (docs/archive.md, "Retention").
//!
//! Limits are by age and by total bytes, globally and per camera; whichever
//! is hit first deletes whole segments, oldest first.

use super::{invalid, ConfigError};
use crate::CameraId;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Delete segments that ended more than this many seconds ago; 0 = no age limit.
    #[serde(default)]
    pub max_age_s: u64,
    /// Keep the bytes of all segments of all cameras at or below this; 0 = no limit.
    #[serde(default)]
    pub max_bytes: u64,
    /// How often the collector applies the limits, in seconds; 0 = never
    /// (only `camfleet-collector archive prune`).
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// Per-camera limits; the first entry that matches a camera applies to it.
    #[serde(default)]
    pub camera: Vec<CameraRetention>,
}

/// `[[archive.retention.camera]]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CameraRetention {
    /// A camera id (`depot/gate`) or a whole site (`depot/*`).
    pub id: String,
    /// Replaces the global `max_age_s` for these cameras; 0 = no age limit.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// Each matching camera keeps at most this many bytes (on top of the
    /// global `max_bytes`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

const fn default_interval_s() -> u64 {
    300
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            max_age_s: 0,
            max_bytes: 0,
            interval_s: default_interval_s(),
            camera: Vec::new(),
        }
    }
}

impl CameraRetention {
    pub fn matches(&self, camera: &str) -> bool {
        match self.id.strip_suffix("/*") {
            Some(site) => camera.split_once('/').is_some_and(|(s, _)| s == site),
            None => self.id == camera,
        }
    }
}

impl RetentionConfig {
    /// The per-camera entry that applies to `camera`, if any.
    pub fn for_camera(&self, camera: &str) -> Option<&CameraRetention> {
        self.camera.iter().find(|c| c.matches(camera))
    }

    /// Age limit of `camera` in seconds (0 = none).
    pub fn max_age_s(&self, camera: &str) -> u64 {
        self.for_camera(camera)
            .and_then(|c| c.max_age_s)
            .unwrap_or(self.max_age_s)
    }

    /// Whether any limit is set at all.
    pub fn is_set(&self) -> bool {
        self.max_age_s > 0
            || self.max_bytes > 0
            || self
                .camera
                .iter()
                .any(|c| c.max_age_s.is_some_and(|a| a > 0) || c.max_bytes.is_some())
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (i, c) in self.camera.iter().enumerate() {
            let id =
                c.id.strip_suffix("/*")
                    .map_or(c.id.clone(), |site| format!("{site}/x"));
            if CameraId::new(&id).is_err() {
                return Err(invalid(
                    format!("archive.retention.camera[{i}].id"),
                    format!(
                        "{:?} is neither a camera id (site/camera) nor a site (site/*)",
                        c.id
                    ),
                ));
            }
            if c.max_age_s.is_none() && c.max_bytes.is_none() {
                return Err(invalid(
                    format!("archive.retention.camera[{i}]"),
                    "sets neither max_age_s nor max_bytes",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_camera_entry_wins() {
        let r: RetentionConfig = toml::from_str(
            r#"
max_age_s = 100
[[camera]]
id = "depot/gate"
max_bytes = 5
[[camera]]
id = "depot/*"
max_age_s = 7
"#,
        )
        .unwrap();
        r.validate().unwrap();
        assert_eq!(r.interval_s, 300);
        assert_eq!(r.for_camera("depot/gate").unwrap().max_bytes, Some(5));
        assert_eq!(r.max_age_s("depot/gate"), 100, "its entry sets no age");
        assert_eq!(r.max_age_s("depot/yard"), 7);
        assert_eq!(r.max_age_s("yard/x"), 100);
        assert!(r.is_set());
        assert!(!RetentionConfig::default().is_set());
    }

    #[test]
    fn bad_entries_name_the_field() {
        let r: RetentionConfig =
            toml::from_str("[[camera]]\nid = \"nosite\"\nmax_bytes = 1\n").unwrap();
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("archive.retention.camera[0].id"), "{e}");
        let r: RetentionConfig = toml::from_str("[[camera]]\nid = \"a/b\"\n").unwrap();
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("neither max_age_s nor max_bytes"), "{e}");
        assert!(toml::from_str::<RetentionConfig>("max_age = 1\n").is_err());
    }
}
