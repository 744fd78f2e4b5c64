//! The configuration file: one TOML document, every key optional.
//!
//! Unknown keys and bad values stop start-up with a message that names the key, because a
//! silently ignored typo in a server config is a security bug waiting to happen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub domain: String,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub storage: Storage,
    pub registration: Registration,
    pub limits: Limits,
    pub cluster: Cluster,
    pub archive: Archive,
    pub muc: Muc,
    pub api: Api,
    pub s2s: S2s,
    pub upload: Upload,
    /// External components (XEP-0114) by domain.
    pub components: std::collections::BTreeMap<String, Component>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// STARTTLS listener; TLS is required before authentication.
    pub c2s: SocketAddr,
    /// Direct TLS listener (XEP-0368).
    pub c2s_tls: SocketAddr,
    pub s2s: SocketAddr,
    /// Server-to-server over TLS from the first byte (XEP-0368, ALPN `xmpp-server`); off when
    /// absent.
    pub s2s_tls: Option<SocketAddr>,
    pub http: SocketAddr,
    /// The HTTP routes over TLS with the server's certificate (wss, https); off when absent.
    pub https: Option<SocketAddr>,
    /// External components (XEP-0114).
    pub component: SocketAddr,
}

/// Federation with other XMPP servers (RFC 6120 server-to-server streams).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S2s {
    /// Refuse peers that do not offer or accept STARTTLS.
    pub require_tls: bool,
    /// Authenticate peers by Server Dialback (XEP-0220) when their certificate cannot be
    /// verified.
    pub dialback: bool,
    /// Extra CA files (PEM) to verify peer certificates with, besides the system's.
    pub trust: Vec<PathBuf>,
    /// Peer domain → address, used instead of DNS (closed networks, tests).
    pub routes: std::collections::BTreeMap<String, String>,
    /// An outgoing connection with no traffic for this long is closed.
    pub idle_seconds: u64,
    /// The secret dialback keys are made with (XEP-0185). Empty: a random one per start, or in
    /// a cluster one shared through Redis, so that any node can verify another node's key.
    pub dialback_secret: String,
}

impl Default for S2s {
    fn default() -> Self {
        S2s {
            require_tls: true,
            dialback: true,
            trust: Vec::new(),
            routes: Default::default(),
            idle_seconds: 600,
            dialback_secret: String::new(),
        }
    }
}

/// HTTP File Upload (XEP-0363): files are stored under `<data_dir>/uploads` and served by the
/// HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upload {
    /// The upload service's domain; empty means `upload.<domain>`.
    pub domain: String,
    /// The largest file a user may upload.
    pub max_file_bytes: u64,
    /// What one user's files may take in all.
    pub quota_bytes: u64,
    /// The URL clients reach the HTTP listener at (as a TLS proxy in front of it publishes
    /// it); empty means `https://<domain>:<port of listen.https>` when that is set, else
    /// `http://<listen.http>`.
    pub public_url: String,
}

impl Default for Upload {
    fn default() -> Self {
        Upload {
            domain: String::new(),
            max_file_bytes: 10 * 1024 * 1024,
            quota_bytes: 100 * 1024 * 1024,
            public_url: String::new(),
        }
    }
}

/// One external component (XEP-0114): it serves its domain through `listen.component`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Component {
    /// The shared secret of the handshake.
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain; empty means a self-signed certificate generated into data_dir.
    pub cert: String,
    pub key: String,
    /// Whether a client that offers the hybrid post-quantum key exchange (X25519MLKEM768) gets
    /// it; off, every client gets a classical one (X25519 or a NIST curve).
    pub post_quantum: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: String::new(),
            key: String::new(),
            post_quantum: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Empty means `sqlite://<data_dir>/rookery.db`.
    pub url: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Registration {
    /// XEP-0077 in-band registration.
    pub open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Muc {
    /// The group chat service's domain; empty means `conference.<domain>`.
    pub domain: String,
    /// Messages per second each occupant may send to a room; 0 means no limit.
    pub message_rate: f64,
    /// How many messages an occupant may send at once after a quiet spell.
    pub message_burst: f64,
}

impl Default for Muc {
    fn default() -> Self {
        Muc {
            domain: String::new(),
            message_rate: 5.0,
            message_burst: 20.0,
        }
    }
}

/// The REST bridge (`/api/v1` on `listen.http`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// The bearer key that creating and listing applications needs. Empty: listing is off and
    /// only loopback clients may create applications.
    pub admin_key: String,
}

/// Which messages are archived (XEP-0313) for users who have not set their own preference
/// (XEP-0441): every message, only those with roster contacts, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveDefault {
    #[default]
    Always,
    Roster,
    Never,
}

impl ArchiveDefault {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveDefault::Always => "always",
            ArchiveDefault::Roster => "roster",
            ArchiveDefault::Never => "never",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Archive {
    pub default: ArchiveDefault,
    /// How long archived messages are kept: a number with `d`, `h`, `m` or `s` (`"90d"`);
    /// empty keeps them forever.
    pub expire_after: String,
}

impl Archive {
    /// The retention period; None for "forever". Validated at load.
    pub fn retention(&self) -> Option<std::time::Duration> {
        parse_duration(&self.expire_after).ok().flatten()
    }
}

/// Splits `host:port` (a name, an IPv4 address, or `[v6]:port`).
/// A static route (`s2s.routes`): `host:port`, or `tls://host:port` for a peer that expects TLS
/// from the first byte (XEP-0368). Returns the host, the port and whether TLS comes first.
pub fn parse_route(text: &str) -> Option<(String, u16, bool)> {
    match text.strip_prefix("tls://") {
        Some(rest) => parse_host_port(rest).map(|(host, port)| (host, port, true)),
        None => parse_host_port(text).map(|(host, port)| (host, port, false)),
    }
}

pub fn parse_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// `"90d"`, `"12h"`, `"30m"`, `"45s"`; empty means none.
fn parse_duration(text: &str) -> Result<Option<std::time::Duration>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (number, unit) = text.split_at(text.len() - 1);
    let seconds_per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "`{text}`: expected a number followed by d, h, m or s"
            ));
        }
    };
    let n: u64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: expected a number followed by d, h, m or s"))?;
    if n == 0 {
        return Err("must be greater than 0 (leave it empty to keep messages forever)".into());
    }
    Ok(Some(std::time::Duration::from_secs(
        n.saturating_mul(seconds_per),
    )))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Empty means the in-process session table (a single node).
    pub redis_url: String,
    /// This node's name in the cluster; empty means the hostname plus a random suffix.
    pub node: String,
    /// A node that has not renewed its lease for this long is declared dead.
    pub lease_seconds: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            redis_url: String::new(),
            node: String::new(),
            lease_seconds: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_stanza_bytes: usize,
    pub max_body_chars: usize,
    /// A client silent this long is pinged (XEP-0199) and closed if it stays silent.
    pub idle_seconds: u64,
    /// How long a stream-managed session whose connection dropped waits to be resumed
    /// (XEP-0198) before what it holds goes to offline storage.
    pub resume_seconds: u64,
    /// How fast a client connection is read, in bytes per second (0: no limit). A client
    /// that sends faster is not read for a while, so TCP slows it down.
    pub c2s_bytes_per_second: u64,
    /// The same for incoming server-to-server connections.
    pub s2s_bytes_per_second: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            data_dir: PathBuf::from("./data"),
            listen: Listen::default(),
            tls: Tls::default(),
            storage: Storage::default(),
            registration: Registration::default(),
            limits: Limits::default(),
            cluster: Cluster::default(),
            archive: Archive::default(),
            muc: Muc::default(),
            api: Api::default(),
            s2s: S2s::default(),
            upload: Upload::default(),
            components: Default::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            c2s: ([127, 0, 0, 1], 5222).into(),
            c2s_tls: ([127, 0, 0, 1], 5223).into(),
            s2s: ([127, 0, 0, 1], 5269).into(),
            http: ([127, 0, 0, 1], 5280).into(),
            https: None,
            s2s_tls: None,
            component: ([127, 0, 0, 1], 5347).into(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_bytes: 262_144,
            max_body_chars: 100_000,
            idle_seconds: 180,
            resume_seconds: 300,
            c2s_bytes_per_second: 100_000,
            s2s_bytes_per_second: 500_000,
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text; `toml` names an unknown key with its line and column.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        let domain =
            crate::jid::normalize_domain(&self.domain).map_err(|e| ConfigError::Invalid {
                key: "domain",
                message: e.to_string(),
            })?;
        self.domain = domain;
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return Err(ConfigError::Invalid {
                key: "tls.cert",
                message: "tls.cert and tls.key must be set together".into(),
            });
        }
        if self.limits.max_stanza_bytes < 10_000 {
            return Err(ConfigError::Invalid {
                key: "limits.max_stanza_bytes",
                message: "must be at least 10000 (RFC 6120 §13.12)".into(),
            });
        }
        if self.limits.idle_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.idle_seconds",
                message: "must be greater than 0".into(),
            });
        }
        if !self.muc.message_rate.is_finite() || self.muc.message_rate < 0.0 {
            return Err(ConfigError::Invalid {
                key: "muc.message_rate",
                message: "must be a number of messages per second, 0 for no limit".into(),
            });
        }
        if !self.muc.message_burst.is_finite() || self.muc.message_burst < 1.0 {
            return Err(ConfigError::Invalid {
                key: "muc.message_burst",
                message: "must be at least 1".into(),
            });
        }
        if self.limits.resume_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.resume_seconds",
                message: "must be greater than 0".into(),
            });
        }
        if self.limits.max_body_chars == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_body_chars",
                message: "must be greater than 0".into(),
            });
        }
        if !self.cluster.redis_url.is_empty()
            && !self.cluster.redis_url.starts_with("redis://")
            && !self.cluster.redis_url.starts_with("rediss://")
        {
            return Err(ConfigError::Invalid {
                key: "cluster.redis_url",
                message: "expected redis://… or rediss://…".into(),
            });
        }
        if !self.muc.domain.is_empty() {
            let muc = crate::jid::normalize_domain(&self.muc.domain).map_err(|e| {
                ConfigError::Invalid {
                    key: "muc.domain",
                    message: e.to_string(),
                }
            })?;
            if muc == self.domain {
                return Err(ConfigError::Invalid {
                    key: "muc.domain",
                    message: "must differ from the server's domain".into(),
                });
            }
            self.muc.domain = muc;
        }
        if let Err(message) = parse_duration(&self.archive.expire_after) {
            return Err(ConfigError::Invalid {
                key: "archive.expire_after",
                message,
            });
        }
        if self.cluster.lease_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_seconds",
                message: "must be greater than 0".into(),
            });
        }
        if self.cluster.node.contains(char::is_whitespace) || self.cluster.node.contains(':') {
            return Err(ConfigError::Invalid {
                key: "cluster.node",
                message: "must not contain spaces or ':'".into(),
            });
        }
        self.validate_federation()?;
        self.validate_upload()?;
        Ok(self)
    }

    fn validate_federation(&mut self) -> Result<(), ConfigError> {
        let mut routes = std::collections::BTreeMap::new();
        for (domain, addr) in std::mem::take(&mut self.s2s.routes) {
            let domain =
                crate::jid::normalize_domain(&domain).map_err(|e| ConfigError::Invalid {
                    key: "s2s.routes",
                    message: format!("`{domain}`: {e}"),
                })?;
            if parse_route(&addr).is_none() {
                return Err(ConfigError::Invalid {
                    key: "s2s.routes",
                    message: format!("`{addr}`: expected host:port or tls://host:port"),
                });
            }
            routes.insert(domain, addr);
        }
        self.s2s.routes = routes;
        if self.s2s.idle_seconds == 0 {
            return Err(ConfigError::Invalid {
                key: "s2s.idle_seconds",
                message: "must be greater than 0".into(),
            });
        }
        let mut components = std::collections::BTreeMap::new();
        for (domain, component) in std::mem::take(&mut self.components) {
            let domain =
                crate::jid::normalize_domain(&domain).map_err(|e| ConfigError::Invalid {
                    key: "components",
                    message: format!("`{domain}`: {e}"),
                })?;
            if domain == self.domain
                || domain == crate::modules::muc::service_domain(self)
                || domain == self.upload_domain()
            {
                return Err(ConfigError::Invalid {
                    key: "components",
                    message: format!("`{domain}` is served by the server itself"),
                });
            }
            if component.secret.is_empty() {
                return Err(ConfigError::Invalid {
                    key: "components.secret",
                    message: format!("`{domain}` needs a secret"),
                });
            }
            components.insert(domain, component);
        }
        self.components = components;
        Ok(())
    }

    fn validate_upload(&mut self) -> Result<(), ConfigError> {
        if !self.upload.domain.is_empty() {
            self.upload.domain =
                crate::jid::normalize_domain(&self.upload.domain).map_err(|e| {
                    ConfigError::Invalid {
                        key: "upload.domain",
                        message: e.to_string(),
                    }
                })?;
        }
        if self.upload.max_file_bytes == 0 || self.upload.quota_bytes < self.upload.max_file_bytes {
            return Err(ConfigError::Invalid {
                key: "upload.max_file_bytes",
                message: "must be greater than 0 and at most upload.quota_bytes".into(),
            });
        }
        let url = self.upload.public_url.trim_end_matches('/');
        if !url.is_empty() && !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(ConfigError::Invalid {
                key: "upload.public_url",
                message: "expected http://… or https://…".into(),
            });
        }
        self.upload.public_url = url.to_owned();
        Ok(())
    }

    /// The upload service's domain (XEP-0363).
    pub fn upload_domain(&self) -> String {
        if self.upload.domain.is_empty() {
            format!("upload.{}", self.domain)
        } else {
            self.upload.domain.clone()
        }
    }

    /// The database URL, with the embedded SQLite default filled in.
    pub fn storage_url(&self) -> String {
        if self.storage.url.is_empty() {
            format!("sqlite://{}/rookery.db", self.data_dir.display())
        } else {
            self.storage.url.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.domain, "localhost");
        assert_eq!(c.listen.c2s.port(), 5222);
        assert_eq!(c.listen.c2s_tls.port(), 5223);
        assert_eq!(c.limits.max_stanza_bytes, 262_144);
        assert_eq!(c.limits.c2s_bytes_per_second, 100_000);
        assert_eq!(c.limits.s2s_bytes_per_second, 500_000);
        assert_eq!(c.storage_url(), "sqlite://./data/rookery.db");
        assert!(!c.registration.open);
    }

    #[test]
    fn post_quantum_key_exchange_is_on_unless_turned_off() {
        assert!(Config::from_toml("").unwrap().tls.post_quantum);
        let c = Config::from_toml("[tls]\npost_quantum = false\n").unwrap();
        assert!(!c.tls.post_quantum);
        let err = Config::from_toml("[tls]\npost_quantum = \"no\"\n").unwrap_err();
        assert!(err.to_string().contains("post_quantum"), "{err}");
    }

    #[test]
    fn read_rates_can_be_lifted_but_not_made_negative() {
        let c = Config::from_toml("[limits]\nc2s_bytes_per_second = 0\n").unwrap();
        assert_eq!(c.limits.c2s_bytes_per_second, 0);
        let err = Config::from_toml("[limits]\ns2s_bytes_per_second = -1\n").unwrap_err();
        assert!(err.to_string().contains("s2s_bytes_per_second"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[listen]\nc2z = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("c2z"), "{err}");
    }

    #[test]
    fn cluster_keys_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert!(c.cluster.redis_url.is_empty());
        assert_eq!(c.cluster.lease_seconds, 10);
        let err = Config::from_toml("[cluster]\nredis_url = \"http://x\"\n").unwrap_err();
        assert!(err.to_string().contains("cluster.redis_url"), "{err}");
        let err = Config::from_toml("[cluster]\nnode = \"a b\"\n").unwrap_err();
        assert!(err.to_string().contains("cluster.node"), "{err}");
        let err = Config::from_toml("[cluster]\nlease_seconds = 0\n").unwrap_err();
        assert!(err.to_string().contains("cluster.lease_seconds"), "{err}");
    }

    #[test]
    fn archive_keys_are_checked() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.archive.default, ArchiveDefault::Always);
        assert_eq!(c.archive.retention(), None);
        let c =
            Config::from_toml("[archive]\ndefault = \"roster\"\nexpire_after = \"2d\"\n").unwrap();
        assert_eq!(c.archive.default, ArchiveDefault::Roster);
        assert_eq!(
            c.archive.retention(),
            Some(std::time::Duration::from_secs(2 * 86_400))
        );
        let err = Config::from_toml("[archive]\nexpire_after = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("archive.expire_after"), "{err}");
        let err = Config::from_toml("[archive]\ndefault = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("default"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let err = Config::from_toml("[limits]\nmax_stanza_bytes = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("max_stanza_bytes"), "{err}");
        let err = Config::from_toml("domain = \"bad domain\"\n").unwrap_err();
        assert!(err.to_string().contains("domain"), "{err}");
    }

    #[test]
    fn muc_limits_are_checked() {
        let c = Config::from_toml("[muc]\nmessage_rate = 0\nmessage_burst = 50\n").unwrap();
        assert_eq!((c.muc.message_rate, c.muc.message_burst), (0.0, 50.0));
        let err = Config::from_toml("[muc]\nmessage_rate = -1\n").unwrap_err();
        assert!(err.to_string().contains("muc.message_rate"), "{err}");
        let err = Config::from_toml("[muc]\nmessage_burst = 0.5\n").unwrap_err();
        assert!(err.to_string().contains("muc.message_burst"), "{err}");
        let c = Config::from_toml("[api]\nadmin_key = \"k\"\n").unwrap();
        assert_eq!(c.api.admin_key, "k");
    }

    #[test]
    fn federation_keys_are_checked() {
        let c = Config::from_toml(
            "[s2s.routes]\n\"Peer.Test\" = \"127.0.0.3:5269\"\n\
             [components.\"gw.localhost\"]\nsecret = \"s\"\n",
        )
        .unwrap();
        assert!(c.s2s.require_tls && c.s2s.dialback);
        assert_eq!(c.s2s.routes["peer.test"], "127.0.0.3:5269");
        assert_eq!(c.components["gw.localhost"].secret, "s");
        assert_eq!(c.listen.component.port(), 5347);
        let err = Config::from_toml("[s2s.routes]\n\"p.test\" = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("s2s.routes"), "{err}");
        let err = Config::from_toml("[components.\"gw.localhost\"]\n").unwrap_err();
        assert!(err.to_string().contains("components.secret"), "{err}");
        let err = Config::from_toml("[components.\"localhost\"]\nsecret = \"s\"\n").unwrap_err();
        assert!(err.to_string().contains("components"), "{err}");
        assert_eq!(
            parse_host_port("[::1]:5269"),
            Some(("::1".to_owned(), 5269))
        );
        assert_eq!(
            parse_route("tls://[::1]:5270"),
            Some(("::1".to_owned(), 5270, true))
        );
        assert_eq!(
            parse_route("127.0.0.3:5269"),
            Some(("127.0.0.3".to_owned(), 5269, false))
        );
        let c = Config::from_toml("[s2s.routes]\n\"p.test\" = \"tls://127.0.0.3:5270\"\n").unwrap();
        assert_eq!(c.s2s.routes["p.test"], "tls://127.0.0.3:5270");
        let err = Config::from_toml("[s2s.routes]\n\"p.test\" = \"tls://nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("tls://host:port"), "{err}");
    }
}
