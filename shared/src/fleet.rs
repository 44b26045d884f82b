//! Desired configuration documents of the fleet (docs/mqtt.md): parsing,
//! canonical bytes, content hash, ed25519 signatures and the merge
//! `agent.toml <- site document <- agent document`. No I/O: the agent and
//! the ops CLI (`camfleet`) both use this, so what the CLI checks before
//! publishing is exactly what the agent checks before applying.
//!
//! A document on the wire is one JSON object:
//!
//! ```json
//! {"version": 7, "config": {"camera": [{"id": "depot/gate", "encoder": {"bitrate_kbps": 1500}}]},
//!  "signature": "<base64 of 64 bytes>"}
//! ```
//!
//! * `version`: 1 or more; an agent rejects a document older than the one of
//!   the same scope it applied last.
//! * `config`: a partial agent config in agent.toml's shape. Tables merge
//!   key by key; `camera` entries merge by `id` (a new id adds a camera, an
//!   entry with `remove = true` removes it, and is a no-op when there is no
//!   such camera); any other array replaces.
//! * `signature`: optional; ed25519 over [`DesiredDoc::signed_bytes`].
//!
//! Canonical bytes: `{"config":...,"version":N}` as JSON with every object's
//! keys sorted by their UTF-8 bytes, no whitespace, strings escaped as
//! serde_json escapes them, numbers as serde_json prints them. The content
//! hash is the SHA-256 of the canonical bytes, in hex.

use crate::config::{AgentConfig, ConfigError};
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest;

/// Largest desired document accepted, in bytes. A full config of a box with
/// dozens of cameras is a few KiB.
pub const MAX_DOC_BYTES: usize = 256 * 1024;

/// Which document: the one for every agent of a site, or one agent's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Site,
    Agent,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Site => "site",
            Scope::Agent => "agent",
        }
    }
}

/// The desired-config topic of a site or an agent.
pub fn desired_topic(prefix: &str, scope: Scope, name: &str) -> String {
    match scope {
        Scope::Site => format!("{prefix}/sites/{name}/desired"),
        Scope::Agent => format!("{prefix}/agents/{name}/desired"),
    }
}

pub fn status_topic(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}/agents/{agent_id}/status")
}

pub fn telemetry_topic(prefix: &str, agent_id: &str) -> String {
    format!("{prefix}/agents/{agent_id}/telemetry")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DocError {
    #[error("payload is {0} bytes; the limit is {MAX_DOC_BYTES}")]
    TooLarge(usize),
    #[error("not a JSON document: {0}")]
    NotJson(String),
    #[error("{0}")]
    Shape(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("version: {got} is older than the applied {applied}")]
    Older { got: u64, applied: u64 },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Config(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: u64,
    config: Map<String, Value>,
    #[serde(default)]
    signature: Option<String>,
}

/// A parsed desired document (not yet verified or merged).
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredDoc {
    pub version: u64,
    pub config: Map<String, Value>,
    /// 64 signature bytes, when signed.
    pub signature: Option<Vec<u8>>,
}

impl DesiredDoc {
    pub fn new(version: u64, config: Map<String, Value>) -> Self {
        Self {
            version,
            config,
            signature: None,
        }
    }

    /// Parses a payload; errors name what is wrong.
    pub fn parse(payload: &[u8]) -> Result<Self, DocError> {
        if payload.len() > MAX_DOC_BYTES {
            return Err(DocError::TooLarge(payload.len()));
        }
        let value: Value =
            serde_json::from_slice(payload).map_err(|e| DocError::NotJson(e.to_string()))?;
        if !value.is_object() {
            return Err(DocError::Shape(
                "document: must be a JSON object {\"version\":N,\"config\":{...}}".into(),
            ));
        }
        let wire: Wire =
            serde_json::from_value(value).map_err(|e| DocError::Shape(format!("document: {e}")))?;
        if wire.version == 0 {
            return Err(DocError::Shape("version: must be 1 or more".into()));
        }
        let signature = match wire.signature {
            None => None,
            Some(s) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(s.trim())
                    .map_err(|e| DocError::Signature(format!("not base64: {e}")))?;
                if bytes.len() != 64 {
                    return Err(DocError::Signature(format!(
                        "{} bytes; an ed25519 signature is 64",
                        bytes.len()
                    )));
                }
                Some(bytes)
            }
        };
        Ok(Self {
            version: wire.version,
            config: wire.config,
            signature,
        })
    }

    /// The document as published (signature included when present).
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("version".into(), Value::from(self.version));
        m.insert("config".into(), Value::Object(self.config.clone()));
        if let Some(s) = &self.signature {
            m.insert(
                "signature".into(),
                Value::from(base64::engine::general_purpose::STANDARD.encode(s)),
            );
        }
        let mut out = Vec::new();
        canonical_json(&Value::Object(m), &mut out);
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    /// `{"config":...,"version":N}`, canonical (module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("config".into(), Value::Object(self.config.clone()));
        m.insert("version".into(), Value::from(self.version));
        let mut out = Vec::new();
        canonical_json(&Value::Object(m), &mut out);
        out
    }

    /// SHA-256 of the canonical bytes, hex.
    pub fn content_hash(&self) -> String {
        hex(&sha2::Sha256::digest(self.canonical_bytes()))
    }

    /// What a signature covers: a context line naming the scope and target
    /// (so a document signed for one agent or site cannot be replayed onto
    /// another), then the canonical bytes.
    pub fn signed_bytes(&self, scope: Scope, target: &str) -> Vec<u8> {
        let mut b =
            format!("camfleet-desired-config/1\n{}:{target}\n", scope.as_str()).into_bytes();
        b.extend(self.canonical_bytes());
        b
    }

    pub fn sign(&mut self, key: &SigningKey, scope: Scope, target: &str) {
        let sig = key.sign(&self.signed_bytes(scope, target));
        self.signature = Some(sig.to_bytes().to_vec());
    }

    /// With no trusted keys anything passes; else the document must carry a
    /// signature by one of them.
    pub fn verify(
        &self,
        trusted: &[VerifyingKey],
        scope: Scope,
        target: &str,
    ) -> Result<(), DocError> {
        if trusted.is_empty() {
            return Ok(());
        }
        let Some(sig) = &self.signature else {
            return Err(DocError::Signature(
                "missing; this agent accepts only documents signed by a trusted key".into(),
            ));
        };
        let sig = Signature::from_slice(sig).map_err(|e| DocError::Signature(e.to_string()))?;
        let bytes = self.signed_bytes(scope, target);
        if trusted.iter().any(|k| k.verify(&bytes, &sig).is_ok()) {
            Ok(())
        } else {
            Err(DocError::Signature(format!(
                "not made by any of the {} trusted keys (or made for another {} or content)",
                trusted.len(),
                scope.as_str()
            )))
        }
    }

    /// Keys that may not come from the fleet: they decide where the agent
    /// keeps its state, how it reaches the broker and whom it trusts.
    pub fn check_remote_keys(&self) -> Result<(), DocError> {
        const LIVE_TOP: [&str; 4] = ["kafka", "camera", "spool", "mqtt"];
        for key in self.config.keys() {
            if !LIVE_TOP.contains(&key.as_str()) {
                return Err(DocError::Forbidden(format!(
                    "config.{key}: cannot be set over MQTT (allowed: kafka, camera, spool, mqtt.telemetry_period_s); edit agent.toml"
                )));
            }
        }
        if let Some(m) = self.config.get("mqtt") {
            let Some(m) = m.as_object() else {
                return Err(DocError::Shape("config.mqtt: must be a table".into()));
            };
            if let Some(k) = m.keys().find(|k| *k != "telemetry_period_s") {
                return Err(DocError::Forbidden(format!(
                    "config.mqtt.{k}: cannot be set over MQTT (only mqtt.telemetry_period_s); edit agent.toml"
                )));
            }
        }
        if let Some(s) = self.config.get("spool").and_then(Value::as_object) {
            if s.contains_key("dir") {
                return Err(DocError::Forbidden(
                    "config.spool.dir: cannot be set over MQTT; edit agent.toml".into(),
                ));
            }
        }
        Ok(())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Canonical JSON (module docs): sorted keys whatever serde_json's map type.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_string(k).expect("string").as_bytes());
                out.push(b':');
                canonical_json(&m[k], out);
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        other => out.extend(serde_json::to_string(other).expect("scalar").as_bytes()),
    }
}

/// Parses a trusted public key: base64 of the 32 key bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("{} bytes; an ed25519 public key is 32", bytes.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|e| e.to_string())
}

/// Parses a secret key file's content: base64 of the 32 seed bytes.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| format!("{} bytes; an ed25519 secret key is 32", bytes.len()))?;
    Ok(SigningKey::from_bytes(&arr))
}

pub fn encode_key(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `local agent.toml <- overlays in order`, parsed and validated with the
/// same code as `camfleet-agent validate` ([`AgentConfig::from_toml`]'s
/// serde types and [`AgentConfig::validate`]). Errors name the field.
pub fn merge(local_toml: &str, overlays: &[&DesiredDoc]) -> Result<AgentConfig, DocError> {
    let mut base: toml::Table =
        toml::from_str(local_toml).map_err(|e| DocError::Config(format!("agent.toml: {e}")))?;
    for doc in overlays {
        doc.check_remote_keys()?;
        let overlay = to_toml_table(&doc.config)?;
        merge_table(&mut base, overlay, "config")?;
    }
    let cfg: AgentConfig =
        serde_path_to_error::deserialize(toml::Value::Table(base)).map_err(|e| {
            let path = e.path().to_string();
            DocError::Config(format!("{path}: {}", e.into_inner()))
        })?;
    cfg.validate()
        .map_err(|e: ConfigError| DocError::Config(e.to_string()))?;
    Ok(cfg)
}

fn to_toml_table(m: &Map<String, Value>) -> Result<toml::Table, DocError> {
    fn conv(v: &Value, path: &str) -> Result<toml::Value, DocError> {
        Ok(match v {
            Value::Null => {
                return Err(DocError::Shape(format!(
                    "{path}: null is not a value (leave the key out to keep the current setting)"
                )))
            }
            Value::Bool(b) => toml::Value::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => toml::Value::Integer(i),
                None => match n.as_f64() {
                    Some(f) if n.is_f64() => toml::Value::Float(f),
                    _ => {
                        return Err(DocError::Shape(format!(
                            "{path}: {n} is out of range for a config value"
                        )))
                    }
                },
            },
            Value::String(s) => toml::Value::String(s.clone()),
            Value::Array(a) => toml::Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, x)| conv(x, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => {
                let mut t = toml::Table::new();
                for (k, x) in o {
                    t.insert(k.clone(), conv(x, &format!("{path}.{k}"))?);
                }
                toml::Value::Table(t)
            }
        })
    }
    match conv(&Value::Object(m.clone()), "config")? {
        toml::Value::Table(t) => Ok(t),
        _ => unreachable!("an object converts to a table"),
    }
}

fn merge_table(base: &mut toml::Table, overlay: toml::Table, path: &str) -> Result<(), DocError> {
    for (k, v) in overlay {
        let here = format!("{path}.{k}");
        if k == "camera" && path == "config" {
            merge_cameras(base, v, &here)?;
            continue;
        }
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_table(b, o, &here)?,
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    Ok(())
}

/// `camera` entries merge by `id`; `remove = true` removes one.
fn merge_cameras(base: &mut toml::Table, v: toml::Value, path: &str) -> Result<(), DocError> {
    let toml::Value::Array(entries) = v else {
        return Err(DocError::Shape(format!(
            "{path}: must be an array of camera tables"
        )));
    };
    let cams = base
        .entry("camera")
        .or_insert_with(|| toml::Value::Array(vec![]));
    let toml::Value::Array(cams) = cams else {
        return Err(DocError::Config(
            "agent.toml: camera is not an array".into(),
        ));
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let here = format!("{path}[{i}]");
        let toml::Value::Table(mut entry) = entry else {
            return Err(DocError::Shape(format!("{here}: must be a table")));
        };
        let Some(toml::Value::String(id)) = entry.get("id").cloned() else {
            return Err(DocError::Shape(format!(
                "{here}.id: missing (camera entries are matched by id)"
            )));
        };
        let remove = match entry.remove("remove") {
            None => false,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(DocError::Shape(format!("{here}.remove: must be a boolean"))),
        };
        let pos = cams
            .iter()
            .position(|c| c.get("id").and_then(toml::Value::as_str) == Some(id.as_str()));
        match (pos, remove) {
            (Some(p), true) => {
                cams.remove(p);
            }
            // Idempotent: a retained document that removed a camera stays
            // valid once agent.toml no longer has it either.
            (None, true) => {}
            (Some(p), false) => {
                if let toml::Value::Table(c) = &mut cams[p] {
                    merge_table(c, entry, &here)?;
                }
            }
            (None, false) => cams.push(toml::Value::Table(entry)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = r#"
data_dir = "/var/lib/camfleet"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[camera]]
id = "depot/gate"
source = { kind = "test_pattern", width = 320, height = 240 }
encoder = { bitrate_kbps = 800 }
"#;

    fn doc(version: u64, config: &str) -> DesiredDoc {
        DesiredDoc::parse(format!("{{\"version\":{version},\"config\":{config}}}").as_bytes())
            .unwrap()
    }

    fn merged(docs: &[&DesiredDoc]) -> Result<AgentConfig, String> {
        merge(LOCAL, docs).map_err(|e| e.to_string())
    }

    #[test]
    fn site_then_agent_override_the_local_file() {
        let site = doc(
            3,
            r#"{"kafka":{"bootstrap_servers":"10.0.0.1:9092"},"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":1000,"keyframe_interval_frames":30}}]}"#,
        );
        let agent = doc(
            9,
            r#"{"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":1500}},
                {"id":"depot/yard","source":{"kind":"test_pattern","width":640,"height":360}}],
                "mqtt":{"telemetry_period_s":5}}"#,
        );
        let local = format!(
            "{LOCAL}[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nagent_id = \"b\"\ntelemetry_period_s = 60\n"
        );
        let c = merge(&local, &[&site, &agent]).unwrap();
        assert_eq!(c.kafka.connection.bootstrap_servers, "10.0.0.1:9092");
        assert_eq!(c.cameras.len(), 2);
        assert_eq!(c.cameras[0].encoder.bitrate_kbps, 1500);
        assert_eq!(c.cameras[0].encoder.keyframe_interval_frames, 30);
        assert_eq!(c.cameras[1].id.as_str(), "depot/yard");
        assert_eq!(c.mqtt.unwrap().telemetry_period_s, 5);
        let remove = doc(
            10,
            r#"{"camera":[{"id":"depot/gate","remove":true},{"id":"depot/yard","source":{"kind":"test_pattern","width":64,"height":64}}]}"#,
        );
        let c = merged(&[&remove]).unwrap();
        assert_eq!(c.cameras.len(), 1);
        // Removing a camera that is not there is a no-op (retained documents stay valid).
        assert_eq!(merged(&[&remove, &remove]).unwrap().cameras.len(), 1);
        assert_eq!(c.cameras[0].id.as_str(), "depot/yard");
    }

    #[test]
    fn bad_documents_are_rejected_naming_what_is_wrong() {
        for (payload, want) in [
            ("not json", "not a JSON document"),
            ("[1,2]", "must be a JSON object"),
            (r#"{"version":1}"#, "missing field `config`"),
            (r#"{"version":"7","config":{}}"#, "invalid type"),
            (r#"{"version":0,"config":{}}"#, "version: must be 1"),
            (
                r#"{"version":1,"config":{},"extra":1}"#,
                "unknown field `extra`",
            ),
            (
                r#"{"version":1,"config":{},"signature":"!!"}"#,
                "signature: not base64",
            ),
        ] {
            let err = DesiredDoc::parse(payload.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{payload}: {err}");
        }
        let big = vec![b' '; MAX_DOC_BYTES + 1];
        assert!(matches!(
            DesiredDoc::parse(&big),
            Err(DocError::TooLarge(_))
        ));
        for (config, want) in [
            (
                r#"{"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":"fast"}}]}"#,
                "camera[0].encoder.bitrate_kbps",
            ),
            (
                r#"{"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":5}}]}"#,
                "encoder.bitrate_kbps: must be 50..=100000",
            ),
            (
                r#"{"camera":[{"id":"depot/gate","encoder":{"bitrat_kbps":900}}]}"#,
                "unknown field `bitrat_kbps`",
            ),
            (r#"{"data_dir":"/tmp"}"#, "config.data_dir: cannot be set"),
            (r#"{"mqtt":{"url":"mqtt://x:1"}}"#, "config.mqtt.url"),
            (r#"{"spool":{"dir":"/x"}}"#, "config.spool.dir"),
            (
                r#"{"kafka":{"bootstrap_servers":null}}"#,
                "config.kafka.bootstrap_servers: null",
            ),
            (
                r#"{"camera":{"id":"x/y"}}"#,
                "config.camera: must be an array",
            ),
            (r#"{"spool":{"max_bytes":-1}}"#, "spool.max_bytes"),
        ] {
            let err = merged(&[&doc(1, config)]).unwrap_err();
            assert!(err.contains(want), "{config}: {err}");
        }
    }

    #[test]
    fn canonical_bytes_and_hash_ignore_key_order_and_whitespace() {
        let a = doc(2, r#"{"kafka":{"topic":"t","bootstrap_servers":"h:1"}}"#);
        let b = DesiredDoc::parse(
            br#"{ "config" : { "kafka" : { "bootstrap_servers":"h:1", "topic":"t" } }, "version": 2 }"#,
        )
        .unwrap();
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(
            String::from_utf8(a.canonical_bytes()).unwrap(),
            r#"{"config":{"kafka":{"bootstrap_servers":"h:1","topic":"t"}},"version":2}"#
        );
        assert_eq!(a.content_hash(), b.content_hash());
        assert_ne!(a.content_hash(), doc(3, "{}").content_hash());
    }

    #[test]
    fn signatures_bind_key_scope_target_and_content() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let trusted = [key.verifying_key()];
        let mut d = doc(4, r#"{"spool":{"max_age_s":60}}"#);
        assert!(d
            .verify(&trusted, Scope::Agent, "box-1")
            .unwrap_err()
            .to_string()
            .contains("missing"));
        assert!(d.verify(&[], Scope::Agent, "box-1").is_ok());
        d.sign(&key, Scope::Agent, "box-1");
        let wire = DesiredDoc::parse(d.to_json().as_bytes()).unwrap();
        wire.verify(&trusted, Scope::Agent, "box-1").unwrap();
        assert!(wire.verify(&trusted, Scope::Agent, "box-2").is_err());
        assert!(wire.verify(&trusted, Scope::Site, "box-1").is_err());
        assert!(wire
            .verify(&[other.verifying_key()], Scope::Agent, "box-1")
            .is_err());
        let mut tampered = wire.clone();
        tampered.version = 5;
        assert!(tampered.verify(&trusted, Scope::Agent, "box-1").is_err());
        let pk = encode_key(key.verifying_key().as_bytes());
        assert_eq!(parse_public_key(&pk).unwrap(), key.verifying_key());
        assert!(parse_public_key("AAAA").is_err());
    }

    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                (-1e9f64..1e9).prop_map(Value::from),
                "[a-z_/0-9.:]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("camera".to_string()),
                            Just("encoder".to_string()),
                            Just("bitrate_kbps".to_string()),
                            Just("id".to_string()),
                            Just("kafka".to_string()),
                            Just("spool".to_string()),
                            Just("remove".to_string()),
                            "[a-z_]{1,8}"
                        ],
                        inner,
                        0..5
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            /// Arbitrary bytes never panic the parser.
            #[test]
            fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = DesiredDoc::parse(&bytes);
            }

            /// Arbitrary documents never panic parse + merge + validate; an
            /// accepted merge is a valid config, and a round trip through
            /// the wire form keeps the content hash.
            #[test]
            fn merge_never_panics(config in prop::collection::btree_map("[a-z_]{1,8}|camera|kafka|spool", json_value(), 0..4),
                                  version in 1u64..1000) {
                let payload = serde_json::json!({"version": version, "config": config}).to_string();
                if let Ok(d) = DesiredDoc::parse(payload.as_bytes()) {
                    let again = DesiredDoc::parse(d.to_json().as_bytes()).unwrap();
                    prop_assert_eq!(again.content_hash(), d.content_hash());
                    if let Ok(cfg) = merge(LOCAL, &[&d]) {
                        prop_assert!(cfg.validate().is_ok());
                    }
                }
            }
        }
    }
}
