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
