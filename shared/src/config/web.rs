//! `[http]` extras and `[live]` of the collector: the ops page, live HLS,
//! access control and TLS (docs/live.md).

use super::{invalid, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;

/// `[http.auth]`: who may use the HTTP server. With this section present,
/// every route needs credentials (a bearer token from `token_file`, or a
/// user and password from `users_file`); without it the server is open,
/// which is only sensible on 127.0.0.1 or behind a proxy that authenticates.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// File with accepted bearer tokens, one per line (`#` comments).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// File with `user:password` lines for HTTP Basic auth (`#` comments).
    #[serde(default)]
    pub users_file: Option<PathBuf>,
}

/// `[http.tls]`: serve HTTPS (rustls) instead of HTTP.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpTlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[live]`: live HLS of every camera this instance consumes.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    /// Whole segments (one per GOP) listed in a camera's live playlist.
    #[serde(default = "default_playlist_segments")]
    pub playlist_segments: usize,
    /// Target duration of an LL-HLS partial segment; 0 = plain HLS only.
    #[serde(default = "default_part_target_ms")]
    pub part_target_ms: u64,
    /// How long a blocking playlist or part request may wait.
    #[serde(default = "default_block_timeout_ms")]
    pub block_timeout_ms: u64,
    /// Detection records kept per camera for the page's overlay.
    #[serde(default = "default_detections_kept")]
    pub detections_kept: usize,
    /// Topic the page's detection boxes come from; empty = no overlay.
    #[serde(default = "default_live_detections_topic")]
    pub detections_topic: String,
    /// Fleet status from the agents' MQTT topics on the page, and finding
    /// the instance that serves a camera (docs/live.md); absent = off.
    #[serde(default)]
    pub fleet: Option<LiveFleetConfig>,
}

/// `[live.fleet]`: the collector reads the agents' retained status and
/// telemetry (docs/mqtt.md) for its camera API and page, and, with
/// `announce_url`, announces which cameras it serves so that every
/// instance of the group redirects (307) requests for a camera to the
/// instance that serves it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LiveFleetConfig {
    /// Broker, `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// First topic level of every camfleet topic (as the agents' `[mqtt]`).
    #[serde(default = "default_fleet_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive; the broker publishes this instance's "offline"
    /// will about 1.5 keep-alives after it is gone.
    #[serde(default = "default_fleet_keep_alive_s")]
    pub keep_alive_s: u64,
    /// CA certificate (PEM) of the broker's certificate for `mqtts://`;
    /// absent = the system's CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT username; absent = anonymous.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the MQTT password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This instance's base URL as viewers reach it
    /// (`https://collector-a.example:9464`); set = announce the cameras
    /// served here (retained, `<prefix>/collectors/<instance_id>`) and
    /// redirect requests for other instances' cameras. Empty = neither.
    #[serde(default)]
    pub announce_url: String,
    /// This instance's name in the announcement topic: letters, digits,
    /// `.`, `_`, `-`. Empty = derived from `announce_url`.
    #[serde(default)]
    pub instance_id: String,
}

fn default_fleet_topic_prefix() -> String {
    "camfleet".into()
}
const fn default_fleet_keep_alive_s() -> u64 {
    15
}

impl LiveFleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.url.starts_with("mqtt://") || self.url.starts_with("mqtts://")) {
            return Err(invalid(
                "live.fleet.url",
                format!("{:?}: use mqtt://host:port or mqtts://host:port", self.url),
            ));
        }
        if !(5..=600).contains(&self.keep_alive_s) {
            return Err(invalid("live.fleet.keep_alive_s", "must be 5..=600"));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !name_ok(&self.topic_prefix) {
            return Err(invalid(
                "live.fleet.topic_prefix",
                "letters, digits, . _ - only",
            ));
        }
        if !self.instance_id.is_empty() && !name_ok(&self.instance_id) {
            return Err(invalid(
                "live.fleet.instance_id",
                "letters, digits, . _ - only",
            ));
        }
        let url_ok = self.announce_url.is_empty()
            || self.announce_url.starts_with("http://")
            || self.announce_url.starts_with("https://");
        if !url_ok {
            return Err(invalid(
                "live.fleet.announce_url",
                format!("{:?}: an http:// or https:// base URL", self.announce_url),
            ));
        }
        Ok(())
    }

    /// The instance's topic name: `instance_id`, else the announce URL's
    /// host and port with other characters as `_`.
    pub fn instance_name(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = self
            .announce_url
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .trim_end_matches('/');
        host.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

fn default_live_detections_topic() -> String {
    crate::wire::DETECTIONS_TOPIC.into()
}

const fn default_playlist_segments() -> usize {
    6
}
const fn default_part_target_ms() -> u64 {
    200
}
const fn default_block_timeout_ms() -> u64 {
    6000
}
const fn default_detections_kept() -> usize {
    300
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            playlist_segments: default_playlist_segments(),
            part_target_ms: default_part_target_ms(),
            block_timeout_ms: default_block_timeout_ms(),
            detections_kept: default_detections_kept(),
            detections_topic: default_live_detections_topic(),
            fleet: None,
        }
    }
}

impl LiveConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(3..=100).contains(&self.playlist_segments) {
            return Err(invalid("live.playlist_segments", "must be 3..=100"));
        }
        if self.part_target_ms != 0 && !(50..=2000).contains(&self.part_target_ms) {
            return Err(invalid(
                "live.part_target_ms",
                "must be 0 (no parts) or 50..=2000",
            ));
        }
        if !(100..=60_000).contains(&self.block_timeout_ms) {
            return Err(invalid("live.block_timeout_ms", "must be 100..=60000"));
        }
        if self.detections_kept > 100_000 {
            return Err(invalid("live.detections_kept", "must be at most 100000"));
        }
        if let Some(fleet) = &self.fleet {
            fleet.validate()?;
        }
        Ok(())
    }
}

impl HttpAuthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.token_file.is_none() && self.users_file.is_none() {
            return Err(invalid(
                "http.auth",
                "needs token_file or users_file (or remove the section to serve without auth)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(extra: &str) -> Result<LiveConfig, String> {
        let text = format!("[fleet]\nurl = \"mqtt://127.0.0.1:1883\"\n{extra}");
        let cfg: LiveConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    #[test]
    fn live_fleet_is_checked_and_names_the_field() {
        let ok = fleet("announce_url = \"http://10.0.0.5:9464/\"").unwrap();
        let f = ok.fleet.unwrap();
        assert_eq!(f.topic_prefix, "camfleet");
        assert_eq!(f.instance_name(), "10.0.0.5_9464");
        for (extra, field) in [
            (
                "announce_url = \"10.0.0.5:9464\"",
                "live.fleet.announce_url",
            ),
            ("instance_id = \"a/b\"", "live.fleet.instance_id"),
            ("keep_alive_s = 1", "live.fleet.keep_alive_s"),
            ("topic_prefix = \"\"", "live.fleet.topic_prefix"),
            ("announce = true", "unknown field"),
        ] {
            let e = fleet(extra).unwrap_err();
            assert!(e.contains(field), "{extra}: {e}");
        }
        let bad: LiveConfig = toml::from_str("[fleet]\nurl = \"tcp://x:1\"").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("live.fleet.url"));
    }
}
