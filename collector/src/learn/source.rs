//! Hot swap: [`RegistryModelSource`] polls the registry's `current`
//! pointers and swaps the models it serves without a restart.
//!
//! Architecture Invariant: a swap happens only after the new version loaded
//! and passed its probe run, off the inference path (a blocking task); the
//! lookup ([`ModelSource::verifier`]) only clones an `Arc` under a read
//! lock, so inference never waits for a load. A version that fails is
//! refused once (log + `camfleet_collector_model_load_failures_total`), the
//! previous one keeps serving, and the same version is not retried until
//! the pointer moves.

use super::manifest::ModelKind;
use super::model::{ModelSource, SceneModel, Verifier};
use super::registry::{ModelName, Registry};
use super::runtime::{OrtSceneModel, OrtVerifier};
use crate::archive::Archive;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const LOAD_FAILURES: &str = "camfleet_collector_model_load_failures_total";
pub const SWAPS: &str = "camfleet_collector_model_swaps_total";

#[derive(Default)]
struct InForce {
    verifiers: BTreeMap<String, Arc<dyn Verifier>>,
    /// Candidates in shadow, by model name (docs/learning.md "Live shadow").
    shadows: BTreeMap<String, Arc<dyn Verifier>>,
    scenes: BTreeMap<String, Arc<dyn SceneModel>>,
}

pub struct RegistryModelSource {
    in_force: RwLock<InForce>,
    /// Versions seen per name (loaded or refused), so a refused version is
    /// not reloaded every poll.
    seen: std::sync::Mutex<BTreeMap<String, String>>,
    ort_dylib: Option<PathBuf>,
}

impl RegistryModelSource {
    pub fn new(ort_dylib: Option<PathBuf>) -> Self {
        metrics::describe_counter!(
            LOAD_FAILURES,
            "Registry model versions refused at load (the previous version keeps serving)"
        );
        metrics::describe_counter!(SWAPS, "Model versions put in force by hot swap");
        Self {
            in_force: RwLock::new(InForce::default()),
            seen: Default::default(),
            ort_dylib,
        }
    }

    /// Model name -> version in force, for logs, tests and the page.
    pub fn versions_in_force(&self) -> BTreeMap<String, String> {
        let f = self.in_force.read().unwrap_or_else(|e| e.into_inner());
        f.verifiers
            .iter()
            .map(|(n, v)| (n.clone(), v.version().to_string()))
            .chain(
                f.scenes
                    .iter()
                    .map(|(n, s)| (n.clone(), s.version().to_string())),
            )
            .collect()
    }

    /// Model name -> version in shadow.
    pub fn versions_in_shadow(&self) -> BTreeMap<String, String> {
        let f = self.in_force.read().unwrap_or_else(|e| e.into_inner());
        f.shadows
            .iter()
            .map(|(n, v)| (n.clone(), v.version().to_string()))
            .collect()
    }

    /// One pass over the registry: load every pointer that moved. Errors
    /// reading the registry itself are returned (the caller logs and tries
    /// again next period); a bad model version is refused and counted.
    pub async fn poll<A: Archive>(
        &self,
        registry: &Registry<A>,
    ) -> Result<(), super::registry::RegistryError> {
        for name in registry.names().await? {
            if name.kind == ModelKind::Verifier {
                self.poll_shadow(registry, &name).await?;
            }
            let key = name.to_string();
            let Some(pointer) = registry.current(&name).await? else {
                continue;
            };
            let unchanged = self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .is_some_and(|v| *v == pointer.version);
            if unchanged {
                continue;
            }
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), pointer.version.clone());
            let result = match registry.read_version(&name, &pointer.version).await {
                Ok(files) => {
                    self.load_and_swap(&name, &pointer.version, files, false)
                        .await
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(message) = result {
                metrics::counter!(LOAD_FAILURES, "model" => key.clone()).increment(1);
                tracing::warn!(
                    model = %key,
                    version = %pointer.version,
                    in_force = ?self.versions_in_force().get(&key),
                    "model refused, the previous version keeps serving: {message}"
                );
            }
        }
        Ok(())
    }

    /// The shadow pointer of one verifier name: load a new shadow as
    /// `current` is loaded (refused and logged on failure, `current`
    /// untouched), drop it when the pointer is gone.
    async fn poll_shadow<A: Archive>(
        &self,
        registry: &Registry<A>,
        name: &ModelName,
    ) -> Result<(), super::registry::RegistryError> {
        let key = name.to_string();
        let seen_key = format!("shadow:{key}");
        let pointer = registry.shadow(name).await?;
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&seen_key)
            .cloned();
        match pointer {
            None => {
                if seen.is_some() {
                    self.seen
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&seen_key);
                    let was = self
                        .in_force
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .shadows
                        .remove(&key);
                    if let Some(was) = was {
                        tracing::info!(model = %key, version = was.version(), "shadow ended");
                    }
                }
            }
            Some(p) if seen.as_deref() == Some(p.version.as_str()) => {}
            Some(p) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(seen_key, p.version.clone());
                let result = match registry.read_version(name, &p.version).await {
                    Ok(files) => self.load_and_swap(name, &p.version, files, true).await,
                    Err(e) => Err(e.to_string()),
                };
                if let Err(message) = result {
                    metrics::counter!(LOAD_FAILURES, "model" => key.clone()).increment(1);
                    tracing::warn!(
                        model = %key,
                        version = %p.version,
                        "shadow model refused, current scoring unaffected: {message}"
                    );
                }
            }
        }
        Ok(())
    }

    async fn load_and_swap(
        &self,
        name: &ModelName,
        version: &str,
        files: super::registry::VersionFiles,
        shadow: bool,
    ) -> Result<(), String> {
        let (key, v, dylib) = (
            name.to_string(),
            version.to_string(),
            self.ort_dylib.clone(),
        );
        let kind = name.kind;
        // ONNX Runtime's session creation is CPU work: off the async workers.
        let loaded = tokio::task::spawn_blocking(move || match kind {
            ModelKind::Verifier => OrtVerifier::load(
                &key,
                &v,
                &files.manifest_toml,
                &files.onnx,
                dylib.as_deref(),
            )
            .map(|m| Loaded::Verifier(Arc::new(m))),
            ModelKind::Scene => OrtSceneModel::load(
                &key,
                &v,
                &files.manifest_toml,
                &files.onnx,
                dylib.as_deref(),
            )
            .map(|m| Loaded::Scene(Arc::new(m))),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let key = name.to_string();
        {
            let mut f = self.in_force.write().unwrap_or_else(|e| e.into_inner());
            match loaded {
                Loaded::Verifier(m) if shadow => {
                    f.shadows.insert(key.clone(), m);
                }
                Loaded::Verifier(m) => {
                    f.verifiers.insert(key.clone(), m);
                }
                Loaded::Scene(m) => {
                    f.scenes.insert(key.clone(), m);
                }
            }
        }
        if shadow {
            tracing::info!(model = %key, version, "model in shadow");
            return Ok(());
        }
        metrics::counter!(SWAPS, "model" => key.clone(), "version" => version.to_string())
            .increment(1);
        tracing::info!(model = %key, version, "model in force");
        Ok(())
    }

    /// Polls every `period` until the returned handle is aborted or the
    /// source is dropped.
    pub fn spawn_polling<A: Archive + 'static>(
        self: &Arc<Self>,
        registry: Registry<A>,
        period: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(source) = weak.upgrade() else { return };
                if let Err(e) = source.poll(&registry).await {
                    tracing::warn!("model registry poll failed, retrying next period: {e}");
                }
            }
        })
    }
}

enum Loaded {
    Verifier(Arc<OrtVerifier>),
    Scene(Arc<OrtSceneModel>),
}

impl ModelSource for RegistryModelSource {
    /// The camera's own verifier, else its site's.
    fn verifier(&self, camera: &str) -> Option<Arc<dyn Verifier>> {
        let (site, cam) = camera.split_once('/')?;
        let f = self.in_force.read().unwrap_or_else(|e| e.into_inner());
        f.verifiers
            .get(&format!("verifier@{site}@{cam}"))
            .or_else(|| f.verifiers.get(&format!("verifier@{site}")))
            .cloned()
    }

    fn scene(&self, camera: &str) -> Option<Arc<dyn SceneModel>> {
        let (site, cam) = camera.split_once('/')?;
        let f = self.in_force.read().unwrap_or_else(|e| e.into_inner());
        f.scenes.get(&format!("scene@{site}@{cam}")).cloned()
    }

    /// Same precedence as [`Self::verifier`]: the camera's, else its site's.
    fn shadow_verifier(&self, camera: &str) -> Option<Arc<dyn Verifier>> {
        let (site, cam) = camera.split_once('/')?;
        let f = self.in_force.read().unwrap_or_else(|e| e.into_inner());
        f.shadows
            .get(&format!("verifier@{site}@{cam}"))
            .or_else(|| f.shadows.get(&format!("verifier@{site}")))
            .cloned()
    }
}

/// The collector's model source when `[learning]` is enabled: the registry
/// under `archive.root`, read once now (so models in force are there before
/// the first frame), then polled every `poll_interval_ms`. The inference
/// processor looks models up through it ([`ModelSource`]).
pub async fn start(
    cfg: &camfleet_shared::config::CollectorConfig,
) -> Result<
    Option<(Arc<RegistryModelSource>, tokio::task::JoinHandle<()>)>,
    crate::archive::ArchiveError,
> {
    let Some(learning) = cfg.learning.as_ref().filter(|l| l.enabled) else {
        return Ok(None);
    };
    let registry = Registry::new(crate::archive::AnyArchive::open(&cfg.archive.root).await?);
    let ort = cfg
        .inference
        .as_ref()
        .and_then(|i| i.onnxruntime_library.clone());
    let source = Arc::new(RegistryModelSource::new(ort));
    if let Err(e) = source.poll(&registry).await {
        tracing::warn!("model registry not readable at start, serving no learned models yet: {e}");
    }
    tracing::info!(in_force = ?source.versions_in_force(), "learned models");
    let poller = source.spawn_polling(registry, Duration::from_millis(learning.poll_interval_ms));
    Ok(Some((source, poller)))
}
