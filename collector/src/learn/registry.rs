//! The model registry, on the archive's filesystem (local directory or
//! HDFS) through [`Archive`]:
//!
//! ```text
//! <root>/_models/<name>/<version>/model.onnx
//!                                /metrics.json        training + shadow evaluation report
//!                                /training-data.json  what it was trained on
//!                                /manifest.toml       written LAST: a version is complete iff present
//! <root>/_models/<name>/current                       {"version", "previous": [...], "changed_utc"}
//! <root>/_models/<name>/shadow                        {"version", "since_us", "since_utc"}: in live shadow
//! ```
//!
//! Names are `verifier@<site>@<camera>`, `verifier@<site>` (per-site scope)
//! and `scene@<site>@<camera>`: `@` is a valid path component character on
//! both filesystems and cannot occur in a camera id, so a name parses back
//! without ambiguity (ids may contain `.`).
//!
//! Architecture Invariant: the `current` and `shadow` files are the only
//! mutable things. Each is replaced whole by [`Archive::put`] (tmp ->
//! durable -> rename); `current` carries the history, so the pointer and
//! the rollback stack change in one atomic step. Versions are immutable
//! once their manifest exists.

use super::manifest::ModelKind;
use crate::archive::{Archive, ArchiveError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The registry's directory under the archive root. Archive walkers
/// (catalog, retention) skip it: it is not a site.
pub const MODELS_DIR: &str = "_models";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("model name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("model {name} has no version {version}")]
    NoVersion { name: String, version: String },
    #[error("model {name} has no current version")]
    NoCurrent { name: String },
    #[error("model {name}: nothing to roll back to (no previous version)")]
    NoPrevious { name: String },
    #[error("{path}: {message}")]
    Corrupt { path: String, message: String },
}

/// What a model is for: its kind and the cameras it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelName {
    pub kind: ModelKind,
    pub site: String,
    /// `None`: a per-site verifier.
    pub camera: Option<String>,
}

impl ModelName {
    pub fn parse(name: &str) -> Result<Self, RegistryError> {
        let bad = |reason: &str| RegistryError::BadName {
            name: name.into(),
            reason: reason.into(),
        };
        let parts: Vec<&str> = name.split('@').collect();
        let kind = match parts[0] {
            "verifier" => ModelKind::Verifier,
            "scene" => ModelKind::Scene,
            _ => return Err(bad("must start with `verifier@` or `scene@`")),
        };
        let (site, camera) =
            match parts.as_slice() {
                [_, site] if kind == ModelKind::Verifier => (*site, None),
                [_, site, camera] => (*site, Some(*camera)),
                _ => return Err(bad(
                    "expected verifier@<site>, verifier@<site>@<camera> or scene@<site>@<camera>",
                )),
            };
        let id = format!("{site}/{}", camera.unwrap_or("x"));
        camfleet_shared::CameraId::new(&id).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            kind,
            site: site.into(),
            camera: camera.map(String::from),
        })
    }

    pub fn verifier_for_camera(camera: &camfleet_shared::CameraId) -> Self {
        Self {
            kind: ModelKind::Verifier,
            site: camera.site().into(),
            camera: Some(camera.camera().into()),
        }
    }

    pub fn verifier_for_site(site: &str) -> Self {
        Self {
            kind: ModelKind::Verifier,
            site: site.into(),
            camera: None,
        }
    }

    pub fn scene_for_camera(camera: &camfleet_shared::CameraId) -> Self {
        Self {
            kind: ModelKind::Scene,
            site: camera.site().into(),
            camera: Some(camera.camera().into()),
        }
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.kind.as_str(), self.site)?;
        if let Some(c) = &self.camera {
            write!(f, "@{c}")?;
        }
        Ok(())
    }
}

/// The content of `current`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrentPointer {
    pub version: String,
    /// Versions in force before, oldest first; `rollback` pops the last.
    pub previous: Vec<String>,
    pub changed_utc: String,
}

/// The content of `shadow`: the candidate scoring live traffic beside
/// `current` until the live gate promotes or rejects it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowPointer {
    pub version: String,
    /// When it went into shadow, µs since the Unix epoch: live labels of
    /// detections before it are not the shadow's.
    pub since_us: i64,
    pub since_utc: String,
}

/// The files of one version.
#[derive(Clone, Debug)]
pub struct VersionFiles {
    pub onnx: Bytes,
    pub manifest_toml: String,
    pub metrics_json: String,
    pub training_data_json: String,
}

pub struct Registry<A> {
    archive: A,
}

fn now_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

impl<A: Archive> Registry<A> {
    pub fn new(archive: A) -> Self {
        Self { archive }
    }

    pub fn archive(&self) -> &A {
        &self.archive
    }

    fn dir(name: &ModelName) -> String {
        format!("{MODELS_DIR}/{name}")
    }

    /// Where a file of the registry is, for people.
    pub fn location(&self, name: &ModelName, file: &str) -> String {
        self.archive
            .location(&format!("{}/{file}", Self::dir(name)))
    }

    /// Every model name with at least one entry, sorted.
    pub async fn names(&self) -> Result<Vec<ModelName>, RegistryError> {
        Ok(self
            .archive
            .list(MODELS_DIR)
            .await?
            .into_iter()
            .filter(|e| e.is_dir)
            .filter_map(|e| ModelName::parse(&e.name).ok())
            .collect())
    }

    /// Complete versions (manifest present), oldest first: version names
    /// start with their UTC creation time, so they sort by age.
    pub async fn versions(&self, name: &ModelName) -> Result<Vec<String>, RegistryError> {
        let dir = Self::dir(name);
        let mut out = Vec::new();
        for e in self
            .archive
            .list(&dir)
            .await?
            .into_iter()
            .filter(|e| e.is_dir)
        {
            let listing = self.archive.list(&format!("{dir}/{}", e.name)).await?;
            if listing.iter().any(|f| f.name == "manifest.toml") {
                out.push(e.name);
            }
        }
        Ok(out)
    }

    /// Writes a new immutable version; returns its name
    /// (`<yyyymmddThhmmssZ>-<first 8 hex of the model's sha256>`).
    ///
    /// Steps: model.onnx, metrics.json, training-data.json, then
    /// manifest.toml, each durable before the next; a crash before the
    /// manifest leaves an incomplete directory that no listing shows and
    /// no pointer names.
    pub async fn add_version(
        &self,
        name: &ModelName,
        files: &VersionFiles,
    ) -> Result<String, RegistryError> {
        let digest = Sha256::digest(&files.onnx);
        let base = format!(
            "{}-{:02x}{:02x}{:02x}{:02x}",
            now_utc().format("%Y%m%dT%H%M%SZ"),
            digest[0],
            digest[1],
            digest[2],
            digest[3]
        );
        // The same model added twice in one second: a new version anyway,
        // never a rewrite of an existing (immutable) one.
        let mut version = base.clone();
        let mut n = 1;
        while self
            .archive
            .get(&format!("{}/{version}/manifest.toml", Self::dir(name)))
            .await?
            .is_some()
        {
            n += 1;
            version = format!("{base}.{n}");
        }
        let dir = format!("{}/{version}", Self::dir(name));
        self.archive
            .put(&format!("{dir}/model.onnx"), files.onnx.clone())
            .await?;
        self.archive
            .put(
                &format!("{dir}/metrics.json"),
                Bytes::from(files.metrics_json.clone()),
            )
            .await?;
        self.archive
            .put(
                &format!("{dir}/training-data.json"),
                Bytes::from(files.training_data_json.clone()),
            )
            .await?;
        self.archive
            .put(
                &format!("{dir}/manifest.toml"),
                Bytes::from(files.manifest_toml.clone()),
            )
            .await?;
        Ok(version)
    }

    /// Replaces a version's metrics.json (the promote step records the
    /// shadow evaluation there).
    pub async fn put_metrics(
        &self,
        name: &ModelName,
        version: &str,
        metrics_json: &str,
    ) -> Result<(), RegistryError> {
        self.read_text(name, version, "manifest.toml").await?;
        self.archive
            .put(
                &format!("{}/{version}/metrics.json", Self::dir(name)),
                Bytes::from(metrics_json.to_string()),
            )
            .await?;
        Ok(())
    }

    async fn read_text(
        &self,
        name: &ModelName,
        version: &str,
        file: &str,
    ) -> Result<String, RegistryError> {
        let path = format!("{}/{version}/{file}", Self::dir(name));
        let bytes = self
            .archive
            .get(&path)
            .await?
            .ok_or_else(|| RegistryError::NoVersion {
                name: name.to_string(),
                version: version.into(),
            })?;
        String::from_utf8(bytes.to_vec()).map_err(|e| RegistryError::Corrupt {
            path: self.archive.location(&path),
            message: e.to_string(),
        })
    }

    pub async fn read_version(
        &self,
        name: &ModelName,
        version: &str,
    ) -> Result<VersionFiles, RegistryError> {
        // The manifest first: without it the version does not exist.
        let manifest_toml = self.read_text(name, version, "manifest.toml").await?;
        let onnx_path = format!("{}/{version}/model.onnx", Self::dir(name));
        let onnx = self
            .archive
            .get(&onnx_path)
            .await?
            .ok_or_else(|| RegistryError::Corrupt {
                path: self.archive.location(&onnx_path),
                message: "model.onnx is missing".into(),
            })?;
        Ok(VersionFiles {
            onnx,
            manifest_toml,
            metrics_json: self
                .read_text(name, version, "metrics.json")
                .await
                .unwrap_or_default(),
            training_data_json: self
                .read_text(name, version, "training-data.json")
                .await
                .unwrap_or_default(),
        })
    }

    pub async fn current(&self, name: &ModelName) -> Result<Option<CurrentPointer>, RegistryError> {
        let path = format!("{}/current", Self::dir(name));
        let Some(bytes) = self.archive.get(&path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                path: self.archive.location(&path),
                message: e.to_string(),
            })
    }

    async fn put_current(
        &self,
        name: &ModelName,
        pointer: &CurrentPointer,
    ) -> Result<(), RegistryError> {
        let json = serde_json::to_vec_pretty(pointer).expect("a pointer serialises");
        self.archive
            .put(&format!("{}/current", Self::dir(name)), Bytes::from(json))
            .await?;
        Ok(())
    }

    /// Points `current` at `version` (which must be complete), pushing the
    /// version in force onto the history. The caller has checked the model.
    pub async fn set_current(
        &self,
        name: &ModelName,
        version: &str,
    ) -> Result<CurrentPointer, RegistryError> {
        self.read_text(name, version, "manifest.toml").await?;
        let mut previous = match self.current(name).await? {
            Some(p) => {
                let mut prev = p.previous;
                if p.version != version {
                    prev.push(p.version);
                }
                prev
            }
            None => Vec::new(),
        };
        previous.retain(|v| v != version);
        let pointer = CurrentPointer {
            version: version.into(),
            previous,
            changed_utc: now_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        self.put_current(name, &pointer).await?;
        Ok(pointer)
    }

    /// The candidate in shadow, if any.
    pub async fn shadow(&self, name: &ModelName) -> Result<Option<ShadowPointer>, RegistryError> {
        let path = format!("{}/shadow", Self::dir(name));
        let Some(bytes) = self.archive.get(&path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RegistryError::Corrupt {
                path: self.archive.location(&path),
                message: e.to_string(),
            })
    }

    /// Puts a complete version in shadow (replacing any other), atomically
    /// like `current` (Archive::put).
    pub async fn set_shadow(
        &self,
        name: &ModelName,
        version: &str,
    ) -> Result<ShadowPointer, RegistryError> {
        self.read_text(name, version, "manifest.toml").await?;
        let now = now_utc();
        let pointer = ShadowPointer {
            version: version.into(),
            since_us: now.timestamp_micros(),
            since_utc: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let json = serde_json::to_vec_pretty(&pointer).expect("a pointer serialises");
        self.archive
            .put(&format!("{}/shadow", Self::dir(name)), Bytes::from(json))
            .await?;
        Ok(pointer)
    }

    /// Ends the shadow (after the live gate decided); `false` if none.
    pub async fn clear_shadow(&self, name: &ModelName) -> Result<bool, RegistryError> {
        Ok(self
            .archive
            .delete(&format!("{}/shadow", Self::dir(name)))
            .await?)
    }

    /// Restores the version in force before the current one.
    pub async fn rollback(&self, name: &ModelName) -> Result<CurrentPointer, RegistryError> {
        let mut p = self
            .current(name)
            .await?
            .ok_or_else(|| RegistryError::NoCurrent {
                name: name.to_string(),
            })?;
        let back = p.previous.pop().ok_or_else(|| RegistryError::NoPrevious {
            name: name.to_string(),
        })?;
        let pointer = CurrentPointer {
            version: back,
            previous: p.previous,
            changed_utc: now_utc().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        self.put_current(name, &pointer).await?;
        Ok(pointer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::local::LocalArchive;

    #[test]
    fn names_round_trip_and_are_unambiguous() {
        for n in ["verifier@depot@gate.1", "verifier@depot", "scene@s-1@cam_2"] {
            assert_eq!(ModelName::parse(n).unwrap().to_string(), n);
        }
        for bad in [
            "scene@depot",
            "boat@a@b",
            "verifier@a@b@c",
            "verifier@a/b@c",
            "verifier@@c",
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad}");
        }
    }

    fn files(tag: &str) -> VersionFiles {
        VersionFiles {
            onnx: Bytes::from(format!("onnx {tag}")),
            manifest_toml: format!("# {tag}"),
            metrics_json: "{}".into(),
            training_data_json: "{}".into(),
        }
    }

    #[tokio::test]
    async fn promote_and_rollback_move_one_pointer_with_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::new(LocalArchive::open(dir.path().to_str().unwrap()).unwrap());
        let name = ModelName::parse("verifier@s@c").unwrap();
        let v1 = reg.add_version(&name, &files("1")).await.unwrap();
        let v2 = reg.add_version(&name, &files("2")).await.unwrap();
        assert_ne!(v1, v2, "different models, different versions");
        // An interrupted write (no manifest) is not a version.
        std::fs::create_dir_all(
            dir.path()
                .join("_models/verifier@s@c/99990101T000000Z-dead"),
        )
        .unwrap();
        let mut listed = reg.versions(&name).await.unwrap();
        listed.sort();
        let mut want = vec![v1.clone(), v2.clone()];
        want.sort();
        assert_eq!(listed, want);
        assert!(matches!(
            reg.set_current(&name, "99990101T000000Z-dead").await,
            Err(RegistryError::NoVersion { .. })
        ));
        assert!(matches!(
            reg.rollback(&name).await,
            Err(RegistryError::NoCurrent { .. })
        ));
        reg.set_current(&name, &v1).await.unwrap();
        let p = reg.set_current(&name, &v2).await.unwrap();
        assert_eq!(
            (p.version.as_str(), p.previous.clone()),
            (v2.as_str(), vec![v1.clone()])
        );
        let p = reg.rollback(&name).await.unwrap();
        assert_eq!(p.version, v1);
        assert!(p.previous.is_empty());
        assert!(matches!(
            reg.rollback(&name).await,
            Err(RegistryError::NoPrevious { .. })
        ));
        assert_eq!(reg.names().await.unwrap(), std::slice::from_ref(&name));
        // The shadow pointer: one complete version, replaced whole, removed.
        assert!(reg.shadow(&name).await.unwrap().is_none());
        assert!(matches!(
            reg.set_shadow(&name, "99990101T000000Z-dead").await,
            Err(RegistryError::NoVersion { .. })
        ));
        reg.set_shadow(&name, &v2).await.unwrap();
        assert_eq!(reg.shadow(&name).await.unwrap().unwrap().version, v2);
        assert_eq!(reg.current(&name).await.unwrap().unwrap().version, v1);
        assert!(reg.clear_shadow(&name).await.unwrap());
        assert!(reg.shadow(&name).await.unwrap().is_none());
        assert!(!reg.clear_shadow(&name).await.unwrap());
        assert_eq!(
            reg.read_version(&name, &v1).await.unwrap().onnx,
            Bytes::from("onnx 1")
        );
        assert!(!dir
            .path()
            .join("_models/verifier@s@c/.current.tmp")
            .exists());
    }
}
