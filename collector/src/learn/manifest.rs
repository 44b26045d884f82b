//! `manifest.toml` of a registry version: what the model is and what it
//! expects, checked before a model is promoted or loaded (docs/learning.md).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Probability that a detection is real (`probability [N,1]` or `[N]`).
    Verifier,
    /// Mahalanobis-like distance of a whole-frame embedding (`distance [N]`).
    Scene,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Verifier => "verifier",
            Self::Scene => "scene",
        }
    }
}

/// `manifest.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub kind: ModelKind,
    /// Layout of the verifier's input row (`learn::features::FEATURE_LAYOUT_VERSION`)
    /// the model was trained on; scene models record it too.
    pub feature_layout_version: u32,
    /// Detector classes in the one-hot part of the row (verifier; 0 for scene).
    pub num_classes: usize,
    /// Length of the crop (verifier) or whole-frame (scene) embedding.
    pub embedding_dim: usize,
    /// Name of the graph's float input `[N, input_width]`.
    pub input_name: String,
    /// Row width: verifier `7 + num_classes + embedding_dim`, scene `embedding_dim`.
    pub input_width: usize,
    /// Name of the graph's float output: `[N,1]` or `[N]`.
    pub output_name: String,
    /// Verifier: reject below this probability. Scene: alarm at or above this distance.
    pub threshold: f32,
    /// Who trained it: `camfleet-collector 0.1.0`, `pyspark 4.3.0`, ...
    pub trained_by: String,
    /// When, RFC 3339 UTC.
    pub created_utc: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest.toml is not valid: {0}")]
    Parse(String),
    #[error("manifest.toml: {0}")]
    Invalid(String),
}

impl ModelManifest {
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: Self = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a manifest serialises")
    }

    /// The row width this kind of model must take, from its other fields.
    pub fn expected_width(&self) -> usize {
        match self.kind {
            ModelKind::Verifier => 7 + self.num_classes + self.embedding_dim,
            ModelKind::Scene => self.embedding_dim,
        }
    }

    fn check(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if self.feature_layout_version != super::features::FEATURE_LAYOUT_VERSION {
            return invalid(format!(
                "feature_layout_version {} but this collector builds layout {}",
                self.feature_layout_version,
                super::features::FEATURE_LAYOUT_VERSION
            ));
        }
        if self.input_width != self.expected_width() {
            return invalid(format!(
                "input_width {} but a {} with num_classes {} and embedding_dim {} takes {}",
                self.input_width,
                self.kind.as_str(),
                self.num_classes,
                self.embedding_dim,
                self.expected_width()
            ));
        }
        if !self.threshold.is_finite() {
            return invalid("threshold is not a finite number".into());
        }
        if self.kind == ModelKind::Verifier && !(0.0..=1.0).contains(&self.threshold) {
            return invalid(format!(
                "a verifier's threshold is a probability, got {}",
                self.threshold
            ));
        }
        if self.input_name.is_empty() || self.output_name.is_empty() {
            return invalid("input_name and output_name must be set".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> ModelManifest {
        ModelManifest {
            kind: ModelKind::Verifier,
            feature_layout_version: 1,
            num_classes: 80,
            embedding_dim: 16,
            input_name: "features".into(),
            input_width: 103,
            output_name: "probability".into(),
            threshold: 0.4,
            trained_by: "test".into(),
            created_utc: "2026-11-30T22:00:00Z".into(),
        }
    }

    #[test]
    fn round_trips_and_names_what_is_wrong() {
        let m = verifier();
        assert_eq!(ModelManifest::from_toml(&m.to_toml()).unwrap(), m);
        let bad = m
            .to_toml()
            .replace("input_width = 103", "input_width = 100");
        let e = ModelManifest::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("input_width 100") && e.contains("103"), "{e}");
        let bad = m
            .to_toml()
            .replace("feature_layout_version = 1", "feature_layout_version = 9");
        assert!(ModelManifest::from_toml(&bad)
            .unwrap_err()
            .to_string()
            .contains("feature_layout_version 9"));
        let unknown = format!("{}\nsurprise = 1\n", m.to_toml());
        assert!(ModelManifest::from_toml(&unknown)
            .unwrap_err()
            .to_string()
            .contains("surprise"));
    }
}
