//! ONNX Runtime implementations of [`Verifier`] and [`SceneModel`], loaded
//! from a registry version's `model.onnx` + `manifest.toml`.
//!
//! Loading checks, in order, and refuses with [`LoadError`] naming what is
//! wrong: the manifest (kind, feature layout, widths), that ONNX Runtime
//! reads the bytes, the graph's input/output names and shapes against the
//! manifest, and a probe run on a zero row giving one finite value in range.
//! A model that passes can still fail at run time; callers keep the
//! previous one then (DESIGN.md invariant 4).

use super::manifest::{ManifestError, ModelKind, ModelManifest};
use super::model::{ModelError, SceneModel, Verifier};
use crate::detect::{declared, dims_match, environment, DetectError};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{name} {version}: {source}")]
    Manifest {
        name: String,
        version: String,
        source: ManifestError,
    },
    #[error("{name} {version}: manifest kind is {got}, expected a {want}")]
    Kind {
        name: String,
        version: String,
        got: &'static str,
        want: &'static str,
    },
    #[error("{name} {version}: {message}")]
    Model {
        name: String,
        version: String,
        message: String,
    },
    #[error(transparent)]
    Runtime(#[from] DetectError),
}

/// A checked ONNX Runtime session for one registry version. The session is
/// behind a mutex because `Session::run` takes `&mut self`; scoring a batch
/// of detections takes microseconds, so contention is not worth a pool.
struct Loaded {
    name: String,
    version: String,
    manifest: ModelManifest,
    session: Mutex<Session>,
}

impl Loaded {
    fn load(
        name: &str,
        version: &str,
        manifest_toml: &str,
        onnx: &[u8],
        want: ModelKind,
        ort_dylib: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let (n, v) = (name.to_string(), version.to_string());
        let manifest =
            ModelManifest::from_toml(manifest_toml).map_err(|source| LoadError::Manifest {
                name: n.clone(),
                version: v.clone(),
                source,
            })?;
        if manifest.kind != want {
            return Err(LoadError::Kind {
                name: n,
                version: v,
                got: manifest.kind.as_str(),
                want: want.as_str(),
            });
        }
        let fail = |message: String| LoadError::Model {
            name: n.clone(),
            version: v.clone(),
            message,
        };
        let env = environment(ort_dylib)?;
        let cannot = |e: String| fail(format!("ONNX Runtime cannot load model.onnx: {e}"));
        let session = Session::builder(&env)
            .map_err(|e| cannot(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| cannot(e.to_string()))?
            .with_intra_threads(1)
            .map_err(|e| cannot(e.to_string()))?
            .commit_from_memory(onnx)
            .map_err(|e| cannot(e.to_string()))?;
        let input = declared(session.inputs(), &manifest.input_name, "input").map_err(&fail)?;
        let width = manifest.input_width as i64;
        if !dims_match(&input, &[None, Some(width)]) {
            return Err(fail(format!(
                "input {:?} is {input:?}, the manifest says [?, {width}]",
                manifest.input_name
            )));
        }
        let output = declared(session.outputs(), &manifest.output_name, "output").map_err(&fail)?;
        if !(dims_match(&output, &[None, Some(1)]) || dims_match(&output, &[None])) {
            return Err(fail(format!(
                "output {:?} is {output:?}, expected [?, 1] or [?]",
                manifest.output_name
            )));
        }
        let loaded = Self {
            name: n.clone(),
            version: v.clone(),
            manifest,
            session: Mutex::new(session),
        };
        // The probe: a model that loads but cannot run, or answers garbage,
        // is refused here rather than on live traffic.
        let probe = loaded
            .run(&[vec![0.0; loaded.manifest.input_width]])
            .map_err(|e| fail(format!("probe run failed: {e}")))?;
        let ok = probe.len() == 1
            && probe[0].is_finite()
            && (want == ModelKind::Scene || (0.0..=1.0).contains(&probe[0]));
        if !ok {
            return Err(fail(format!(
                "probe run on a zero row answered {probe:?}, expected one finite {}",
                match want {
                    ModelKind::Verifier => "probability in [0, 1]",
                    ModelKind::Scene => "distance",
                }
            )));
        }
        Ok(loaded)
    }

    fn run(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        let fail = |message: String| ModelError::Run {
            name: self.name.clone(),
            version: self.version.clone(),
            message,
        };
        let width = self.manifest.input_width;
        let mut flat = Vec::with_capacity(rows.len() * width);
        for (i, r) in rows.iter().enumerate() {
            if r.len() != width {
                return Err(fail(format!(
                    "row {i} has {} values, the model takes {width}",
                    r.len()
                )));
            }
            flat.extend_from_slice(r);
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let tensor = TensorRef::from_array_view(([rows.len(), width], flat.as_slice()))
            .map_err(|e| fail(e.to_string()))?;
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs![self.manifest.input_name.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        let value = outputs
            .get(&self.manifest.output_name)
            .ok_or_else(|| fail(format!("no output {:?}", self.manifest.output_name)))?;
        let (_, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        if data.len() != rows.len() {
            return Err(fail(format!(
                "{} values for {} rows",
                data.len(),
                rows.len()
            )));
        }
        Ok(data.to_vec())
    }
}

/// A verifier on ONNX Runtime.
pub struct OrtVerifier(Loaded);

impl OrtVerifier {
    pub fn load(
        name: &str,
        version: &str,
        manifest_toml: &str,
        onnx: &[u8],
        ort_dylib: Option<&Path>,
    ) -> Result<Self, LoadError> {
        Loaded::load(
            name,
            version,
            manifest_toml,
            onnx,
            ModelKind::Verifier,
            ort_dylib,
        )
        .map(Self)
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.0.manifest
    }
}

impl Verifier for OrtVerifier {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn version(&self) -> &str {
        &self.0.version
    }
    fn num_classes(&self) -> usize {
        self.0.manifest.num_classes
    }
    fn threshold(&self) -> f32 {
        self.0.manifest.threshold
    }
    fn probabilities(&self, rows: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        self.0.run(rows)
    }
}

/// A scene model on ONNX Runtime.
pub struct OrtSceneModel(Loaded);

impl OrtSceneModel {
    pub fn load(
        name: &str,
        version: &str,
        manifest_toml: &str,
        onnx: &[u8],
        ort_dylib: Option<&Path>,
    ) -> Result<Self, LoadError> {
        Loaded::load(
            name,
            version,
            manifest_toml,
            onnx,
            ModelKind::Scene,
            ort_dylib,
        )
        .map(Self)
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.0.manifest
    }

    /// Distances of many embeddings in one run.
    pub fn distances(&self, embeddings: &[Vec<f32>]) -> Result<Vec<f32>, ModelError> {
        self.0.run(embeddings)
    }
}

impl SceneModel for OrtSceneModel {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn version(&self) -> &str {
        &self.0.version
    }
    fn threshold(&self) -> f32 {
        self.0.manifest.threshold
    }
    fn distance(&self, embedding: &[f32]) -> Result<f32, ModelError> {
        Ok(self.0.run(&[embedding.to_vec()])?[0])
    }
}
