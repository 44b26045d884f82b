//! What a trained model answers, and where the inference processor gets the
//! models in force. Implementations behind [`ModelSource`] hot-swap: each
//! call returns the model current at that moment, so a promotion (or
//! rollback) takes effect at the next picture without a restart.

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {name} {version}: {message}")]
    Run {
        name: String,
        version: String,
        message: String,
    },
}

/// A detection verifier: probability that each detection is real.
pub trait Verifier: Send + Sync {
    /// Registry name and version, recorded with every verdict.
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    /// Number of detector classes in the one-hot part of the input
    /// ([`super::features::verifier_input`]).
    fn num_classes(&self) -> usize;
    /// Detections scoring below this are flagged rejected (still recorded).
    fn threshold(&self) -> f32;
    /// One probability per input row.
    fn probabilities(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError>;
}

/// A scene model: how far a whole-frame embedding is from normal operation.
pub trait SceneModel: Send + Sync {
    fn name(&self) -> &str;
    fn version(&self) -> &str;
    /// Distances at or above this raise a scene event.
    fn threshold(&self) -> f32;
    fn distance(&self, embedding: &[f32]) -> Result<f32, ModelError>;
}

/// The models in force for a camera, looked up per picture.
pub trait ModelSource: Send + Sync {
    fn verifier(&self, camera: &str) -> Option<Arc<dyn Verifier>>;
    fn scene(&self, camera: &str) -> Option<Arc<dyn SceneModel>>;
    /// The candidate verifier in shadow for the camera: it scores live
    /// traffic beside [`Self::verifier`], its verdicts only recorded.
    fn shadow_verifier(&self, _camera: &str) -> Option<Arc<dyn Verifier>> {
        None
    }
}

/// No learned models (learning off, or nothing trained yet).
pub struct NoModels;

impl ModelSource for NoModels {
    fn verifier(&self, _camera: &str) -> Option<Arc<dyn Verifier>> {
        None
    }
    fn scene(&self, _camera: &str) -> Option<Arc<dyn SceneModel>> {
        None
    }
}
