//! The `camfleet` subcommands (docs/mqtt.md, "The ops CLI").

use crate::broker::Session;
use anyhow::{bail, Context};
use camfleet_shared::fleet::{self, DesiredDoc, Scope};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long after the last retained message a read of the broker ends.
const IDLE: Duration = Duration::from_millis(600);

/// `--site S` or `--agent A`.
#[derive(Clone, Debug)]
pub struct Target {
    pub scope: Scope,
    pub name: String,
}

impl Target {
    pub fn topic(&self, prefix: &str) -> String {
        fleet::desired_topic(prefix, self.scope, &self.name)
    }
}

fn agent_of(topic: &str) -> Option<&str> {
    let mut parts = topic.rsplit('/');
    parts.next()?;
    parts.next()
}

/// Retained statuses and telemetry by agent.
async fn fleet_state(s: &mut Session) -> anyhow::Result<BTreeMap<String, (Value, Value)>> {
    let p = s.prefix.clone();
    let msgs = s
        .retained(
            &[
                format!("{p}/agents/+/status"),
                format!("{p}/agents/+/telemetry"),
            ],
            IDLE,
        )
        .await?;
    let mut out: BTreeMap<String, (Value, Value)> = BTreeMap::new();
    for (topic, payload) in msgs {
        let Some(agent) = agent_of(&topic) else {
            continue;
        };
        let v: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        let e = out
            .entry(agent.to_string())
            .or_insert((Value::Null, Value::Null));
        if topic.ends_with("/status") {
            e.0 = v;
        } else {
            e.1 = v;
        }
    }
    Ok(out)
}

fn applied_text(status: &Value) -> String {
    let a = &status["applied"];
    let one = |k: &str| a[k]["version"].as_u64().map(|v| format!("{k} v{v}"));
    let parts: Vec<String> = [one("site"), one("agent")].into_iter().flatten().collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub async fn list(s: &mut Session, as_json: bool) -> anyhow::Result<()> {
    let state = fleet_state(s).await?;
    let now_us = now_us();
    if as_json {
        let rows: Vec<Value> = state
            .iter()
            .map(|(agent, (status, telemetry))| {
                json!({"agent": agent, "status": status, "telemetry": telemetry})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<10} {:<8} {:<18} {:<9} {:>7} {:>7} {:>9} {:>12} {:<10} {:>8}",
        "AGENT",
        "SITE",
        "STATE",
        "APPLIED",
        "LAST",
        "CAMERAS",
        "FPS",
        "KBPS",
        "SPOOL_BYTES",
        "KAFKA",
        "SEEN_S"
    );
    for (agent, (st, t)) in &state {
        let cams = t["cameras"].as_array().cloned().unwrap_or_default();
        let up = cams.iter().filter(|c| c["up"] == true).count();
        let fps: f64 = cams.iter().filter_map(|c| c["fps"].as_f64()).sum();
        let kbps: f64 = cams.iter().filter_map(|c| c["bitrate_kbps"].as_f64()).sum();
        let seen = t["time_us"].as_u64().map_or("-".into(), |u| {
            format!("{:.0}", now_us.saturating_sub(u) as f64 / 1e6)
        });
        let state_text = match st["state"].as_str() {
            Some("offline") => "offline",
            Some("online") => "online",
            _ => "?",
        };
        println!(
            "{:<20} {:<10} {:<8} {:<18} {:<9} {:>7} {:>7.1} {:>9.0} {:>12} {:<10} {:>8}",
            agent,
            st["site"].as_str().unwrap_or("-"),
            state_text,
            applied_text(st),
            st["last"]["result"].as_str().unwrap_or("-"),
            if cams.is_empty() {
                "-".to_string()
            } else {
                format!("{up}/{}", cams.len())
            },
            fps,
            kbps,
            t["spool"]["frames_bytes"]
                .as_u64()
                .map_or("-".into(), |b| b.to_string()),
            t["kafka"]["state"].as_str().unwrap_or("-"),
            seen,
        );
    }
    if state.is_empty() {
        eprintln!(
            "no agents have reported to this broker under {:?}",
            s.prefix
        );
    }
    Ok(())
}

pub async fn show(s: &mut Session, agent: &str) -> anyhow::Result<()> {
    let p = s.prefix.clone();
    let state = fleet_state(s).await?;
    let (status, telemetry) = state
        .get(agent)
        .cloned()
        .with_context(|| format!("agent {agent:?} has never reported under {p:?}"))?;
    let mut topics = vec![fleet::desired_topic(&p, Scope::Agent, agent)];
    if let Some(site) = status["site"].as_str() {
        topics.push(fleet::desired_topic(&p, Scope::Site, site));
    }
    let desired = s.retained(&topics, IDLE).await?;
    println!("agent {agent}: {}", status["state"].as_str().unwrap_or("?"));
    if let Some(r) = status["reason"].as_str() {
        println!("  reason: {r}");
    }
    println!("  site: {}", status["site"].as_str().unwrap_or("-"));
    println!("  version: {}", status["version"].as_str().unwrap_or("?"));
    println!(
        "  config source: {}",
        status["config_source"].as_str().unwrap_or("?")
    );
    for scope in [Scope::Site, Scope::Agent] {
        let k = scope.as_str();
        let applied = &status["applied"][k];
        let want = desired
            .iter()
            .find(|(t, _)| {
                *t == fleet::desired_topic(
                    &p,
                    scope,
                    if scope == Scope::Agent {
                        agent
                    } else {
                        status["site"].as_str().unwrap_or("")
                    },
                )
            })
            .and_then(|(_, payload)| DesiredDoc::parse(payload).ok());
        let applied_text = applied["version"].as_u64().map_or("none".into(), |v| {
            format!(
                "v{v} ({})",
                &applied["hash"].as_str().unwrap_or("")
                    [..12.min(applied["hash"].as_str().unwrap_or("").len())]
            )
        });
        let desired_text = want.as_ref().map_or("none".into(), |d| {
            format!("v{} ({})", d.version, &d.content_hash()[..12])
        });
        let same = want
            .as_ref()
            .is_some_and(|d| applied["hash"].as_str() == Some(d.content_hash().as_str()));
        println!(
            "  {k:<5} applied {applied_text:<22} desired {desired_text:<22} {}",
            if want.is_none() {
                ""
            } else if same {
                "in sync"
            } else {
                "NOT APPLIED"
            }
        );
    }
    if !status["last_rejection"].is_null() {
        let r = &status["last_rejection"];
        println!(
            "  last rejection: {} v{} : {}",
            r["scope"].as_str().unwrap_or("?"),
            r["version"].as_u64().map_or("?".into(), |v| v.to_string()),
            r["reason"].as_str().unwrap_or("?")
        );
    }
    if !telemetry.is_null() {
        println!("  telemetry: {}", serde_json::to_string_pretty(&telemetry)?);
    }
    Ok(())
}

/// The retained document of a target, if any.
async fn current_doc(s: &mut Session, target: &Target) -> anyhow::Result<Option<DesiredDoc>> {
    let topic = target.topic(&s.prefix);
    let msgs = s.retained(std::slice::from_ref(&topic), IDLE).await?;
    match msgs
        .into_iter()
        .rev()
        .find(|(t, p)| *t == topic && !p.is_empty())
    {
        None => Ok(None),
        Some((_, payload)) => Ok(DesiredDoc::parse(&payload).ok()),
    }
}

/// Reads a TOML or JSON file with a partial agent config.
pub fn read_config_file(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?
    } else {
        let t: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    match value {
        Value::Object(m) => Ok(m),
        _ => bail!("{}: must hold a table of settings", path.display()),
    }
}

/// Checks a document with the agent's own code before it is published:
/// the full merge onto `base` (an agent.toml) when given, else types,
/// ranges and unknown keys against a stand-in agent.toml that has every
/// camera the document names.
pub fn check_locally(doc: &DesiredDoc, base: Option<&str>) -> anyhow::Result<()> {
    DesiredDoc::parse(doc.to_json().as_bytes())?;
    if let Some(base) = base {
        fleet::merge(base, &[doc])?;
        return Ok(());
    }
    let mut stand_in = String::from(
        "data_dir = \"/nonexistent\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         [mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nagent_id = \"stand-in\"\n",
    );
    let mut ids = Vec::new();
    if let Some(Value::Array(cams)) = doc.config.get("camera") {
        for c in cams {
            let new_with_source = c.get("source").is_some() && c.get("remove").is_none();
            if let (Some(id), false) = (c.get("id").and_then(Value::as_str), new_with_source) {
                ids.push(id.to_string());
            }
        }
    }
    ids.push("stand-in/camera".into());
    for id in ids {
        stand_in += &format!(
            "[[camera]]\nid = {}\nsource = {{ kind = \"test_pattern\", width = 64, height = 64 }}\n",
            toml::Value::String(id)
        );
    }
    fleet::merge(&stand_in, &[doc])?;
    Ok(())
}

fn finish_doc(
    mut doc: DesiredDoc,
    target: &Target,
    key: Option<&Path>,
    base: Option<&Path>,
) -> anyhow::Result<DesiredDoc> {
    let base_text = base
        .map(|b| std::fs::read_to_string(b).with_context(|| format!("--base {}", b.display())))
        .transpose()?;
    check_locally(&doc, base_text.as_deref()).context("not published: the document is invalid")?;
    if let Some(key) = key {
        let text =
            std::fs::read_to_string(key).with_context(|| format!("--key {}", key.display()))?;
        let k = fleet::parse_signing_key(&text)
            .map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?;
        doc.sign(&k, target.scope, &target.name);
    }
    Ok(doc)
}

async fn publish(s: &mut Session, target: &Target, doc: &DesiredDoc) -> anyhow::Result<()> {
    let topic = target.topic(&s.prefix);
    s.publish_retained(&topic, doc.to_json().into_bytes())
        .await?;
    println!(
        "published {topic} version {} hash {}{}",
        doc.version,
        doc.content_hash(),
        if doc.signature.is_some() {
            " (signed)"
        } else {
            ""
        }
    );
    Ok(())
}

fn next_version(current: Option<&DesiredDoc>, asked: Option<u64>) -> anyhow::Result<u64> {
    let cur = current.map_or(0, |d| d.version);
    match asked {
        Some(v) if v <= cur => bail!("--version {v}: the retained document is already version {cur}; agents reject older or equal versions"),
        Some(v) => Ok(v),
        None => Ok(cur + 1),
    }
}

pub struct SetArgs<'a> {
    pub target: Target,
    pub file: &'a Path,
    pub version: Option<u64>,
    pub key: Option<&'a Path>,
    pub base: Option<&'a Path>,
}

pub async fn set(s: &mut Session, a: SetArgs<'_>) -> anyhow::Result<()> {
    let config = read_config_file(a.file)?;
    let current = current_doc(s, &a.target).await?;
    let doc = DesiredDoc::new(next_version(current.as_ref(), a.version)?, config);
    let doc = finish_doc(doc, &a.target, a.key, a.base)?;
    publish(s, &a.target, &doc).await
}

/// Sets one `KEY=VALUE` in a config map. Keys are dotted; a camera is
/// addressed as `camera[site/cam]`. VALUE is a TOML value (`1500`, `true`,
/// `"text"`, `{ kind = "test_pattern", width = 640, height = 360 }`), else
/// taken as a string.
pub fn apply_patch(config: &mut Map<String, Value>, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("{assignment:?}: use KEY=VALUE"))?;
    let value: Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => serde_json::to_value(t.remove("v").expect("parsed v"))?,
        Err(_) => Value::String(raw.to_string()),
    };
    let mut rest = key.trim();
    let mut at: &mut Map<String, Value> = config;
    if let Some(after) = rest.strip_prefix("camera[") {
        let (id, tail) = after
            .split_once(']')
            .with_context(|| format!("{key:?}: camera[ID] is not closed"))?;
        let cams = at
            .entry("camera")
            .or_insert_with(|| Value::Array(vec![]))
            .as_array_mut()
            .with_context(|| format!("{key:?}: camera is not an array"))?;
        let pos = match cams.iter().position(|c| c["id"] == id) {
            Some(p) => p,
            None => {
                cams.push(json!({"id": id}));
                cams.len() - 1
            }
        };
        at = cams[pos]
            .as_object_mut()
            .context("camera entry is not a table")?;
        rest = tail
            .strip_prefix('.')
            .with_context(|| format!("{key:?}: camera[ID].KEY expected"))?;
    }
    let parts: Vec<&str> = rest.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!("{key:?}: empty key segment");
        }
        if i + 1 == parts.len() {
            at.insert(part.to_string(), value);
            return Ok(());
        }
        at = at
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .with_context(|| format!("{key:?}: {part} is not a table"))?;
    }
    Ok(())
}

pub struct PatchArgs<'a> {
    pub target: Target,
    pub assignments: &'a [String],
    pub version: Option<u64>,
    pub key: Option<&'a Path>,
    pub base: Option<&'a Path>,
}

pub async fn patch(s: &mut Session, a: PatchArgs<'_>) -> anyhow::Result<()> {
    let current = current_doc(s, &a.target).await?;
    let mut config = current
        .as_ref()
        .map(|d| d.config.clone())
        .unwrap_or_default();
    for kv in a.assignments {
        apply_patch(&mut config, kv)?;
    }
    let doc = DesiredDoc::new(next_version(current.as_ref(), a.version)?, config);
    let doc = finish_doc(doc, &a.target, a.key, a.base)?;
    publish(s, &a.target, &doc).await
}

/// An agent's answer to one version.
#[derive(Debug, PartialEq)]
enum Answer {
    Applied,
    Rejected(String),
    Pending,
}

fn answer(status: &Value, scope: Scope, version: u64) -> Answer {
    let k = scope.as_str();
    if status["applied"][k]["version"]
        .as_u64()
        .is_some_and(|v| v >= version)
    {
        return Answer::Applied;
    }
    let r = &status["last_rejection"];
    if r["scope"] == k && r["version"].as_u64() == Some(version) {
        return Answer::Rejected(r["reason"].as_str().unwrap_or("?").to_string());
    }
    Answer::Pending
}

/// Waits until every agent of the target applied `version`; fails listing
/// the agents that rejected it or did not answer.
pub async fn wait(
    s: &mut Session,
    target: &Target,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let p = s.prefix.clone();
    s.subscribe(&[format!("{p}/agents/+/status")]).await?;
    let deadline = Instant::now() + timeout;
    let mut statuses: BTreeMap<String, Value> = BTreeMap::new();
    let started = Instant::now();
    loop {
        let members: Vec<(&String, &Value)> = statuses
            .iter()
            .filter(|(agent, st)| match target.scope {
                Scope::Agent => **agent == target.name,
                Scope::Site => st["site"].as_str() == Some(target.name.as_str()),
            })
            .collect();
        // Retained statuses arrive first; decide only once they are in.
        let settled = started.elapsed() > IDLE;
        if settled
            && !members.is_empty()
            && members
                .iter()
                .all(|(_, st)| answer(st, target.scope, version) != Answer::Pending)
        {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some((topic, payload)) = s.next(left.min(IDLE)).await? {
            if let (Some(agent), Ok(v)) =
                (agent_of(&topic), serde_json::from_slice::<Value>(&payload))
            {
                // Offline statuses carry no site; keep what the agent said before.
                let entry = statuses.entry(agent.to_string()).or_insert(Value::Null);
                if v["state"] == "offline" {
                    entry["state"] = "offline".into();
                    entry["reason"] = v["reason"].clone();
                } else {
                    *entry = v;
                }
            }
        }
    }
    let members: Vec<(&String, &Value)> = statuses
        .iter()
        .filter(|(agent, st)| match target.scope {
            Scope::Agent => **agent == target.name,
            Scope::Site => st["site"].as_str() == Some(target.name.as_str()),
        })
        .collect();
    if members.is_empty() {
        bail!(
            "no agent of {} {:?} has reported; nothing applied version {version}",
            target.scope.as_str(),
            target.name
        );
    }
    let mut failed = Vec::new();
    for (agent, st) in &members {
        match answer(st, target.scope, version) {
            Answer::Applied => println!("{agent}: applied version {version}"),
            Answer::Rejected(reason) => {
                println!("{agent}: REJECTED version {version}: {reason}");
                failed.push(agent.to_string());
            }
            Answer::Pending => {
                let state = if st["state"] == "offline" {
                    format!("offline ({})", st["reason"].as_str().unwrap_or("?"))
                } else {
                    "online".into()
                };
                println!("{agent}: NO ANSWER for version {version} within {timeout:?} ({state})");
                failed.push(agent.to_string());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} agents did not apply version {version}: {}",
            failed.len(),
            members.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Writes `<out>.key` (secret, mode 0600) and `<out>.pub`.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .context("reading /dev/urandom")?;
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&secret)
        .with_context(|| format!("{} (not overwritten if it exists)", secret.display()))?;
    writeln!(f, "{}", fleet::encode_key(&seed))?;
    let pk = fleet::encode_key(key.verifying_key().as_bytes());
    std::fs::write(&public, format!("{pk}\n"))?;
    println!(
        "secret key: {} (keep it with ops; sign with --key)",
        secret.display()
    );
    println!("public key: {}", public.display());
    println!("agent.toml: [mqtt] trusted_public_keys = [\"{pk}\"]");
    Ok(())
}

/// `30s`, `2m`, `500ms` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: use 30s, 2m or 500ms"))?;
    if !(0.0..=86_400.0).contains(&(n * mult)) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_address_cameras_and_nested_keys() {
        let mut m = Map::new();
        apply_patch(&mut m, "camera[depot/gate].encoder.bitrate_kbps=1500").unwrap();
        apply_patch(
            &mut m,
            "camera[depot/gate].encoder.rate_control=\"quality\"",
        )
        .unwrap();
        apply_patch(&mut m, "kafka.bootstrap_servers=10.0.0.1:9092").unwrap();
        apply_patch(&mut m, "camera[depot/yard].remove=true").unwrap();
        assert_eq!(
            Value::Object(m.clone()),
            json!({"camera":[{"id":"depot/gate","encoder":{"bitrate_kbps":1500,"rate_control":"quality"}},
                             {"id":"depot/yard","remove":true}],
                   "kafka":{"bootstrap_servers":"10.0.0.1:9092"}})
        );
        assert!(apply_patch(&mut m, "novalue").is_err());
        assert!(apply_patch(&mut m, "camera[x.y=1").is_err());
    }

    #[test]
    fn local_check_names_the_field() {
        let mut m = Map::new();
        apply_patch(&mut m, "camera[depot/gate].encoder.bitrate_kbps=5").unwrap();
        let err = format!(
            "{:#}",
            check_locally(&DesiredDoc::new(1, m), None).unwrap_err()
        );
        assert!(err.contains("encoder.bitrate_kbps"), "{err}");
        let mut ok = Map::new();
        apply_patch(&mut ok, "camera[depot/gate].encoder.bitrate_kbps=500").unwrap();
        apply_patch(&mut ok, "mqtt.telemetry_period_s=5").unwrap();
        check_locally(&DesiredDoc::new(1, ok), None).unwrap();
        let mut bad = Map::new();
        apply_patch(&mut bad, "http.listen=\"0.0.0.0:1\"").unwrap();
        assert!(check_locally(&DesiredDoc::new(1, bad), None).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
    }
}
