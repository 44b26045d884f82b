//! Typed configuration of `camfleet-agent` and `camfleet-collector`.
//!
//! Both are TOML. Every struct denies unknown fields, so a typo is an error
//! naming the field rather than a silently ignored setting. Parsing also runs
//! [`AgentConfig::validate`] / [`CollectorConfig::validate`], which check what
//! serde cannot (ranges, duplicates, cross-field rules). Units are in field
//! names (`_ms`, `_kbps`, `_bytes`).

use crate::camera::CameraId;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;

mod archive_retention;
mod kafka_security;
mod web;
pub use archive_retention::{CameraRetention, RetentionConfig};
pub use kafka_security::{
    is_sensitive_property, ClientProperties, KafkaSaslConfig, KafkaTlsConfig, SaslMechanism,
    Secret, SecurityProtocol,
};
pub use web::{HttpAuthConfig, HttpTlsConfig, LiveConfig, LiveFleetConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Connection to the Kafka cluster, shared by agent and collector.
/// `Debug` redacts secrets (see `config/kafka_security.rs`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// The video topic.
    #[serde(default = "default_video_topic")]
    pub topic: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `[kafka.tls]`: CA, client certificate, hostname check (ssl, sasl_ssl).
    #[serde(default)]
    pub tls: Option<KafkaTlsConfig>,
    /// `[kafka.sasl]`: mechanism, username, password or password_file.
    #[serde(default)]
    pub sasl: Option<KafkaSaslConfig>,
    /// Extra librdkafka properties (`"socket.timeout.ms" = "5000"`), applied last.
    #[serde(default)]
    pub librdkafka_options: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("security_protocol", &self.security_protocol)
            .field("tls", &self.tls)
            .field("sasl", &self.sasl)
            .field(
                "librdkafka_options",
                &kafka_security::RedactedOptions(&self.librdkafka_options),
            )
            .finish()
    }
}

fn default_video_topic() -> String {
    crate::wire::VIDEO_TOPIC.to_string()
}

impl KafkaConfig {
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(invalid(format!("{prefix}.bootstrap_servers"), "is empty"));
        }
        for server in self.bootstrap_servers.split(',') {
            let ok = server
                .trim()
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(invalid(
                    format!("{prefix}.bootstrap_servers"),
                    format!("{server:?} is not host:port"),
                ));
            }
        }
        let t = &self.topic;
        if t.is_empty()
            || t.len() > 249
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                format!("{prefix}.topic"),
                format!("{t:?} is not a legal Kafka topic name"),
            ));
        }
        self.validate_security(prefix)
    }
}

// ---------------------------------------------------------------- agent

/// `agent.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Directory for the agent's state (sequence numbers). Created if missing.
    pub data_dir: PathBuf,
    pub kafka: AgentKafkaConfig,
    /// One entry per camera.
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraConfig>,
    #[serde(default)]
    pub spool: SpoolConfig,
    #[serde(default)]
    pub http: AgentHttpConfig,
    /// Fleet link (status and telemetry over MQTT); absent = off.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
}

/// `[mqtt]`: the agent's link to the fleet (docs/mqtt.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker, `mqtt://host:port`.
    pub url: String,
    /// This agent's name in the fleet (topic level): letters, digits, `.`, `_`, `-`.
    pub agent_id: String,
    /// First topic level of every camfleet topic.
    #[serde(default = "default_mqtt_topic_prefix")]
    pub topic_prefix: String,
    /// Telemetry every this many seconds.
    #[serde(default = "default_telemetry_period_s")]
    pub telemetry_period_s: u64,
    /// MQTT keep-alive; the broker publishes the agent's "offline" will about
    /// 1.5 keep-alives after the agent is gone.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// The site this agent belongs to: it also applies the retained desired
    /// config of `<prefix>/sites/<site>/desired`. Absent = agent document only.
    #[serde(default)]
    pub site: Option<String>,
    /// Trusted ed25519 public keys (base64 of 32 bytes). When any is listed,
    /// only desired configs signed by one of them are applied.
    #[serde(default)]
    pub trusted_public_keys: Vec<String>,
    /// CA certificate (PEM) that signed the broker's certificate, for
    /// `mqtts://` URLs; absent = the system's trusted CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// MQTT username (Mosquitto password file); absent = anonymous.
    #[serde(default)]
    pub username: Option<String>,
    /// MQTT password; prefer `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the MQTT password (first line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_mqtt_topic_prefix() -> String {
    "camfleet".into()
}
const fn default_telemetry_period_s() -> u64 {
    30
}
const fn default_keep_alive_s() -> u64 {
    15
}

impl MqttConfig {
    /// (host, port) of `url`.
    pub fn host_port(&self) -> Result<(String, u16), ConfigError> {
        let rest = self
            .url
            .strip_prefix("mqtt://")
            .or_else(|| self.url.strip_prefix("mqtts://"))
            .ok_or_else(|| {
                invalid(
                    "mqtt.url",
                    format!(
                        "{:?}: use mqtt://host:port or mqtts://host:port (TLS)",
                        self.url
                    ),
                )
            })?;
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok().filter(|p| *p > 0)?)))
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                invalid(
                    "mqtt.url",
                    format!("{:?} is not mqtt://host:port", self.url),
                )
            })?;
        Ok((host.to_string(), port))
    }

    /// `mqtts://`: TLS to the broker.
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("mqtts://")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.host_port()?;
        let level_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !level_ok(&self.agent_id) {
            return Err(invalid(
                "mqtt.agent_id",
                format!("{:?}: use letters, digits, '.', '_' or '-'", self.agent_id),
            ));
        }
        if !level_ok(&self.topic_prefix) {
            return Err(invalid(
                "mqtt.topic_prefix",
                format!(
                    "{:?}: use letters, digits, '.', '_' or '-'",
                    self.topic_prefix
                ),
            ));
        }
        if !(1..=3600).contains(&self.telemetry_period_s) {
            return Err(invalid("mqtt.telemetry_period_s", "must be 1..=3600"));
        }
        if !(5..=600).contains(&self.keep_alive_s) {
            return Err(invalid("mqtt.keep_alive_s", "must be 5..=600"));
        }
        if let Some(site) = &self.site {
            if !level_ok(site) {
                return Err(invalid(
                    "mqtt.site",
                    format!("{site:?}: use letters, digits, '.', '_' or '-'"),
                ));
            }
        }
        for (i, k) in self.trusted_public_keys.iter().enumerate() {
            crate::fleet::parse_public_key(k)
                .map_err(|e| invalid(format!("mqtt.trusted_public_keys[{i}]"), e))?;
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid(
                "mqtt.password_file",
                "set password or password_file, not both",
            ));
        }
        if self.ca_file.is_some() && !self.uses_tls() {
            return Err(invalid("mqtt.ca_file", "needs an mqtts:// url"));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(invalid("mqtt.username", "required with a password"));
        }
        Ok(())
    }
}

/// `[spool]`: the on-disk buffer that holds frames while Kafka cannot take
/// them (docs/spool.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Spool directory; default `<data_dir>/spool`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub mode: SpoolMode,
    /// Most bytes the spool may use on disk (real usage, sled's overhead included).
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Frames older than this (capture time) are evicted, whole GOPs at a time.
    #[serde(default = "default_spool_max_age_s")]
    pub max_age_s: u64,
    /// Free space the spool leaves on its filesystem; below it, it evicts as if full.
    #[serde(default = "default_spool_min_free_bytes")]
    pub min_free_bytes: u64,
    /// How often spooled frames are made durable (fsync). Default: 0 (as soon
    /// as possible, group commit) in `always` mode, 200 in `outage` mode.
    #[serde(default)]
    pub flush_every_ms: Option<u64>,
    /// A frame Kafka has not acknowledged after this long sends its camera to
    /// the spool (`outage` mode).
    #[serde(default = "default_spool_switch_after_ms")]
    pub switch_after_ms: u64,
    /// Unacknowledged bytes per camera above which the camera goes to the
    /// spool (`outage` mode backpressure).
    #[serde(default = "default_spool_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpoolMode {
    /// Frames go straight to Kafka; the spool takes them only while Kafka
    /// cannot (outage, backpressure) and until it has drained.
    #[default]
    Outage,
    /// Every frame is made durable in the spool before it is sent (a
    /// write-ahead log): nothing in flight is lost even on SIGKILL.
    Always,
}

impl SpoolMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            SpoolMode::Outage => "outage",
            SpoolMode::Always => "always",
        }
    }
}

const fn default_spool_max_bytes() -> u64 {
    1 << 30
}
const fn default_spool_max_age_s() -> u64 {
    7 * 24 * 3600
}
const fn default_spool_min_free_bytes() -> u64 {
    256 << 20
}
const fn default_spool_switch_after_ms() -> u64 {
    2000
}
const fn default_spool_max_in_flight_bytes() -> u64 {
    16 << 20
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: None,
            mode: SpoolMode::default(),
            max_bytes: default_spool_max_bytes(),
            max_age_s: default_spool_max_age_s(),
            min_free_bytes: default_spool_min_free_bytes(),
            flush_every_ms: None,
            switch_after_ms: default_spool_switch_after_ms(),
            max_in_flight_bytes: default_spool_max_in_flight_bytes(),
        }
    }
}

impl SpoolConfig {
    /// The spool directory for an agent whose state lives in `data_dir`.
    pub fn dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("spool"))
    }

    /// The flush interval after defaults.
    pub fn flush_every_ms(&self) -> u64 {
        self.flush_every_ms.unwrap_or(match self.mode {
            SpoolMode::Always => 0,
            SpoolMode::Outage => 200,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_bytes < 64 << 20 {
            return Err(invalid(
                "spool.max_bytes",
                "must be at least 67108864 (64 MiB): the database alone needs about 8 MiB",
            ));
        }
        if self.max_age_s < 10 {
            return Err(invalid("spool.max_age_s", "must be at least 10"));
        }
        if self.flush_every_ms.is_some_and(|f| f > 10_000) {
            return Err(invalid(
                "spool.flush_every_ms",
                "must be at most 10000: longer leaves too much video undurable",
            ));
        }
        if !(100..=600_000).contains(&self.switch_after_ms) {
            return Err(invalid("spool.switch_after_ms", "must be 100..=600000"));
        }
        if self.max_in_flight_bytes < 1 << 20 {
            return Err(invalid(
                "spool.max_in_flight_bytes",
                "must be at least 1048576",
            ));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(invalid("spool.dir", "is empty"));
        }
        Ok(())
    }
}

/// `[http]` of the agent.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentHttpConfig {
    /// Address for `/metrics` (Prometheus); empty disables the listener.
    #[serde(default = "default_agent_http_listen")]
    pub listen: String,
}

fn default_agent_http_listen() -> String {
    "127.0.0.1:9465".into()
}

impl Default for AgentHttpConfig {
    fn default() -> Self {
        Self {
            listen: default_agent_http_listen(),
        }
    }
}

fn validate_listen(field: &str, listen: &str) -> Result<(), ConfigError> {
    if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(invalid(field, format!("{listen:?} is not ip:port")));
    }
    Ok(())
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentKafkaConfig {
    #[serde(flatten)]
    pub connection: KafkaConfig,
    /// Largest record value sent; bigger frames are split into chunks.
    /// Must not exceed the topic's `max.message.bytes` minus headers.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// How long librdkafka retries a frame before it counts as failed; a
    /// failed frame is kept in the disk spool and sent again from there.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long records may wait to form a batch (librdkafka `linger.ms`).
    /// 0 by default: a frame is already a large record, and every
    /// millisecond here is capture-to-ack latency.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

const fn default_max_record_bytes() -> usize {
    900 * 1024
}
const fn default_delivery_timeout_ms() -> u64 {
    120_000
}
const fn default_linger_ms() -> u64 {
    0
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// `site/camera`; the Kafka key and the archive path.
    pub id: CameraId,
    pub source: SourceConfig,
    #[serde(default)]
    pub encoder: EncoderConfig,
    /// Stop this camera after this many frames (tests, benchmarks); absent = run forever.
    #[serde(default)]
    pub max_frames: Option<u64>,
}

/// Where frames come from.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A moving synthetic pattern with the frame number drawn into the pixels.
    TestPattern {
        width: u32,
        height: u32,
        #[serde(default = "default_fps")]
        fps: u32,
        /// Produce frames as fast as the encoder takes them instead of at `fps`.
        #[serde(default)]
        unpaced: bool,
    },
    /// A YUV4MPEG2 (I420) file, e.g. made with `ffmpeg -i clip.mp4 -pix_fmt yuv420p clip.y4m`.
    Y4m {
        path: PathBuf,
        /// Start again at the first frame at end of file.
        #[serde(default)]
        loop_file: bool,
        /// Produce frames as fast as the encoder takes them instead of at the file's rate.
        #[serde(default)]
        unpaced: bool,
    },
    /// A V4L2 capture device (docs/v4l2.md); list what it offers with `camfleet-agent probe`.
    V4l2 {
        /// Device node, e.g. `/dev/video0`.
        device: PathBuf,
        /// Requested frame width in pixels.
        width: u32,
        /// Requested frame height in pixels.
        height: u32,
        /// Requested frame rate, frames per second.
        #[serde(default = "default_fps")]
        fps: u32,
        /// Absent: the best the device offers for the size and rate (raw
        /// YUYV/NV12 first, else MJPEG).
        #[serde(default)]
        pixel_format: Option<V4l2PixelFormat>,
        /// false: use the nearest size/rate the device offers and log a note;
        /// true: anything but the exact request is an error.
        #[serde(default)]
        exact: bool,
        /// Memory-mapped capture buffers queued in the driver.
        #[serde(default = "default_v4l2_buffers")]
        buffers: u32,
    },
}

const fn default_fps() -> u32 {
    30
}

/// Pixel formats the agent can capture from a V4L2 device (converted to I420).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum V4l2PixelFormat {
    /// Packed 4:2:2 (`YUYV`), the raw format every UVC webcam offers.
    Yuyv,
    /// Semi-planar 4:2:0 (`NV12`), common on SoC camera interfaces.
    Nv12,
    /// Motion JPEG (`MJPG`): compressed by the camera, needed for large sizes
    /// at full rate over USB 2.
    Mjpeg,
}

impl V4l2PixelFormat {
    pub fn as_str(&self) -> &'static str {
        match self {
            V4l2PixelFormat::Yuyv => "YUYV",
            V4l2PixelFormat::Nv12 => "NV12",
            V4l2PixelFormat::Mjpeg => "MJPEG",
        }
    }
}

const fn default_v4l2_buffers() -> u32 {
    4
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Target bitrate.
    #[serde(default = "default_bitrate_kbps")]
    pub bitrate_kbps: u32,
    /// An IDR (with SPS/PPS) every this many frames.
    #[serde(default = "default_keyframe_interval_frames")]
    pub keyframe_interval_frames: u32,
    /// Highest frame rate sent; a faster source is thinned evenly (e.g. a
    /// 30 fps camera at `max_fps = 10` sends every third frame). Absent = the
    /// source's rate.
    #[serde(default)]
    pub max_fps: Option<u32>,
    /// Output width; with `height`, the source is scaled to this size. Absent =
    /// the source's size.
    #[serde(default)]
    pub width: Option<u32>,
    /// Output height (set together with `width`).
    #[serde(default)]
    pub height: Option<u32>,
    #[serde(default)]
    pub rate_control: RateControl,
    #[serde(default)]
    pub complexity: EncoderComplexity,
    /// Spend more bits on flat areas, fewer on busy ones (openh264 adaptive
    /// quantisation).
    #[serde(default = "default_true")]
    pub adaptive_quantization: bool,
    /// Spend fewer bits on what openh264 takes for static background. Off by
    /// default: on real content it costs 0.4-1.3 dB PSNR-Y at 2-4 Mbit/s
    /// (docs/encoder.md); on saves about 20% encoder CPU.
    #[serde(default)]
    pub background_detection: bool,
    /// `cabac` (Main profile, the default: about 10% fewer bits for the same
    /// picture, docs/encoder.md) or `cavlc` (Constrained Baseline, for old
    /// decoders that only do Baseline).
    #[serde(default)]
    pub entropy_coding: EntropyCoding,
    /// Reference frames the encoder keeps (1..=4, written to the SPS as
    /// max_num_ref_frames).
    #[serde(default = "default_reference_frames")]
    pub reference_frames: u32,
    /// Let openh264 insert an extra I frame on a scene cut. Off by default so
    /// GOPs stay exactly `keyframe_interval_frames` long (archive segments
    /// are cut at IDRs).
    #[serde(default)]
    pub scene_change_detection: bool,
}

/// H.264 entropy coding, which also picks the profile.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntropyCoding {
    /// CABAC, Main profile.
    #[default]
    Cabac,
    /// CAVLC, Constrained Baseline profile.
    Cavlc,
}

/// openh264 rate control.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateControl {
    /// Hold the target bitrate (the uplink is what is paid for).
    #[default]
    Bitrate,
    /// Favour quality; the bitrate may exceed the target on busy scenes.
    Quality,
    /// Adjust quality from the encoder's buffer fullness only.
    Buffer,
    /// Hold the target bitrate over the frames' media timestamps rather than
    /// the nominal frame rate.
    Timestamp,
}

/// openh264 encoder complexity: speed against quality per bit. `low` is the
/// default: with CABAC it keeps the encoder >= 1.3x x264 veryfast's speed at
/// 720p 2-4 Mbit/s, where `medium` (0.1-0.3 dB better) falls to ~1.2x
/// (docs/encoder.md). `high` encodes like `medium` in camera mode.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EncoderComplexity {
    #[default]
    Low,
    Medium,
    High,
}

const fn default_true() -> bool {
    true
}
const fn default_bitrate_kbps() -> u32 {
    2000
}
const fn default_keyframe_interval_frames() -> u32 {
    60
}
const fn default_reference_frames() -> u32 {
    1
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate_kbps: default_bitrate_kbps(),
            keyframe_interval_frames: default_keyframe_interval_frames(),
            max_fps: None,
            width: None,
            height: None,
            rate_control: RateControl::default(),
            complexity: EncoderComplexity::default(),
            adaptive_quantization: true,
            background_detection: false,
            entropy_coding: EntropyCoding::default(),
            reference_frames: default_reference_frames(),
            scene_change_detection: false,
        }
    }
}

impl EncoderConfig {
    fn validate(&self, at: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        if !(50..=100_000).contains(&self.bitrate_kbps) {
            return Err(invalid(at("encoder.bitrate_kbps"), "must be 50..=100000"));
        }
        if !(1..=3600).contains(&self.keyframe_interval_frames) {
            return Err(invalid(
                at("encoder.keyframe_interval_frames"),
                "must be 1..=3600",
            ));
        }
        if !(1..=4).contains(&self.reference_frames) {
            return Err(invalid(at("encoder.reference_frames"), "must be 1..=4"));
        }
        if self.max_fps.is_some_and(|f| !(1..=120).contains(&f)) {
            return Err(invalid(at("encoder.max_fps"), "must be 1..=120"));
        }
        match (self.width, self.height) {
            (None, None) => {}
            (Some(w), Some(h)) => {
                if w < 64 || h < 64 || w % 2 != 0 || h % 2 != 0 || w > 7680 || h > 4320 {
                    return Err(invalid(
                        at("encoder.width"),
                        format!("{w}x{h}: width and height must be even, 64..=7680 x 64..=4320"),
                    ));
                }
            }
            _ => {
                return Err(invalid(
                    at("encoder.width"),
                    "set width and height together (or neither, to keep the source's size)",
                ))
            }
        }
        Ok(())
    }
}

impl AgentConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.connection.validate("kafka")?;
        if self.kafka.max_record_bytes < 1024 || self.kafka.max_record_bytes > 64 << 20 {
            return Err(invalid("kafka.max_record_bytes", "must be 1024..=67108864"));
        }
        if self.kafka.delivery_timeout_ms < 1000 {
            return Err(invalid(
                "kafka.delivery_timeout_ms",
                "must be at least 1000",
            ));
        }
        self.spool.validate()?;
        validate_listen("http.listen", &self.http.listen)?;
        if let Some(mqtt) = &self.mqtt {
            mqtt.validate()?;
        }
        if self.cameras.is_empty() {
            return Err(invalid("camera", "no [[camera]] configured"));
        }
        let mut seen = HashSet::new();
        for (i, cam) in self.cameras.iter().enumerate() {
            let at = |f: &str| format!("camera[{i}] ({}).{f}", cam.id);
            if !seen.insert(&cam.id) {
                return Err(invalid(at("id"), "duplicate camera id"));
            }
            if let SourceConfig::TestPattern {
                width, height, fps, ..
            }
            | SourceConfig::V4l2 {
                width, height, fps, ..
            } = &cam.source
            {
                if *width < 64 || *height < 64 || width % 2 != 0 || height % 2 != 0 {
                    return Err(invalid(
                        at("source"),
                        format!("{width}x{height}: width and height must be even and >= 64"),
                    ));
                }
                if *width > 7680 || *height > 4320 {
                    return Err(invalid(at("source"), "larger than 7680x4320"));
                }
                if !(1..=120).contains(fps) {
                    return Err(invalid(at("source.fps"), "must be 1..=120"));
                }
            }
            if let SourceConfig::V4l2 {
                device, buffers, ..
            } = &cam.source
            {
                if device.as_os_str().is_empty() {
                    return Err(invalid(at("source.device"), "is empty"));
                }
                // Fewer than 2 stalls the driver while we convert; more than 32
                // only adds latency and pinned memory.
                if !(2..=32).contains(buffers) {
                    return Err(invalid(at("source.buffers"), "must be 2..=32"));
                }
            }
            cam.encoder.validate(at)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------ collector

/// `collector.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    pub kafka: CollectorKafkaConfig,
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub http: HttpConfig,
    /// Object detection on the video; absent = off.
    #[serde(default)]
    pub inference: Option<InferenceConfig>,
    /// Live HLS per camera and the ops page (docs/live.md); absent = off.
    #[serde(default)]
    pub live: Option<LiveConfig>,
    /// On-premises learning: verifier and scene models, registry, hot swap
    /// (docs/learning.md); absent = off.
    #[serde(default)]
    pub learning: Option<LearningConfig>,
}

/// Which cameras one verifier covers.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LearningScope {
    /// `verifier@<site>@<camera>`: one per camera.
    Camera,
    /// `verifier@<site>`: one per site, trained on all its cameras.
    Site,
}

/// `[learning]` (docs/learning.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LearningConfig {
    /// Train on the schedule and use promoted models live; `false` keeps the
    /// `train` and `model` commands working but changes nothing at run time.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// One verifier per camera or per site.
    #[serde(default = "default_learning_scope")]
    pub scope: LearningScope,
    /// Detector classes in the verifier's one-hot input (80 for COCO).
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// Promotion needs at least this many held-out labels.
    #[serde(default = "default_min_labels")]
    pub min_labels: usize,
    /// Share of labelled detections held out for the shadow evaluation
    /// (chosen by a hash of the detection id).
    #[serde(default = "default_holdout_fraction")]
    pub holdout_fraction: f64,
    /// The candidate may lose at most this much recall against the baseline.
    #[serde(default = "default_recall_tolerance")]
    pub recall_tolerance: f64,
    /// The candidate must beat the baseline's precision by more than this.
    #[serde(default)]
    pub min_precision_gain: f64,
    /// The verifier's threshold keeps this share of the training split's
    /// real detections.
    #[serde(default = "default_target_recall")]
    pub target_recall: f64,
    /// Scene models: alarm threshold = this quantile of training distances...
    #[serde(default = "default_scene_quantile")]
    pub scene_threshold_quantile: f64,
    /// ...times this margin.
    #[serde(default = "default_scene_margin")]
    pub scene_threshold_margin: f64,
    /// Scene models are promoted only if at most this share of held-out
    /// normal frames alarm.
    #[serde(default = "default_scene_false_alarm")]
    pub scene_max_false_alarm_rate: f64,
    /// Retrain after this many new labels (0 = not on label count).
    #[serde(default = "default_retrain_labels")]
    pub retrain_after_labels: u64,
    /// Retrain at least this often (0 = not on time).
    #[serde(default = "default_retrain_interval_s")]
    pub retrain_interval_s: u64,
    /// How often each collector checks the registry's `current` pointers.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// A verifier that passes the held-out gate in a scheduled or CLI
    /// `train` first runs in shadow on live traffic beside the one in force
    /// and is promoted only if it wins there too; `false` promotes on the
    /// held-out gate alone.
    #[serde(default = "default_true")]
    pub shadow: bool,
    /// Live labels (ops or stillness) of shadow-scored detections needed
    /// before the live gate decides.
    #[serde(default = "default_shadow_min_labels")]
    pub shadow_min_labels: usize,
    /// A shadow that has not gathered `shadow_min_labels` live labels after
    /// this long is rejected (and a later training may try again).
    #[serde(default = "default_shadow_max_s")]
    pub shadow_max_s: u64,
    /// How often each collector runs the live gate on models in shadow.
    #[serde(default = "default_shadow_check_s")]
    pub shadow_check_s: u64,
}

const fn default_learning_scope() -> LearningScope {
    LearningScope::Camera
}
const fn default_num_classes() -> usize {
    80
}
const fn default_min_labels() -> usize {
    50
}
const fn default_holdout_fraction() -> f64 {
    0.25
}
// Above the 2% that target_recall gives up by design, plus sampling noise
// of a few dozen held-out real detections.
const fn default_recall_tolerance() -> f64 {
    0.05
}
const fn default_target_recall() -> f64 {
    0.98
}
const fn default_scene_quantile() -> f64 {
    0.99
}
const fn default_scene_margin() -> f64 {
    1.5
}
const fn default_scene_false_alarm() -> f64 {
    0.01
}
const fn default_retrain_labels() -> u64 {
    200
}
const fn default_retrain_interval_s() -> u64 {
    86_400
}
const fn default_poll_interval_ms() -> u64 {
    10_000
}
const fn default_shadow_min_labels() -> usize {
    50
}
// A week: long enough for a quiet camera to see ops once or twice.
const fn default_shadow_max_s() -> u64 {
    7 * 86_400
}
const fn default_shadow_check_s() -> u64 {
    60
}

impl Default for LearningConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [learning] field has a default")
    }
}

impl LearningConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let share = |field: &str, v: f64, lo: f64, hi: f64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(
                    format!("learning.{field}"),
                    format!("{v} is outside {lo}..={hi}"),
                ))
            }
        };
        share("holdout_fraction", self.holdout_fraction, 0.05, 0.9)?;
        share("recall_tolerance", self.recall_tolerance, 0.0, 1.0)?;
        share("min_precision_gain", self.min_precision_gain, 0.0, 1.0)?;
        share("target_recall", self.target_recall, 0.5, 1.0)?;
        share(
            "scene_threshold_quantile",
            self.scene_threshold_quantile,
            0.5,
            1.0,
        )?;
        share(
            "scene_threshold_margin",
            self.scene_threshold_margin,
            1.0,
            100.0,
        )?;
        share(
            "scene_max_false_alarm_rate",
            self.scene_max_false_alarm_rate,
            0.0,
            1.0,
        )?;
        if !(1..=1000).contains(&self.num_classes) {
            return Err(invalid("learning.num_classes", "must be 1..=1000"));
        }
        if self.min_labels < 2 {
            return Err(invalid("learning.min_labels", "must be at least 2"));
        }
        if self.poll_interval_ms < 100 {
            return Err(invalid("learning.poll_interval_ms", "must be at least 100"));
        }
        if self.shadow_min_labels < 2 {
            return Err(invalid("learning.shadow_min_labels", "must be at least 2"));
        }
        if self.shadow_max_s == 0 {
            return Err(invalid("learning.shadow_max_s", "must be at least 1"));
        }
        if self.shadow_check_s == 0 {
            return Err(invalid("learning.shadow_check_s", "must be at least 1"));
        }
        Ok(())
    }
}

/// `[inference]`: run a detector on each camera's video and publish
/// detections and events to Kafka (docs/detection.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// The model's manifest (TOML); its `.onnx` file is resolved next to it
    /// unless `models_dir` is set.
    pub model: PathBuf,
    /// Directory holding the model files named by the manifest.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// ONNX Runtime shared library; default: the `ORT_DYLIB_PATH` variable.
    #[serde(default)]
    pub onnxruntime_library: Option<PathBuf>,
    /// Frames inferred per second and camera (sampled by media time); 0 =
    /// keyframes only, which also decodes keyframes only.
    #[serde(default = "default_infer_fps")]
    pub infer_fps: f64,
    /// Topic of detection records (`camfleet.detections.v1` schema).
    #[serde(default = "default_detections_topic")]
    pub detections_topic: String,
    /// Topic of per-camera events (appeared/left, dark, covered, frozen).
    #[serde(default = "default_events_topic")]
    pub events_topic: String,
    /// Cameras to run inference on: ids (`depot/gate`) or whole sites
    /// (`depot/*`). Empty = every camera.
    #[serde(default)]
    pub cameras: Vec<String>,
    /// Learning features (docs/learning.md): an embedding of every detected
    /// object's crop and of sampled whole frames. Absent = off.
    #[serde(default)]
    pub embedding: Option<EmbeddingConfig>,
}

/// `[inference.embedding]`: the backbone that turns a crop or a whole
/// picture into a fixed-length embedding (docs/learning.md).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// The backbone's manifest (TOML, e.g. `collector/models/ssdlite-backbone.toml`).
    pub model: PathBuf,
    /// Directory holding the backbone's .onnx file; default: the manifest's own.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// Embed each detected object's crop (the verifier's input).
    #[serde(default = "default_true")]
    pub objects: bool,
    /// A whole-frame embedding (the scene model's input) at most once per
    /// this many seconds of media time per camera; 0 = never.
    #[serde(default = "default_scene_period_s")]
    pub scene_period_s: f64,
    /// Topic of feature records (`camfleet.features.v1`, docs/learning.md):
    /// what the detections/labels Parquet tables are written from.
    #[serde(default = "default_features_topic")]
    pub features_topic: String,
    /// Topic of ops' labels (`camfleet-collector label`, `camfleet.labels.v1`).
    #[serde(default = "default_labels_topic")]
    pub labels_topic: String,
    /// The learning tables are rewritten (and the records behind them
    /// committed) at most this often, seconds.
    #[serde(default = "default_tables_flush_s")]
    pub tables_flush_s: f64,
    /// Stillness rule (docs/learning.md): same place = IoU with the first box
    /// of the track at least this.
    #[serde(default = "default_stillness_iou")]
    pub stillness_iou: f32,
    /// Still for at least this long (capture time) -> hard negative.
    #[serde(default = "default_stillness_min_s")]
    pub stillness_min_s: f64,
    /// A box not seen for this long ends its track (the object left).
    #[serde(default = "default_stillness_gap_s")]
    pub stillness_gap_s: f64,
}

fn default_features_topic() -> String {
    crate::wire::FEATURES_TOPIC.into()
}
fn default_labels_topic() -> String {
    crate::wire::LABELS_TOPIC.into()
}
fn default_tables_flush_s() -> f64 {
    10.0
}
fn default_stillness_iou() -> f32 {
    0.8
}
fn default_stillness_min_s() -> f64 {
    2.0 * 3600.0
}
fn default_stillness_gap_s() -> f64 {
    60.0
}

fn default_scene_period_s() -> f64 {
    10.0
}

impl EmbeddingConfig {
    /// Where the manifest's model file is looked up.
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .or_else(|| self.model.parent().map(|p| p.to_path_buf()))
            .unwrap_or_default()
    }
}

fn default_infer_fps() -> f64 {
    2.0
}
fn default_detections_topic() -> String {
    crate::wire::DETECTIONS_TOPIC.into()
}
fn default_events_topic() -> String {
    crate::wire::EVENTS_TOPIC.into()
}

impl InferenceConfig {
    /// Where the manifest's model file is looked up: `models_dir`, else the
    /// manifest's own directory.
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .or_else(|| self.model.parent().map(|p| p.to_path_buf()))
            .unwrap_or_default()
    }

    /// Whether `camera` (`site/camera`) is one inference runs on.
    pub fn covers(&self, camera: &str) -> bool {
        self.cameras.is_empty()
            || self.cameras.iter().any(|p| match p.strip_suffix("/*") {
                Some(site) => camera.split_once('/').is_some_and(|(s, _)| s == site),
                None => p == camera,
            })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.cameras.iter().enumerate() {
            let id = p
                .strip_suffix("/*")
                .map_or(p.clone(), |site| format!("{site}/x"));
            if CameraId::new(&id).is_err() {
                return Err(invalid(
                    format!("inference.cameras[{i}]"),
                    format!("{p:?} is neither a camera id (site/camera) nor a site (site/*)"),
                ));
            }
        }
        if self.model.as_os_str().is_empty() {
            return Err(invalid("inference.model", "is empty"));
        }
        if let Some(e) = &self.embedding {
            if e.model.as_os_str().is_empty() {
                return Err(invalid("inference.embedding.model", "is empty"));
            }
            if e.features_topic.is_empty() {
                return Err(invalid("inference.embedding.features_topic", "is empty"));
            }
            if e.labels_topic.is_empty() {
                return Err(invalid("inference.embedding.labels_topic", "is empty"));
            }
            if !(0.1..=3600.0).contains(&e.tables_flush_s) {
                return Err(invalid(
                    "inference.embedding.tables_flush_s",
                    "must be 0.1 to 3600 seconds",
                ));
            }
            if !(e.stillness_iou > 0.0 && e.stillness_iou <= 1.0) {
                return Err(invalid(
                    "inference.embedding.stillness_iou",
                    "must be in (0, 1]",
                ));
            }
            let positive = |v: f64| v > 0.0 && v.is_finite();
            if !positive(e.stillness_min_s) || !positive(e.stillness_gap_s) {
                return Err(invalid(
                    "inference.embedding.stillness_min_s",
                    "stillness_min_s and stillness_gap_s must be positive seconds",
                ));
            }
            if !(0.0..=86_400.0).contains(&e.scene_period_s) || e.scene_period_s.is_nan() {
                return Err(invalid(
                    "inference.embedding.scene_period_s",
                    "must be 0 (never) to 86400 seconds",
                ));
            }
        }
        if !(0.0..=60.0).contains(&self.infer_fps) || self.infer_fps.is_nan() {
            return Err(invalid(
                "inference.infer_fps",
                "must be 0 (keyframes only) to 60",
            ));
        }
        for (field, topic) in [
            ("inference.detections_topic", &self.detections_topic),
            ("inference.events_topic", &self.events_topic),
        ] {
            if topic.is_empty()
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(invalid(
                    field,
                    format!("{topic:?} is not a legal Kafka topic name"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorKafkaConfig {
    #[serde(flatten)]
    pub connection: KafkaConfig,
    /// Consumer group; all collector instances of one deployment share it.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// Topic for records that cannot be parsed (dead letters); empty = log only.
    #[serde(default = "default_dead_letter_topic")]
    pub dead_letter_topic: String,
}

fn default_group_id() -> String {
    "camfleet-collector".into()
}
fn default_dead_letter_topic() -> String {
    "camfleet.video.v1.dlq".into()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Local directory (`/var/lib/camfleet/archive`) or `hdfs://namenode:port/path`.
    pub root: String,
    /// A segment closes at the first keyframe at or after this media duration.
    #[serde(default = "default_segment_target_ms")]
    pub segment_target_ms: u64,
    /// A segment closes early when it holds this many bytes of video.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: usize,
    /// An open segment with no new frame for this long is written out as a
    /// snapshot (it stays open; the full segment replaces it when it closes).
    #[serde(default = "default_idle_flush_ms")]
    pub idle_flush_ms: u64,
    /// Local directory for the open segments' frame bytes (unnamed temporary
    /// files, never fsynced, gone at exit; docs/archive.md, "Memory").
    /// Empty (the default): the archive root for a local archive, the
    /// system's temporary directory for HDFS.
    #[serde(default)]
    pub spill_dir: String,
    /// Limits by age and size (docs/archive.md, "Retention"); none by default.
    #[serde(default)]
    pub retention: RetentionConfig,
}

impl ArchiveConfig {
    /// `spill_dir`, or its default for this archive root.
    pub fn spill_dir(&self) -> std::path::PathBuf {
        if !self.spill_dir.is_empty() {
            self.spill_dir.clone().into()
        } else if self.root.starts_with("hdfs://") {
            std::env::temp_dir()
        } else {
            self.root.clone().into()
        }
    }
}

const fn default_segment_target_ms() -> u64 {
    4000
}
const fn default_segment_max_bytes() -> usize {
    64 << 20
}
const fn default_idle_flush_ms() -> u64 {
    10_000
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/metrics` (Prometheus), live HLS and the ops page;
    /// empty disables the listener.
    #[serde(default = "default_http_listen")]
    pub listen: String,
    /// Origins allowed to read video and APIs from other sites (CORS);
    /// `["*"]` for any; empty = no CORS headers (same origin only).
    #[serde(default)]
    pub cors_allow_origins: Vec<String>,
    /// Directory holding `hls.min.js` for the page (scripts/setup installs
    /// it under ~/.cache/camfleet/web/node_modules/hls.js/dist); unset =
    /// the page uses the browser's native HLS only.
    #[serde(default)]
    pub web_vendor_dir: Option<PathBuf>,
    /// Credentials required on every route; absent = open.
    #[serde(default)]
    pub auth: Option<HttpAuthConfig>,
    /// HTTPS with these files; absent = plain HTTP.
    #[serde(default)]
    pub tls: Option<HttpTlsConfig>,
}

fn default_http_listen() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
            cors_allow_origins: Vec::new(),
            web_vendor_dir: None,
            auth: None,
            tls: None,
        }
    }
}

impl CollectorConfig {
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.connection.validate("kafka")?;
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "is empty"));
        }
        let root = &self.archive.root;
        if root.is_empty() {
            return Err(invalid("archive.root", "is empty"));
        }
        if root.contains("://") && !root.starts_with("hdfs://") {
            return Err(invalid(
                "archive.root",
                format!("{root:?}: only local paths and hdfs:// URLs are supported"),
            ));
        }
        if !(100..=600_000).contains(&self.archive.segment_target_ms) {
            return Err(invalid("archive.segment_target_ms", "must be 100..=600000"));
        }
        if self.archive.segment_max_bytes < 1 << 20 {
            return Err(invalid(
                "archive.segment_max_bytes",
                "must be at least 1048576",
            ));
        }
        if self.archive.idle_flush_ms < 100 {
            return Err(invalid("archive.idle_flush_ms", "must be at least 100"));
        }
        self.archive.retention.validate()?;
        if let Some(inference) = &self.inference {
            inference.validate()?;
        }
        if let Some(learning) = &self.learning {
            learning.validate()?;
        }
        if let Some(live) = &self.live {
            live.validate()?;
            if self.http.listen.is_empty() {
                return Err(invalid(
                    "live",
                    "needs http.listen (the live view is served there)",
                ));
            }
        }
        if let Some(auth) = &self.http.auth {
            auth.validate()?;
        }
        validate_listen("http.listen", &self.http.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = r#"
data_dir = "/var/lib/camfleet"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[camera]]
id = "depot/gate"
source = { kind = "test_pattern", width = 1280, height = 720 }
[[camera]]
id = "depot/yard"
source = { kind = "y4m", path = "/srv/yard.y4m", loop_file = true }
encoder = { bitrate_kbps = 4000, keyframe_interval_frames = 30 }
"#;

    #[test]
    fn agent_example_parses_with_defaults() {
        let c = AgentConfig::from_toml(AGENT).unwrap();
        assert_eq!(c.cameras.len(), 2);
        assert_eq!(c.kafka.connection.topic, "camfleet.video.v1");
        assert_eq!(c.cameras[0].encoder, EncoderConfig::default());
        assert!(matches!(
            c.cameras[0].source,
            SourceConfig::TestPattern {
                fps: 30,
                unpaced: false,
                ..
            }
        ));
    }

    fn agent_err(text: &str) -> String {
        AgentConfig::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn agent_errors_name_the_field() {
        let typo = AGENT.replace("bitrate_kbps", "bitrate_kpbs");
        assert!(
            agent_err(&typo).contains("bitrate_kpbs"),
            "{}",
            agent_err(&typo)
        );
        let dup = AGENT.replace("depot/yard", "depot/gate");
        assert!(agent_err(&dup).contains("duplicate camera id"));
        let odd = AGENT.replace("width = 1280", "width = 1281");
        assert!(agent_err(&odd).contains("camera[0] (depot/gate).source"));
        let id = AGENT.replace("depot/gate", "depot gate");
        assert!(agent_err(&id).contains("invalid camera id"));
        let kind = AGENT.replace("\"y4m\"", "\"v4l3\"");
        assert!(agent_err(&kind).contains("v4l3"));
        let server = AGENT.replace("127.0.0.1:19092", "127.0.0.1");
        assert!(agent_err(&server).contains("kafka.bootstrap_servers"));
        let unknown_in_source = AGENT.replace("loop_file = true", "loop_file = true, fps = 5");
        assert!(agent_err(&unknown_in_source).contains("fps"));
        let spool = format!("{AGENT}\n[spool]\nmode = \"sometimes\"\n");
        assert!(
            agent_err(&spool).contains("sometimes"),
            "{}",
            agent_err(&spool)
        );
        let tiny = format!("{AGENT}\n[spool]\nmax_bytes = 1000\n");
        assert!(agent_err(&tiny).contains("spool.max_bytes"));
        let listen = format!("{AGENT}\n[http]\nlisten = \"nowhere\"\n");
        assert!(agent_err(&listen).contains("http.listen"));
    }

    #[test]
    fn encoder_settings_parse_and_are_checked() {
        let full = AGENT.replace(
            "keyframe_interval_frames = 30 }",
            "keyframe_interval_frames = 30, width = 640, height = 360, max_fps = 10, \
             rate_control = \"quality\", complexity = \"high\", adaptive_quantization = false, \
             entropy_coding = \"cavlc\", reference_frames = 2, scene_change_detection = true }",
        );
        let c = AgentConfig::from_toml(&full).unwrap();
        let e = &c.cameras[1].encoder;
        assert_eq!(
            (e.width, e.height, e.max_fps),
            (Some(640), Some(360), Some(10))
        );
        assert_eq!(e.rate_control, RateControl::Quality);
        assert_eq!(e.complexity, EncoderComplexity::High);
        assert!(!e.adaptive_quantization && !e.background_detection);
        assert_eq!(
            (
                e.entropy_coding,
                e.reference_frames,
                e.scene_change_detection
            ),
            (EntropyCoding::Cavlc, 2, true)
        );
        for (change, field) in [
            ("width = 640, height = 360", "encoder.width"),
            ("width = 641, height = 360", "encoder.width"),
            ("height = 360", "encoder.width"),
            ("max_fps = 0", "encoder.max_fps"),
            ("rate_control = \"cbr\"", "cbr"),
            ("complexity = \"extreme\"", "extreme"),
            ("reference_frames = 0", "encoder.reference_frames"),
            ("reference_frames = 16", "encoder.reference_frames"),
            ("entropy_coding = \"huffman\"", "huffman"),
        ] {
            let bad = AGENT.replace(
                "keyframe_interval_frames = 30 }",
                &format!("keyframe_interval_frames = 30, {change} }}"),
            );
            let bad = if change.starts_with("width = 640") {
                bad.replace("width = 640", "width = 8000")
            } else {
                bad
            };
            let err = agent_err(&bad);
            assert!(err.contains(field), "{change}: {err}");
        }
    }

    #[test]
    fn mqtt_settings_are_checked() {
        let ok =
            format!("{AGENT}\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nagent_id = \"box-1\"\n");
        let m = AgentConfig::from_toml(&ok).unwrap().mqtt.unwrap();
        assert_eq!(m.host_port().unwrap(), ("127.0.0.1".to_string(), 1883));
        assert_eq!((m.telemetry_period_s, m.keep_alive_s), (30, 15));
        for (bad, field) in [
            (ok.replace("mqtt://127.0.0.1:1883", "tcp://x:1"), "mqtt.url"),
            (
                ok.replace("mqtt://127.0.0.1:1883", "mqtt://nohost"),
                "mqtt.url",
            ),
            (ok.replace("box-1", "box/1"), "mqtt.agent_id"),
            (
                ok.replace("agent_id = \"box-1\"", "agent_id = \"b\"\nkeep_alive_s = 1"),
                "mqtt.keep_alive_s",
            ),
        ] {
            let err = agent_err(&bad);
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn inference_cameras_select_ids_and_sites() {
        let base = "[kafka]\nbootstrap_servers = \"k:9092\"\n[archive]\nroot = \"/a\"\n[inference]\nmodel = \"m.toml\"\n";
        let c =
            CollectorConfig::from_toml(&format!("{base}cameras = [\"depot/*\", \"yard/gate\"]\n"))
                .unwrap();
        let i = c.inference.unwrap();
        assert!(i.covers("depot/door") && i.covers("yard/gate"));
        assert!(!i.covers("yard/fence") && !i.covers("depots/door"));
        let all = CollectorConfig::from_toml(base).unwrap().inference.unwrap();
        assert!(all.covers("anything/at-all"));
        assert_eq!(all.infer_fps, 2.0);
        let err = CollectorConfig::from_toml(&format!("{base}cameras = [\"no slash\"]\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.cameras[0]"), "{err}");
        let err = CollectorConfig::from_toml(&format!("{base}infer_fps = 100\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("inference.infer_fps"), "{err}");
    }

    #[test]
    fn inference_embedding_has_defaults_and_names_bad_fields() {
        let base = "[kafka]\nbootstrap_servers = \"k:9092\"\n[archive]\nroot = \"/a\"\n[inference]\nmodel = \"m.toml\"\n[inference.embedding]\nmodel = \"/m/b.toml\"\n";
        let e = CollectorConfig::from_toml(base)
            .unwrap()
            .inference
            .unwrap()
            .embedding
            .unwrap();
        assert!(e.objects);
        assert_eq!((e.scene_period_s, e.tables_flush_s), (10.0, 10.0));
        assert_eq!(
            (e.stillness_iou, e.stillness_min_s, e.stillness_gap_s),
            (0.8, 7200.0, 60.0)
        );
        assert_eq!(e.features_topic, "camfleet.features.v1");
        assert_eq!(e.labels_topic, "camfleet.labels.v1");
        assert_eq!(e.models_dir(), PathBuf::from("/m"));
        for (bad, field) in [
            ("scene_period_s = -1", "inference.embedding.scene_period_s"),
            ("tables_flush_s = 0", "inference.embedding.tables_flush_s"),
            ("stillness_iou = 1.5", "inference.embedding.stillness_iou"),
            ("stillness_min_s = 0", "inference.embedding.stillness_min_s"),
            (
                "features_topic = \"\"",
                "inference.embedding.features_topic",
            ),
            ("labels_topic = \"\"", "inference.embedding.labels_topic"),
            ("scene_period = 3", "scene_period"),
        ] {
            let err = CollectorConfig::from_toml(&format!("{base}{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }

    #[test]
    fn spool_defaults_depend_on_the_mode() {
        let c = AgentConfig::from_toml(AGENT).unwrap();
        assert_eq!(c.spool.mode, SpoolMode::Outage);
        assert_eq!(c.spool.flush_every_ms(), 200);
        assert_eq!(
            c.spool.dir(&c.data_dir),
            PathBuf::from("/var/lib/camfleet/spool")
        );
        let always = format!("{AGENT}\n[spool]\nmode = \"always\"\n");
        let c = AgentConfig::from_toml(&always).unwrap();
        assert_eq!(c.spool.flush_every_ms(), 0);
    }

    const V4L2: &str = r#"
data_dir = "/var/lib/camfleet"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[camera]]
id = "depot/door"
source = { kind = "v4l2", device = "/dev/video0", width = 1280, height = 720 }
"#;

    #[test]
    fn v4l2_source_parses_with_defaults() {
        let c = AgentConfig::from_toml(V4L2).unwrap();
        assert_eq!(
            c.cameras[0].source,
            SourceConfig::V4l2 {
                device: PathBuf::from("/dev/video0"),
                width: 1280,
                height: 720,
                fps: 30,
                pixel_format: None,
                exact: false,
                buffers: 4,
            }
        );
        let full = V4L2.replace(
            "height = 720 }",
            "height = 720, fps = 15, pixel_format = \"mjpeg\", exact = true, buffers = 8 }",
        );
        let c = AgentConfig::from_toml(&full).unwrap();
        assert!(matches!(
            c.cameras[0].source,
            SourceConfig::V4l2 {
                fps: 15,
                pixel_format: Some(V4l2PixelFormat::Mjpeg),
                exact: true,
                buffers: 8,
                ..
            }
        ));
    }

    #[test]
    fn v4l2_source_rejects_bad_values_naming_the_field() {
        for (from, to, want) in [
            (
                "width = 1280",
                "width = 1281",
                "camera[0] (depot/door).source",
            ),
            ("width = 1280", "width = 32", "must be even and >= 64"),
            ("height = 720", "height = 8640", "larger than 7680x4320"),
            ("height = 720 }", "height = 720, fps = 0 }", "source.fps"),
            ("height = 720 }", "height = 720, fps = 121 }", "source.fps"),
            (
                "height = 720 }",
                "height = 720, buffers = 1 }",
                "source.buffers",
            ),
            (
                "height = 720 }",
                "height = 720, buffers = 33 }",
                "source.buffers",
            ),
            ("\"/dev/video0\"", "\"\"", "source.device"),
            (
                "height = 720 }",
                "height = 720, pixel_format = \"rgb24\" }",
                "rgb24",
            ),
            (
                "height = 720 }",
                "height = 720, loop_file = true }",
                "loop_file",
            ),
        ] {
            let text = V4L2.replace(from, to);
            assert_ne!(text, V4L2, "{from} not in the example");
            let err = agent_err(&text);
            assert!(err.contains(want), "{to}: {err}");
        }
    }

    const COLLECTOR: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[archive]
root = "hdfs://127.0.0.1:19020/camfleet"
"#;

    #[test]
    fn collector_example_parses_with_defaults() {
        let c = CollectorConfig::from_toml(COLLECTOR).unwrap();
        assert_eq!(c.kafka.group_id, "camfleet-collector");
        assert_eq!(c.archive.segment_target_ms, 4000);
        assert_eq!(c.http.listen, "127.0.0.1:9464");
    }

    /// The examples shipped next to each binary must stay valid.
    #[test]
    fn shipped_examples_are_valid() {
        AgentConfig::from_toml(include_str!("../../agent/agent.example.toml")).unwrap();
        CollectorConfig::from_toml(include_str!("../../collector/collector.example.toml")).unwrap();
    }

    #[test]
    fn collector_rejects_unknown_archive_schemes() {
        let s3 = COLLECTOR.replace("hdfs://", "s3://");
        let e = CollectorConfig::from_toml(&s3).unwrap_err().to_string();
        assert!(e.contains("archive.root"), "{e}");
    }

    #[test]
    fn live_and_http_access_settings_are_checked_with_the_field_named() {
        let ok = format!("{COLLECTOR}[live]\n[http.auth]\ntoken_file = \"/etc/t\"\n");
        let c = CollectorConfig::from_toml(&ok).unwrap();
        let live = c.live.unwrap();
        assert_eq!((live.playlist_segments, live.part_target_ms), (6, 200));
        assert_eq!(live.detections_topic, "camfleet.detections.v1");
        for (toml, want) in [
            ("[live]\npart_target_ms = 20\n", "live.part_target_ms"),
            ("[live]\nplaylist_segments = 1\n", "live.playlist_segments"),
            ("[live]\nblock_timeout_ms = 5\n", "live.block_timeout_ms"),
            ("[live]\nsegments = 3\n", "unknown field `segments`"),
            ("[http.auth]\n", "http.auth: needs token_file or users_file"),
            (
                "[http.tls]\ncert_file = \"c.pem\"\n",
                "missing field `key_file`",
            ),
            ("[http]\nlisten = \"\"\n[live]\n", "live: needs http.listen"),
        ] {
            let e = CollectorConfig::from_toml(&format!("{COLLECTOR}{toml}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{toml}: {e}");
        }
    }
}
