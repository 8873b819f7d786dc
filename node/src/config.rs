//! `cluster.toml`, loaded once into one validated struct. A bad file is a clear error naming
//! the key; the rest of the code never reads raw TOML.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use api::Limits;
use raft_store::rules::{IdempotencySettings, Rules, UniqSet};
use raft_store::NodeId;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{path}: no [[node]] with id = {id}")]
    UnknownNode { path: PathBuf, id: NodeId },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub limits: Limits,
    /// Uniq sets, proposed as the first rules entry by `cluster init`.
    #[serde(default)]
    pub uniq: Vec<UniqSet>,
    /// The idempotency window, replicated with the rules.
    #[serde(default)]
    pub idempotency: IdempotencySettings,
    /// The sign-up flow.
    #[serde(default)]
    pub users: api::users::config::UsersConfig,
    /// The users read model (`uniqlog query`).
    #[serde(default)]
    pub query: consumers::query::QueryConfig,
    /// The activation email sender (`uniqlog mail`).
    #[serde(default)]
    pub mail: consumers::mail::MailConfig,
    /// `uniqlog mail-sink`.
    #[serde(default)]
    pub mail_sink: MailSinkConfig,
    /// Access control.
    #[serde(default)]
    pub auth: AuthConfig,
    /// The file this was loaded from (for messages); empty for built-in configs.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Client API, and peer RPC unless `peer_addr` is set.
    pub addr: String,
    /// Optional separate listener for peer RPC, so client load never delays heartbeats.
    #[serde(default)]
    pub peer_addr: Option<String>,
    /// Relative paths are relative to the config file.
    pub data_dir: PathBuf,
}

impl NodeConfig {
    /// The address peers use to reach this node.
    pub fn peer_addr(&self) -> &str {
        self.peer_addr.as_deref().unwrap_or(&self.addr)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared by every node; required on peer RPC when set. Prefer `cluster_secret_file` or
    /// the `UNIQLOG_CLUSTER_SECRET` environment variable to keeping it in this file.
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (trailing whitespace ignored). Relative to this file.
    pub cluster_secret_file: Option<PathBuf>,
    /// Client tokens, stored as SHA-256 digests, each with a role. Auth is on exactly when
    /// this list is not empty.
    #[serde(rename = "token")]
    pub tokens: Vec<api::auth::TokenConfig>,
    /// Open sign-up, activation and the activation email to anonymous callers.
    pub anonymous_signup: bool,
    /// The token consumers and the CLI present (or `UNIQLOG_TOKEN`, or `--token`).
    pub client_token: Option<String>,
    /// Run a node on a non-loopback address without client tokens or a cluster secret. Off by
    /// default: such a node refuses to start, because anyone who reaches it could read,
    /// write, or join the cluster.
    pub insecure: bool,
    /// This node's PEM certificate chain (leaf first; relative to this file). When set, the
    /// node serves the client API and peer RPC over TLS only. Needs `tls_key` and `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A PEM CA bundle: when set, nodes (to their peers), consumers and the CLI connect over
    /// TLS and trust only these CAs. Or the `UNIQLOG_TLS_CA` environment variable.
    pub tls_ca: Option<PathBuf>,
}

/// The environment variable with the token consumers and the CLI present.
pub const CLIENT_TOKEN_ENV: &str = "UNIQLOG_TOKEN";

/// The environment variable that overrides `[auth] cluster_secret`.
pub const CLUSTER_SECRET_ENV: &str = "UNIQLOG_CLUSTER_SECRET";

/// The environment variable that overrides `[auth] tls_ca`.
pub const TLS_CA_ENV: &str = "UNIQLOG_TLS_CA";

/// `[mail_sink]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MailSinkConfig {
    pub listen: String,
}

impl Default for MailSinkConfig {
    fn default() -> Self {
        MailSinkConfig {
            listen: "127.0.0.1:7201".into(),
        }
    }
}

/// `[raft]`: timing and snapshot policy.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot after this many entries since the last one. A snapshot holds the
    /// whole event store, so this is large: followers normally catch up from the log.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches up
    /// without a snapshot transfer.
    pub entries_kept_after_snapshot: u64,
    /// Size of one snapshot chunk sent to a peer.
    pub snapshot_chunk_bytes: u64,
    /// Deadline of one snapshot-chunk RPC.
    pub install_snapshot_timeout_ms: u64,
    /// Most entries in one append-entries RPC.
    pub append_entries_max: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_timeout_ms_min: 500,
            election_timeout_ms_max: 1000,
            snapshot_every_entries: 100_000,
            entries_kept_after_snapshot: 10_000,
            snapshot_chunk_bytes: 1024 * 1024,
            install_snapshot_timeout_ms: 10_000,
            append_entries_max: 1000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parse `text`; relative data dirs resolve against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.path = path.to_path_buf();
        for n in &mut config.nodes {
            if n.data_dir.is_relative() {
                n.data_dir = base.join(&n.data_dir);
            }
        }
        if config.query.data_dir.is_relative() {
            config.query.data_dir = base.join(&config.query.data_dir);
        }
        config.resolve_secrets(base)?;
        config.resolve_tls_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(self.invalid("node", "at least one [[node]] is required"));
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !ids.insert(n.id) {
                return Err(self.invalid(
                    format!("node[{i}].id"),
                    format!("id {} is used twice", n.id),
                ));
            }
            for (key, addr) in [("addr", Some(&n.addr)), ("peer_addr", n.peer_addr.as_ref())] {
                let Some(addr) = addr else { continue };
                if addr.parse::<SocketAddr>().is_err() {
                    return Err(self.invalid(
                        format!("node[{i}].{key}"),
                        format!("{addr:?} is not an IP:port address"),
                    ));
                }
                if !addrs.insert(addr.clone()) {
                    return Err(
                        self.invalid(format!("node[{i}].{key}"), format!("{addr} is used twice"))
                    );
                }
            }
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(self.invalid("raft.heartbeat_ms", "must be positive"));
        }
        if r.election_timeout_ms_min <= r.heartbeat_ms {
            return Err(self.invalid(
                "raft.election_timeout_ms_min",
                "must be greater than heartbeat_ms",
            ));
        }
        if r.election_timeout_ms_max <= r.election_timeout_ms_min {
            return Err(self.invalid(
                "raft.election_timeout_ms_max",
                "must be greater than election_timeout_ms_min",
            ));
        }
        if r.snapshot_every_entries == 0 {
            return Err(self.invalid("raft.snapshot_every_entries", "must be positive"));
        }
        if r.snapshot_chunk_bytes == 0 || r.append_entries_max == 0 {
            return Err(self.invalid(
                "raft",
                "snapshot_chunk_bytes and append_entries_max must be positive",
            ));
        }
        self.rules()
            .validate()
            .map_err(|m| self.invalid("uniq", m))?;
        self.users
            .validate()
            .map_err(|m| self.invalid("users", m))?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.body_bytes_max", l.body_bytes_max as u64),
            (
                "limits.events_per_append_max",
                l.events_per_append_max as u64,
            ),
            ("limits.event_bytes_max", l.event_bytes_max as u64),
            ("limits.name_bytes_max", l.name_bytes_max as u64),
            ("limits.read_events_max", l.read_events_max as u64),
            ("limits.request_timeout_ms", l.request_timeout_ms),
            ("limits.header_read_timeout_ms", l.header_read_timeout_ms),
            ("limits.write_queue_max", l.write_queue_max as u64),
            ("limits.connections_max", l.connections_max as u64),
        ] {
            if v == 0 {
                return Err(self.invalid(key, "must be positive"));
            }
        }
        self.validate_tls()
    }

    /// `tls_cert` and `tls_key` come together, and with a CA to verify peers against.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        match (&a.tls_cert, &a.tls_key) {
            (Some(_), None) => Err(self.invalid(
                "auth.tls_key",
                "tls_cert is set without tls_key (the PEM private key of the certificate)",
            )),
            (None, Some(_)) => Err(self.invalid(
                "auth.tls_cert",
                "tls_key is set without tls_cert (the PEM certificate of the key)",
            )),
            (Some(_), Some(_)) if a.tls_ca.is_none() => Err(self.invalid(
                "auth.tls_ca",
                "tls_cert is set without tls_ca: nodes verify their peers against this PEM CA \
                 bundle (and consumers and the CLI verify the nodes)",
            )),
            _ => Ok(()),
        }
    }

    /// `UNIQLOG_TLS_CA` overrides `tls_ca`; relative TLS paths resolve against `base`.
    fn resolve_tls_paths(&mut self, base: &Path) {
        if let Some(ca) = std::env::var_os(TLS_CA_ENV) {
            self.auth.tls_ca = Some(PathBuf::from(ca));
        }
        let a = &mut self.auth;
        for path in [&mut a.tls_cert, &mut a.tls_key, &mut a.tls_ca]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The node's TLS server side: `None` without `tls_cert`. Reads the PEM files, so a
    /// missing or bad file is an error naming its key at start. A node given a CA but no
    /// certificate refuses: its peers and clients would speak TLS to a plain listener.
    pub fn server_tls(&self) -> Result<Option<api::ServerTls>, ConfigError> {
        let a = &self.auth;
        match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => api::ServerTls::from_pem_files(cert, key)
                .map(Some)
                .map_err(|e| self.tls_invalid(e)),
            _ if a.tls_ca.is_some() => Err(self.invalid(
                "auth.tls_cert",
                format!(
                    "tls_ca (or {TLS_CA_ENV}) is set but this node has no tls_cert and \
                     tls_key: its peers and clients would speak TLS to a plain listener"
                ),
            )),
            _ => Ok(None),
        }
    }

    /// The TLS client side of nodes (to peers), consumers and the CLI: `None` without `tls_ca`.
    pub fn client_tls(&self) -> Result<Option<api::ClientTls>, ConfigError> {
        match &self.auth.tls_ca {
            Some(ca) => api::ClientTls::from_ca_file(ca)
                .map(Some)
                .map_err(|e| self.tls_invalid(e)),
            None => Ok(None),
        }
    }

    fn tls_invalid(&self, e: api::TlsError) -> ConfigError {
        let key = match e.file {
            api::TlsFile::Cert => "auth.tls_cert",
            api::TlsFile::Key => "auth.tls_key",
            api::TlsFile::Ca => "auth.tls_ca",
        };
        self.invalid(key, e.message)
    }

    /// Read the cluster secret from the environment or its file into `auth.cluster_secret`.
    fn resolve_secrets(&mut self, base: &Path) -> Result<(), ConfigError> {
        if let Ok(secret) = std::env::var(CLUSTER_SECRET_ENV) {
            self.auth.cluster_secret = Some(secret);
        } else if let Some(file) = &self.auth.cluster_secret_file {
            let path = base.join(file);
            let secret = std::fs::read_to_string(&path).map_err(|e| {
                self.invalid(
                    "auth.cluster_secret_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            self.auth.cluster_secret = Some(secret.trim_end().to_string());
        }
        if let Ok(token) = std::env::var(CLIENT_TOKEN_ENV) {
            self.auth.client_token = Some(token);
        }
        let mut tokens = std::mem::take(&mut self.auth.tokens);
        for (i, t) in tokens.iter_mut().enumerate() {
            self.resolve_token(i, t, base)?;
        }
        self.auth.tokens = tokens;
        if self.auth.cluster_secret.as_deref() == Some("") {
            return Err(self.invalid("auth.cluster_secret", "must not be empty"));
        }
        Ok(())
    }

    /// Turn a token read from the environment or a file into its digest; check the digest.
    fn resolve_token(
        &self,
        i: usize,
        t: &mut api::auth::TokenConfig,
        base: &Path,
    ) -> Result<(), ConfigError> {
        let key = format!("auth.token[{i}]");
        let plain = match (&t.token_env, &t.token_file) {
            (Some(var), None) => Some(std::env::var(var).map_err(|_| {
                self.invalid(
                    format!("{key}.token_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?),
            (None, Some(file)) => {
                let path = base.join(file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    self.invalid(
                        format!("{key}.token_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim_end().to_string())
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(self.invalid(key, "give token_env or token_file, not both"))
            }
        };
        match plain {
            Some(_) if !t.sha256.is_empty() => {
                return Err(self.invalid(key, "give sha256 or where to read the token, not both"))
            }
            Some(p) if p.is_empty() => return Err(self.invalid(key, "the token is empty")),
            Some(p) => t.sha256 = api::auth::token_digest(&p),
            None => {}
        }
        if t.sha256.len() != 64 || !t.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.invalid(
                format!("{key}.sha256"),
                "must be 64 hex digits (sha256sum of the token)",
            ));
        }
        Ok(())
    }

    /// Refuse to expose node `id` on a non-loopback address without client tokens and a
    /// cluster secret, unless `[auth] insecure = true` says that is meant.
    pub fn check_exposure(&self, id: NodeId) -> Result<(), ConfigError> {
        let node = self.node(id)?;
        if self.auth.insecure {
            return Ok(());
        }
        let exposed: Vec<&str> = [Some(node.addr.as_str()), node.peer_addr.as_deref()]
            .into_iter()
            .flatten()
            .filter(|a| !is_loopback(a))
            .collect();
        if exposed.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = [
            (self.auth.tokens.is_empty(), "no [[auth.token]]"),
            (self.auth.cluster_secret.is_none(), "no cluster secret"),
        ]
        .into_iter()
        .filter_map(|(missing, what)| missing.then_some(what))
        .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.invalid(
            "auth",
            format!(
                "node {id} listens on {}, which is not loopback, with {}: anyone who reaches it \
                 could read, write or join the cluster. Set tokens and a cluster secret, or \
                 `insecure = true` under [auth] to run it open on purpose",
                exposed.join(" and "),
                missing.join(" and ")
            ),
        ))
    }

    /// The node's client-route auth.
    pub fn client_auth(&self) -> api::auth::Auth {
        let stream_key = match &self.auth.cluster_secret {
            Some(secret) => format!("stream-token:{secret}").into_bytes(),
            None => {
                let mut key = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut raft_store::runtime::rng(), &mut key);
                key
            }
        };
        api::auth::Auth {
            tokens: self.auth.tokens.clone(),
            anonymous_signup: self.auth.anonymous_signup,
            stream_key,
        }
    }

    /// The rules this config asks for.
    pub fn rules(&self) -> Rules {
        Rules {
            uniq: self.uniq.clone(),
            idempotency: self.idempotency,
        }
    }

    pub fn node(&self, id: NodeId) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ConfigError::UnknownNode {
                path: self.path.clone(),
                id,
            })
    }

    /// The openraft configuration derived from `[raft]`.
    pub fn openraft(&self) -> openraft::Config {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "uniqlog".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_ms_min,
            election_timeout_max: r.election_timeout_ms_max,
            install_snapshot_timeout: r.install_snapshot_timeout_ms,
            max_payload_entries: r.append_entries_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries),
            max_in_snapshot_log_to_keep: r.entries_kept_after_snapshot,
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            ..Default::default()
        }
    }
}

/// Whether a listen address (validated as `IP:port`) binds only to the loopback interface.
fn is_loopback(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("/base"))
    }

    const THREE: &str = r#"
        [[node]]
        id = 1
        addr = "127.0.0.1:7001"
        data_dir = "data/node1"
        [[node]]
        id = 2
        addr = "127.0.0.1:7002"
        data_dir = "/abs/node2"
    "#;

    #[test]
    fn an_exposed_node_needs_tokens_and_a_secret_or_insecure() {
        let exposed = |id: u64, addr: &str, peer: &str, auth: &str| {
            let peer = if peer.is_empty() {
                String::new()
            } else {
                format!("peer_addr = \"{peer}\"\n")
            };
            let text =
                format!("[[node]]\nid = {id}\naddr = \"{addr}\"\n{peer}data_dir = \"d\"\n{auth}");
            parse(&text).unwrap().check_exposure(id)
        };
        let token = format!(
            "[[auth.token]]\nname = \"t\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        );
        let secret = "cluster_secret = \"s\"\n";
        // Loopback is fine without auth.
        for addr in ["127.0.0.1:7001", "[::1]:7001", "127.8.0.1:1"] {
            exposed(1, addr, "", "").unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
        // Anything else needs both, or insecure.
        let e = exposed(1, "0.0.0.0:7001", "", "").unwrap_err().to_string();
        assert!(e.contains("0.0.0.0:7001"), "{e}");
        assert!(e.contains("no [[auth.token]] and no cluster secret"), "{e}");
        assert!(e.contains("insecure = true"), "{e}");
        let e = exposed(1, "10.1.2.3:7001", "", &format!("[auth]\n{secret}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("with no [[auth.token]]:"), "{e}");
        let e = exposed(1, "[2001:db8::1]:7001", "", &format!("[auth]\n{token}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("with no cluster secret:"), "{e}");
        // A loopback client API does not hide an exposed peer listener.
        let e = exposed(1, "127.0.0.1:7001", "10.1.2.3:7101", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.1.2.3:7101") && !e.contains("127.0.0.1"),
            "{e}"
        );
        exposed(1, "10.1.2.3:7001", "", &format!("[auth]\n{secret}{token}")).unwrap();
        exposed(1, "0.0.0.0:7001", "", "[auth]\ninsecure = true\n").unwrap();
    }

    #[test]
    fn relative_data_dirs_resolve_against_the_file() {
        let c = parse(THREE).unwrap();
        assert_eq!(c.nodes[0].data_dir, Path::new("/base/data/node1"));
        assert_eq!(c.nodes[1].data_dir, Path::new("/abs/node2"));
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&format!("{THREE}\n[raft]\nheartbeat_ms = 900\n")).unwrap_err();
        assert!(
            e.to_string().contains("raft.election_timeout_ms_min"),
            "{e}"
        );
        let e = parse(&format!("{THREE}\n[limits]\nbody_bytes_maxx = 1\n")).unwrap_err();
        assert!(e.to_string().contains("body_bytes_maxx"), "{e}");
        let e = parse(&THREE.replace("127.0.0.1:7002", "127.0.0.1:7001")).unwrap_err();
        assert!(e.to_string().contains("node[1].addr"), "{e}");
        let e = parse(&THREE.replace("id = 2", "id = 1")).unwrap_err();
        assert!(e.to_string().contains("node[1].id"), "{e}");
        let e = parse(&THREE.replace("127.0.0.1:7002", "localhost")).unwrap_err();
        assert!(e.to_string().contains("not an IP:port"), "{e}");
    }

    #[test]
    fn the_shipped_cluster_toml_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.node(2).unwrap().addr, "127.0.0.1:7002");
        assert_eq!(c.uniq[0].name, "user_email");
        assert_eq!(c.uniq[0].rules.len(), 3);
    }

    #[test]
    fn tokens_come_as_digests_or_from_a_file_and_bad_ones_are_named() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("t.txt"), "s3cret\n").unwrap();
        let text = format!(
            "{THREE}\n[[auth.token]]\nname = \"a\"\nrole = \"admin\"\ntoken_file = \"t.txt\"\n\
             [[auth.token]]\nname = \"b\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            api::auth::token_digest("other")
        );
        let c = Config::parse(&text, Path::new("test.toml"), dir.path()).unwrap();
        assert_eq!(c.auth.tokens[0].sha256, api::auth::token_digest("s3cret"));
        let e = parse(&format!(
            "{THREE}\n[[auth.token]]\nname = \"x\"\nrole = \"read\"\nsha256 = \"abc\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("auth.token[0].sha256"), "{e}");
        let e = parse(&format!("{THREE}\n[[auth.token]]\nname = \"x\"\nrole = \"read\"\ntoken_env = \"UNIQLOG_TEST_UNSET_VAR\"\n")).unwrap_err();
        assert!(e.to_string().contains("UNIQLOG_TEST_UNSET_VAR"), "{e}");
    }

    #[test]
    fn tls_files_come_in_pairs_with_a_ca_and_bad_ones_are_named_at_start() {
        let tls = |lines: &str| parse(&format!("{THREE}\n[auth]\n{lines}"));
        let e = tls("tls_cert = \"n.pem\"\ntls_ca = \"ca.pem\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("auth.tls_key: tls_cert is set without"),
            "{e}"
        );
        let e = tls("tls_key = \"n.key\"").unwrap_err();
        assert!(
            e.to_string()
                .contains("auth.tls_cert: tls_key is set without"),
            "{e}"
        );
        let e = tls("tls_cert = \"n.pem\"\ntls_key = \"n.key\"").unwrap_err();
        assert!(e.to_string().contains("auth.tls_ca"), "{e}");
        let c = tls("tls_cert = \"n.pem\"\ntls_key = \"/k/n.key\"\ntls_ca = \"ca.pem\"").unwrap();
        assert_eq!(c.auth.tls_cert.as_deref(), Some(Path::new("/base/n.pem")));
        assert_eq!(c.auth.tls_key.as_deref(), Some(Path::new("/k/n.key")));
        // The files are read at start: a missing one is named by its key.
        let e = c.client_tls().err().unwrap().to_string();
        assert!(e.contains("auth.tls_ca: cannot read /base/ca.pem"), "{e}");
        let e = c.server_tls().err().unwrap().to_string();
        assert!(e.contains("auth.tls_cert: cannot read /base/n.pem"), "{e}");
        // A CA without a certificate is enough for a client, not for a node.
        let c = tls("tls_ca = \"ca.pem\"").unwrap();
        let e = c.server_tls().err().unwrap().to_string();
        assert!(
            e.contains("auth.tls_cert") && e.contains("plain listener"),
            "{e}"
        );
        assert!(parse(THREE).unwrap().server_tls().unwrap().is_none());
    }

    #[test]
    fn a_bad_uniq_rule_is_named() {
        let bad = format!(
            "{THREE}\n[[uniq]]\nname = \"e\"\ntopic = \"users\"\n[[uniq.rule]]\nevent = \"X\"\nop = \"update\"\nkey = \"/a\"\n"
        );
        let e = parse(&bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("uniq[0] (\"e\").rule[0]: op = \"update\" needs old_key"),
            "{e}"
        );
        let e = parse(&format!(
            "{THREE}\n[[uniq]]\nname = \"e\"\ntopic = \"users\"\nnormalize = \"upper\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("upper"), "{e}");
    }
}
