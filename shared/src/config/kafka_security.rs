//! Kafka connection security: `security_protocol`, `[kafka.tls]`,
//! `[kafka.sasl]`, the [`Secret`] type that keeps passwords out of `Debug`
//! output, and the one mapping of these settings to librdkafka properties
//! that agent and collector share ([`KafkaConfig::client_properties`]).
//!
//! No I/O here: reading a `password_file` (and checking that certificate
//! files are readable) goes through a function the binary passes in.

use super::{invalid, ConfigError, KafkaConfig};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// A string that must not be printed: `Debug` and `Display` show
/// `<redacted>`; [`Secret::expose`] is the only way to the value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// librdkafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    pub fn uses_tls(&self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    pub fn uses_sasl(&self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `[kafka.tls]`: how the client checks the broker (and, with a client
/// certificate, proves itself: mTLS).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaTlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate; absent =
    /// the system's trust store.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (mTLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (unencrypted).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host connected to.
    /// Turning it off lets any certificate from a trusted CA impersonate the
    /// broker.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

const fn yes() -> bool {
    true
}

impl Default for KafkaTlsConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify_hostname: true,
        }
    }
}

/// SASL mechanism (librdkafka `sasl.mechanism`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "scram_sha_512")]
    ScramSha512,
    #[serde(rename = "scram_sha_256")]
    ScramSha256,
    Plain,
}

impl SaslMechanism {
    pub fn librdkafka_name(&self) -> &'static str {
        match self {
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::Plain => "PLAIN",
        }
    }
}

/// `[kafka.sasl]`: the client's identity. Exactly one of `password` and
/// `password_file` (a file keeps the secret out of the config, e.g. a
/// systemd credential or a mounted Kubernetes secret).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSaslConfig {
    #[serde(default)]
    pub mechanism: SaslMechanism,
    pub username: String,
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password; one trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// librdkafka properties whose values are secrets: redacted whenever
/// properties or `librdkafka_options` are printed.
pub fn is_sensitive_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k == "sasl.jaas.config"
        || k == "ssl.key.pem"
        || k == "ssl_key"
        || k.ends_with(".token")
}

/// The librdkafka properties for a connection, in order; printing them
/// (`Debug`, [`ClientProperties::redacted`]) hides secret values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(Vec<(String, String)>);

impl ClientProperties {
    fn push(&mut self, key: &str, value: impl Into<String>) {
        self.0.push((key.to_string(), value.into()));
    }

    /// Keys and real values, to hand to the client library.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `key` (the last one set).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Keys and values with secrets replaced by `<redacted>`, for printing.
    pub fn redacted(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if is_sensitive_property(k) {
                    "<redacted>".to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

/// `librdkafka_options` printed with secret values redacted (used by
/// `KafkaConfig`'s `Debug`).
pub(super) struct RedactedOptions<'a>(pub &'a std::collections::BTreeMap<String, String>);

impl fmt::Debug for RedactedOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v = if is_sensitive_property(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, v)
            }))
            .finish()
    }
}

fn check_path(field: &str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(field, "is empty"));
    }
    Ok(())
}

impl KafkaConfig {
    /// Cross-field rules of `security_protocol`, `[kafka.tls]` and `[kafka.sasl]`.
    pub(super) fn validate_security(&self, prefix: &str) -> Result<(), ConfigError> {
        let protocol = self.security_protocol;
        if let Some(tls) = &self.tls {
            let f = |name: &str| format!("{prefix}.tls.{name}");
            if !protocol.uses_tls() {
                return Err(invalid(
                    format!("{prefix}.tls"),
                    format!(
                        "is set, but security_protocol = \"{}\" does not use TLS (use \"ssl\" or \"sasl_ssl\")",
                        protocol.as_str()
                    ),
                ));
            }
            for (name, path) in [
                ("ca_file", &tls.ca_file),
                ("cert_file", &tls.cert_file),
                ("key_file", &tls.key_file),
            ] {
                if let Some(p) = path {
                    check_path(&f(name), p)?;
                }
            }
            match (&tls.cert_file, &tls.key_file) {
                (Some(_), None) => {
                    return Err(invalid(f("key_file"), "missing: cert_file needs key_file"))
                }
                (None, Some(_)) => {
                    return Err(invalid(f("cert_file"), "missing: key_file needs cert_file"))
                }
                _ => {}
            }
        }
        match (&self.sasl, protocol.uses_sasl()) {
            (None, true) => Err(invalid(
                format!("{prefix}.sasl"),
                format!(
                    "missing: security_protocol = \"{}\" needs a [{prefix}.sasl] table (mechanism, username, password or password_file)",
                    protocol.as_str()
                ),
            )),
            (Some(_), false) => Err(invalid(
                format!("{prefix}.sasl"),
                format!(
                    "is set, but security_protocol = \"{}\" does not use SASL (use \"sasl_ssl\")",
                    protocol.as_str()
                ),
            )),
            (None, false) => Ok(()),
            (Some(sasl), true) => {
                let f = |name: &str| format!("{prefix}.sasl.{name}");
                if sasl.username.trim().is_empty() {
                    return Err(invalid(f("username"), "is empty"));
                }
                match (&sasl.password, &sasl.password_file) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            f("password_file"),
                            "give either password or password_file, not both",
                        ))
                    }
                    (None, None) => {
                        return Err(invalid(
                            f("password"),
                            "missing: set password or password_file",
                        ))
                    }
                    (Some(p), None) if p.expose().is_empty() => {
                        return Err(invalid(f("password"), "is empty"))
                    }
                    (None, Some(p)) => check_path(&f("password_file"), p)?,
                    _ => {}
                }
                // PLAIN sends the password itself; only inside TLS.
                if sasl.mechanism == SaslMechanism::Plain && !protocol.uses_tls() {
                    return Err(invalid(
                        f("mechanism"),
                        "\"plain\" would send the password in clear text: use security_protocol = \"sasl_ssl\"",
                    ));
                }
                Ok(())
            }
        }
    }

    /// The librdkafka properties for this connection: `bootstrap.servers`,
    /// the security settings, then `librdkafka_options` (applied last, so
    /// they can override anything). Agent and collector both build their
    /// clients from this.
    ///
    /// `read_file` is how the binary reads files: the `password_file`
    /// (its content, minus one trailing newline, is the password) and the
    /// certificate files (read only to fail early with the field's name
    /// rather than in the middle of librdkafka's setup).
    pub fn client_properties(
        &self,
        read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<ClientProperties, ConfigError> {
        let prefix = "kafka";
        let mut p = ClientProperties::default();
        p.push("bootstrap.servers", self.bootstrap_servers.clone());
        p.push("security.protocol", self.security_protocol.as_str());
        let readable = |field: &str, path: &Path| -> Result<Vec<u8>, ConfigError> {
            read_file(path).map_err(|e| {
                invalid(
                    format!("{prefix}.{field}"),
                    format!("{}: cannot read: {e}", path.display()),
                )
            })
        };
        if self.security_protocol.uses_tls() {
            let tls = self.tls.clone().unwrap_or_default();
            if let Some(ca) = &tls.ca_file {
                let pem = readable("tls.ca_file", ca)?;
                if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                    return Err(invalid(
                        format!("{prefix}.tls.ca_file"),
                        format!("{}: no PEM certificate in it", ca.display()),
                    ));
                }
                p.push("ssl.ca.location", ca.display().to_string());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                readable("tls.cert_file", cert)?;
                readable("tls.key_file", key)?;
                p.push("ssl.certificate.location", cert.display().to_string());
                p.push("ssl.key.location", key.display().to_string());
            }
            p.push(
                "ssl.endpoint.identification.algorithm",
                if tls.verify_hostname { "https" } else { "none" },
            );
        }
        if let (Some(sasl), true) = (&self.sasl, self.security_protocol.uses_sasl()) {
            p.push("sasl.mechanism", sasl.mechanism.librdkafka_name());
            p.push("sasl.username", sasl.username.clone());
            let password = match (&sasl.password, &sasl.password_file) {
                (Some(pw), _) => pw.expose().to_string(),
                (None, Some(file)) => {
                    let bytes = readable("sasl.password_file", file)?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        invalid(
                            format!("{prefix}.sasl.password_file"),
                            format!("{}: not UTF-8", file.display()),
                        )
                    })?;
                    let pw = text
                        .strip_suffix("\r\n")
                        .or_else(|| text.strip_suffix('\n'))
                        .unwrap_or(&text);
                    if pw.is_empty() {
                        return Err(invalid(
                            format!("{prefix}.sasl.password_file"),
                            format!("{}: is empty", file.display()),
                        ));
                    }
                    pw.to_string()
                }
                (None, None) => {
                    return Err(invalid(
                        format!("{prefix}.sasl.password"),
                        "missing: set password or password_file",
                    ))
                }
            };
            p.push("sasl.password", password);
        }
        for (k, v) in &self.librdkafka_options {
            p.push(k, v.clone());
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AgentConfig, CollectorConfig};
    use super::*;
    use std::collections::HashMap;

    const BASE: &str = r#"
data_dir = "/var/lib/camfleet"
[[camera]]
id = "depot/gate"
source = { kind = "test_pattern", width = 1280, height = 720 }
[kafka]
bootstrap_servers = "broker:9096"
"#;

    fn agent(kafka: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_toml(&format!("{BASE}{kafka}"))
    }

    fn err(kafka: &str) -> String {
        agent(kafka).unwrap_err().to_string()
    }

    const SECURE: &str = r#"
security_protocol = "sasl_ssl"
[kafka.tls]
ca_file = "/etc/camfleet/ca.pem"
[kafka.sasl]
username = "camfleet-agent"
password_file = "/etc/camfleet/kafka.password"
"#;

    fn files() -> HashMap<PathBuf, Vec<u8>> {
        HashMap::from([
            (
                PathBuf::from("/etc/camfleet/ca.pem"),
                b"-----BEGIN CERTIFICATE-----\nMII...\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            (
                PathBuf::from("/etc/camfleet/kafka.password"),
                b"s3cret-from-file\n".to_vec(),
            ),
        ])
    }

    fn props(c: &KafkaConfig) -> Result<ClientProperties, ConfigError> {
        let files = files();
        c.client_properties(&|p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        })
    }

    #[test]
    fn plaintext_is_the_default_and_maps_to_plaintext() {
        let c = agent("").unwrap();
        assert_eq!(
            c.kafka.connection.security_protocol,
            SecurityProtocol::Plaintext
        );
        let p = props(&c.kafka.connection).unwrap();
        assert_eq!(p.get("security.protocol"), Some("plaintext"));
        assert_eq!(p.get("sasl.password"), None);
        assert_eq!(p.get("ssl.ca.location"), None);
    }

    #[test]
    fn sasl_ssl_maps_to_librdkafka_properties_with_the_password_from_the_file() {
        let c = agent(SECURE).unwrap();
        let k = &c.kafka.connection;
        assert_eq!(
            k.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha512
        );
        assert!(k.tls.as_ref().unwrap().verify_hostname);
        let p = props(k).unwrap();
        assert_eq!(p.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(p.get("ssl.ca.location"), Some("/etc/camfleet/ca.pem"));
        assert_eq!(
            p.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert_eq!(p.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(p.get("sasl.username"), Some("camfleet-agent"));
        // One trailing newline (echo > file) is not part of the password.
        assert_eq!(p.get("sasl.password"), Some("s3cret-from-file"));
    }

    #[test]
    fn librdkafka_options_come_last_and_override() {
        let c = agent(&format!(
            "librdkafka_options = {{ \"ssl.endpoint.identification.algorithm\" = \"none\" }}\n{SECURE}"
        ))
        .unwrap();
        let p = props(&c.kafka.connection).unwrap();
        assert_eq!(p.get("ssl.endpoint.identification.algorithm"), Some("none"));
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let inline = SECURE.replace(
            "password_file = \"/etc/camfleet/kafka.password\"",
            "password = \"inline-hunter2\"",
        );
        let inline = format!(
            "librdkafka_options = {{ \"sasl.oauthbearer.client.secret\" = \"opt-hunter3\", \"socket.timeout.ms\" = \"5000\" }}\n{inline}"
        );
        let c = agent(&inline).unwrap();
        let debug = format!("{c:?} {:#?}", c.kafka);
        assert!(!debug.contains("inline-hunter2"), "{debug}");
        assert!(!debug.contains("opt-hunter3"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(
            debug.contains("5000"),
            "non-secret options stay visible: {debug}"
        );
        let p = props(&c.kafka.connection).unwrap();
        assert_eq!(p.get("sasl.password"), Some("inline-hunter2"));
        let printed = format!("{p:?} {:?}", p.redacted());
        assert!(!printed.contains("hunter"), "{printed}");
        assert_eq!(Secret::new("x").to_string(), "<redacted>");
    }

    #[test]
    fn security_errors_name_the_field() {
        let both = SECURE.replace("password_file =", "password = \"a\"\npassword_file =");
        assert!(
            err(&both).contains("kafka.sasl.password_file: give either password or password_file"),
            "{}",
            err(&both)
        );
        let neither = SECURE.replace("password_file = \"/etc/camfleet/kafka.password\"", "");
        assert!(
            err(&neither).contains("kafka.sasl.password: missing"),
            "{}",
            err(&neither)
        );
        let no_sasl = "security_protocol = \"sasl_ssl\"\n";
        assert!(
            err(no_sasl).contains("kafka.sasl: missing"),
            "{}",
            err(no_sasl)
        );
        let sasl_without_sasl_protocol = SECURE.replace("sasl_ssl", "ssl");
        assert!(
            err(&sasl_without_sasl_protocol)
                .contains("kafka.sasl: is set, but security_protocol = \"ssl\""),
            "{}",
            err(&sasl_without_sasl_protocol)
        );
        let tls_on_plaintext = "[kafka.tls]\nca_file = \"/ca.pem\"\n";
        assert!(err(tls_on_plaintext)
            .contains("kafka.tls: is set, but security_protocol = \"plaintext\""));
        let cert_no_key = SECURE.replace("[kafka.sasl]", "cert_file = \"/c.pem\"\n[kafka.sasl]");
        assert!(
            err(&cert_no_key).contains("kafka.tls.key_file: missing"),
            "{}",
            err(&cert_no_key)
        );
        let typo = SECURE.replace("username", "user_name");
        assert!(err(&typo).contains("user_name"), "{}", err(&typo));
        let mech = SECURE.replace("[kafka.sasl]", "[kafka.sasl]\nmechanism = \"gssapi\"");
        assert!(err(&mech).contains("gssapi"), "{}", err(&mech));
        let plain_in_clear = "security_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nmechanism = \"plain\"\nusername = \"u\"\npassword = \"p\"\n";
        assert!(
            err(plain_in_clear).contains("kafka.sasl.mechanism"),
            "{}",
            err(plain_in_clear)
        );
        let empty_user = SECURE.replace("\"camfleet-agent\"", "\" \"");
        assert!(err(&empty_user).contains("kafka.sasl.username: is empty"));
    }

    #[test]
    fn unreadable_files_are_errors_naming_the_field() {
        let c = agent(&SECURE.replace("/etc/camfleet/ca.pem", "/nowhere/ca.pem")).unwrap();
        let e = props(&c.kafka.connection).unwrap_err().to_string();
        assert!(
            e.starts_with("kafka.tls.ca_file: /nowhere/ca.pem: cannot read"),
            "{e}"
        );
        let c = agent(&SECURE.replace("kafka.password", "missing.password")).unwrap();
        let e = props(&c.kafka.connection).unwrap_err().to_string();
        assert!(
            e.starts_with("kafka.sasl.password_file: /etc/camfleet/missing.password"),
            "{e}"
        );
        let c =
            agent(&SECURE.replace("/etc/camfleet/ca.pem", "/etc/camfleet/kafka.password")).unwrap();
        let e = props(&c.kafka.connection).unwrap_err().to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn the_collector_takes_the_same_settings() {
        let c = CollectorConfig::from_toml(&format!(
            "[archive]\nroot = \"/srv/archive\"\n[kafka]\nbootstrap_servers = \"broker:9096\"\n{}",
            SECURE.replace("camfleet-agent", "camfleet-collector")
        ))
        .unwrap();
        let p = props(&c.kafka.connection).unwrap();
        assert_eq!(p.get("sasl.username"), Some("camfleet-collector"));
    }

    /// The commented-out security blocks of the shipped examples parse once
    /// uncommented.
    #[test]
    fn the_commented_security_examples_are_valid() {
        fn uncomment(text: &str) -> String {
            text.lines()
                .map(|l| {
                    let keys = [
                        "security_protocol",
                        "[kafka.",
                        "ca_file",
                        "username",
                        "password_file",
                        "mechanism",
                    ];
                    match l.strip_prefix("# ") {
                        Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => rest,
                        _ => l,
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        let agent = uncomment(include_str!("../../../agent/agent.example.toml"));
        let c = AgentConfig::from_toml(&agent).unwrap();
        assert_eq!(
            c.kafka.connection.security_protocol,
            SecurityProtocol::SaslSsl
        );
        assert!(c.kafka.connection.sasl.unwrap().password_file.is_some());
        let collector = uncomment(include_str!("../../../collector/collector.example.toml"));
        let c = CollectorConfig::from_toml(&collector).unwrap();
        assert_eq!(
            c.kafka.connection.security_protocol,
            SecurityProtocol::SaslSsl
        );
    }

    #[test]
    fn mechanisms_have_their_documented_names() {
        for (name, librdkafka) in [
            ("scram_sha_512", "SCRAM-SHA-512"),
            ("scram_sha_256", "SCRAM-SHA-256"),
            ("plain", "PLAIN"),
        ] {
            let c = agent(&SECURE.replace(
                "[kafka.sasl]",
                &format!("[kafka.sasl]\nmechanism = \"{name}\""),
            ))
            .unwrap();
            let p = props(&c.kafka.connection).unwrap();
            assert_eq!(p.get("sasl.mechanism"), Some(librdkafka));
        }
    }
}
