//! The desired documents this agent applied last, persisted in
//! `<data_dir>/fleet/applied.json` so the next start runs the same config
//! even when MQTT is unreachable (docs/mqtt.md, "Persistence").
//!
//! Write: temp file, fsync, rename over the old file, fsync the directory;
//! a crash leaves the old or the new file, never a mix. Start: parse both
//! documents, verify their signatures against the keys agent.toml trusts
//! now, merge onto agent.toml; if any step fails the agent starts on
//! agent.toml alone and says why in its log.

use camfleet_shared::config::AgentConfig;
use camfleet_shared::fleet::{self, DesiredDoc, Scope};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub site: Option<DesiredDoc>,
    pub agent: Option<DesiredDoc>,
}

impl Applied {
    pub fn get(&self, scope: Scope) -> Option<&DesiredDoc> {
        match scope {
            Scope::Site => self.site.as_ref(),
            Scope::Agent => self.agent.as_ref(),
        }
    }

    pub fn set(&mut self, scope: Scope, doc: DesiredDoc) {
        match scope {
            Scope::Site => self.site = Some(doc),
            Scope::Agent => self.agent = Some(doc),
        }
    }

    /// Site first, then agent: the agent's document wins.
    pub fn overlays(&self) -> Vec<&DesiredDoc> {
        self.site.iter().chain(self.agent.iter()).collect()
    }

    /// `{"site":{"version":..,"hash":..}|null,"agent":...}` for the status.
    pub fn summary(&self) -> Value {
        let one = |d: Option<&DesiredDoc>| {
            d.map_or(
                Value::Null,
                |d| json!({"version": d.version, "hash": d.content_hash()}),
            )
        };
        json!({"site": one(self.site.as_ref()), "agent": one(self.agent.as_ref())})
    }

    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("fleet").join("applied.json")
    }

    /// `None` when nothing was ever applied.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, String> {
        let path = Self::path(data_dir);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let v: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc = |k: &str| -> Result<Option<DesiredDoc>, String> {
            match &v[k] {
                Value::Null => Ok(None),
                d => DesiredDoc::parse(d.to_string().as_bytes())
                    .map(Some)
                    .map_err(|e| format!("{}: {k}: {e}", path.display())),
            }
        };
        Ok(Some(Self {
            site: doc("site")?,
            agent: doc("agent")?,
        }))
    }

    pub fn save(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = Self::path(data_dir);
        let dir = path.parent().expect("has a parent");
        std::fs::create_dir_all(dir)?;
        let doc = |d: &Option<DesiredDoc>| {
            d.as_ref().map_or(Value::Null, |d| {
                serde_json::from_str(&d.to_json()).expect("documents are JSON")
            })
        };
        let body = json!({"site": doc(&self.site), "agent": doc(&self.agent)}).to_string();
        let tmp = dir.join("applied.json.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Where the running config came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// agent.toml alone.
    Local,
    /// agent.toml with the documents persisted by an earlier run.
    Persisted,
}

/// The config to start with: agent.toml, with the persisted documents on
/// top when they still verify and validate.
pub fn boot(local_toml: &str, local: AgentConfig) -> (AgentConfig, Applied, ConfigSource) {
    let Some(mqtt) = local.mqtt.clone() else {
        return (local, Applied::default(), ConfigSource::Local);
    };
    let applied = match Applied::load(&local.data_dir) {
        Ok(Some(a)) => a,
        Ok(None) => return (local, Applied::default(), ConfigSource::Local),
        Err(e) => {
            tracing::warn!(error = %e, "persisted fleet config unreadable; starting on agent.toml alone");
            return (local, Applied::default(), ConfigSource::Local);
        }
    };
    let trusted: Vec<_> = mqtt
        .trusted_public_keys
        .iter()
        .filter_map(|k| fleet::parse_public_key(k).ok())
        .collect();
    let checks = [
        (Scope::Site, applied.site.as_ref(), mqtt.site.clone()),
        (
            Scope::Agent,
            applied.agent.as_ref(),
            Some(mqtt.agent_id.clone()),
        ),
    ];
    for (scope, doc, target) in checks {
        let Some(doc) = doc else { continue };
        let Some(target) = target else {
            tracing::warn!("persisted site config ignored: agent.toml names no mqtt.site now");
            return (local, Applied::default(), ConfigSource::Local);
        };
        if let Err(e) = doc.verify(&trusted, scope, &target) {
            tracing::warn!(scope = scope.as_str(), error = %e, "persisted fleet config no longer trusted; starting on agent.toml alone");
            return (local, Applied::default(), ConfigSource::Local);
        }
    }
    match fleet::merge(local_toml, &applied.overlays()) {
        Ok(cfg) => {
            tracing::info!(applied = %applied.summary(), "starting on the last applied fleet config");
            (cfg, applied, ConfigSource::Persisted)
        }
        Err(e) => {
            tracing::warn!(error = %e, "persisted fleet config does not fit agent.toml; starting on agent.toml alone");
            (local, Applied::default(), ConfigSource::Local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"
data_dir = "DATA"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[mqtt]
url = "mqtt://127.0.0.1:1883"
agent_id = "box-1"
[[camera]]
id = "depot/gate"
source = { kind = "test_pattern", width = 320, height = 240 }
"#;

    #[test]
    fn applied_documents_survive_a_restart_and_a_bad_file_falls_back_to_local() {
        let dir = tempfile::tempdir().unwrap();
        let local = LOCAL.replace("DATA", dir.path().to_str().unwrap());
        let cfg = AgentConfig::from_toml(&local).unwrap();
        let (c, a, src) = boot(&local, cfg.clone());
        assert_eq!(
            (c.cameras[0].encoder.bitrate_kbps, src),
            (2000, ConfigSource::Local)
        );
        assert_eq!(a, Applied::default());

        let doc = DesiredDoc::parse(
            br#"{"version":3,"config":{"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":700}}]}}"#,
        )
        .unwrap();
        let mut applied = Applied::default();
        applied.set(Scope::Agent, doc);
        applied.save(dir.path()).unwrap();
        let (c, a, src) = boot(&local, cfg.clone());
        assert_eq!(
            (c.cameras[0].encoder.bitrate_kbps, src),
            (700, ConfigSource::Persisted)
        );
        assert_eq!(a, applied);

        // A key trusted now that did not sign the persisted document.
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let pk = fleet::encode_key(key.verifying_key().as_bytes());
        let signed_only = local.replace(
            "agent_id = \"box-1\"",
            &format!("agent_id = \"box-1\"\ntrusted_public_keys = [\"{pk}\"]"),
        );
        let (c, _, src) = boot(&signed_only, AgentConfig::from_toml(&signed_only).unwrap());
        assert_eq!(
            (c.cameras[0].encoder.bitrate_kbps, src),
            (2000, ConfigSource::Local)
        );

        std::fs::write(Applied::path(dir.path()), b"{garbage").unwrap();
        let (c, _, src) = boot(&local, cfg);
        assert_eq!(
            (c.cameras[0].encoder.bitrate_kbps, src),
            (2000, ConfigSource::Local)
        );
    }
}
