//! `cluster.toml`, loaded once into one validated struct. A bad file is a clear error naming
//! the key; the rest of the code never reads raw TOML.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use api::Secret;

use crate::limits::Limits;
use raft_store::rules::{IdempotencySettings, Rules, UniqSet};
use raft_store::NodeId;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}{}", read_hint(error))]
    Read {
        path: PathBuf,
        error: std::io::Error,
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

/// What to do about a config file that cannot be read.
fn read_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (run the command in the folder that holds it, or pass --config PATH; \
             `uniqlog dev` needs no config)"
        }
        _ => "",
    }
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

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Client API, and peer RPC unless `peer_addr` is set.
    pub addr: String,
    /// Optional separate listener for peer RPC, so client load never delays heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    /// Relative paths are relative to the config file.
    pub data_dir: PathBuf,
}

impl NodeConfig {
    /// Its `[[node]]` section of a cluster.toml (what the test harnesses write).
    pub fn toml_section(&self) -> String {
        #[derive(serde::Serialize)]
        struct Section<'a> {
            node: [&'a NodeConfig; 1],
        }
        toml::to_string(&Section { node: [self] }).expect("a node section serializes") + "\n"
    }

    /// The address peers use to reach this node.
    pub fn peer_addr(&self) -> &str {
        self.peer_addr.as_deref().unwrap_or(&self.addr)
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared by every node; required on peer RPC when set, and required when tokens are
    /// listed. Prefer `cluster_secret_file` or the `UNIQLOG_CLUSTER_SECRET` environment
    /// variable to keeping it in this file.
    pub cluster_secret: Option<Secret>,
    /// A file holding the cluster secret (trailing whitespace ignored). Relative to this file.
    pub cluster_secret_file: Option<PathBuf>,
    /// Client tokens, stored as SHA-256 digests, each with a role and optionally topics. Auth
    /// is on exactly when this list is not empty; it then needs a cluster secret too, or the
    /// peer routes (which run any forwarded command) would be open to anyone.
    #[serde(rename = "token")]
    pub tokens: Vec<api::auth::TokenConfig>,
    /// Open sign-up, activation and the activation email to anonymous callers.
    pub anonymous_signup: bool,
    /// The token consumers and the CLI present (or `UNIQLOG_TOKEN`, or `--token`).
    pub client_token: Option<Secret>,
    /// A file holding that token (relative to this file; or `UNIQLOG_TOKEN_FILE`): each
    /// process of a deployment reads its own from one shared config.
    pub client_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS, client tokens or a cluster secret. Off
    /// by default: such a node (or query, or mail process) refuses to start, because anyone
    /// who reaches it could read, write or join the cluster, or read the traffic.
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

/// The environment variable that overrides `[auth] client_token_file`.
pub const CLIENT_TOKEN_FILE_ENV: &str = "UNIQLOG_TOKEN_FILE";

/// The environment variable that overrides `[auth] tls_ca`.
pub const TLS_CA_ENV: &str = "UNIQLOG_TLS_CA";

/// The environment variables that override `[auth] tls_cert` and `tls_key`: processes that
/// share one config file each present their own certificate (containers, one unit per node).
pub const TLS_CERT_ENV: &str = "UNIQLOG_TLS_CERT";
pub const TLS_KEY_ENV: &str = "UNIQLOG_TLS_KEY";

/// The environment variable that overrides `[users] activation_secret`.
pub const ACTIVATION_SECRET_ENV: &str = "UNIQLOG_ACTIVATION_SECRET";

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
    /// Entries openraft still replicates from the log behind a snapshot, so a briefly lagging
    /// follower catches up without a snapshot transfer. Older entries are hidden from openraft,
    /// not deleted: the log is the event store (docs/architecture/storage.md).
    pub entries_kept_after_snapshot: u64,
    /// Size of one snapshot chunk sent to a peer.
    pub snapshot_chunk_bytes: u64,
    /// Deadline of one snapshot-chunk RPC.
    pub install_snapshot_timeout_ms: u64,
    /// Most entries in one append-entries RPC.
    pub append_entries_max: u64,
    /// How a new cluster forms: `auto`, nodes started with the same `[[node]]` list
    /// initialize it themselves once every one of them answers pristine (`bootstrap.rs`);
    /// `manual`, only `uniqlog cluster init` does.
    pub bootstrap: Bootstrap,
}

/// `[raft] bootstrap`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Bootstrap {
    #[default]
    Auto,
    Manual,
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
            bootstrap: Bootstrap::Auto,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
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
        if let Some(ca) = &config.mail.webhook_ca {
            config.mail.webhook_ca = Some(base.join(ca));
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
                if !is_host_port(addr) {
                    return Err(self.invalid(
                        format!("node[{i}].{key}"),
                        format!("{addr:?} is not an IP:port or host:port address"),
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
        self.mail.validate().map_err(|m| self.invalid("mail", m))?;
        self.validate_auth()?;
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

    /// Tokens need a cluster secret; token names are unique (stream tokens carry them); topic
    /// scopes are well formed and not on admin tokens.
    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if !a.tokens.is_empty() && a.cluster_secret.is_none() {
            return Err(self.invalid(
                "auth.cluster_secret",
                format!(
                    "[[auth.token]] is set without a cluster secret: the peer routes, which run \
                     any forwarded command and install snapshots, would be open to anyone. Set \
                     cluster_secret, cluster_secret_file or {CLUSTER_SECRET_ENV}"
                ),
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in a.tokens.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(self.invalid(
                    format!("auth.token[{i}].name"),
                    format!("{:?} is used twice", t.name),
                ));
            }
        }
        api::auth::Auth::new(&a.tokens, a.anonymous_signup, Vec::new())
            .map(drop)
            .map_err(|m| self.invalid("auth.token", m))
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

    /// `UNIQLOG_TLS_CA`, `UNIQLOG_TLS_CERT` and `UNIQLOG_TLS_KEY` override their keys;
    /// relative TLS paths resolve against `base`.
    fn resolve_tls_paths(&mut self, base: &Path) {
        for (var, path) in [
            (TLS_CA_ENV, &mut self.auth.tls_ca),
            (TLS_CERT_ENV, &mut self.auth.tls_cert),
            (TLS_KEY_ENV, &mut self.auth.tls_key),
        ] {
            if let Some(value) = std::env::var_os(var) {
                *path = Some(PathBuf::from(value));
            }
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
        self.server_tls_of(None)
    }

    /// [`Config::server_tls`] of node `id`: `{id}` in `tls_cert` and `tls_key` is its id, so
    /// one config (or one environment) names every node's own certificate
    /// (`certs/node{id}.pem`, as `uniqlog certs` names them).
    pub fn node_server_tls(&self, id: NodeId) -> Result<Option<api::ServerTls>, ConfigError> {
        self.server_tls_of(Some(id))
    }

    fn server_tls_of(&self, id: Option<NodeId>) -> Result<Option<api::ServerTls>, ConfigError> {
        let a = &self.auth;
        let of = |path: &PathBuf| match id {
            Some(id) => PathBuf::from(path.to_string_lossy().replace("{id}", &id.to_string())),
            None => path.clone(),
        };
        match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => api::ServerTls::from_pem_files(&of(cert), &of(key))
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
            self.auth.cluster_secret = Some(secret.into());
        } else if let Some(file) = &self.auth.cluster_secret_file {
            let secret = self.read_secret_file("auth.cluster_secret_file", &base.join(file))?;
            self.auth.cluster_secret = Some(secret);
        }
        if let Ok(secret) = std::env::var(ACTIVATION_SECRET_ENV) {
            self.users.activation_secret = secret.into();
        } else if let Some(file) = &self.users.activation_secret_file {
            let secret = self.read_secret_file("users.activation_secret_file", &base.join(file))?;
            self.users.activation_secret = secret;
        }
        if let Ok(token) = std::env::var(CLIENT_TOKEN_ENV) {
            self.auth.client_token = Some(token.into());
        } else if let Some(file) = std::env::var_os(CLIENT_TOKEN_FILE_ENV)
            .map(PathBuf::from)
            .or_else(|| self.auth.client_token_file.as_ref().map(|f| base.join(f)))
        {
            let token = self.read_secret_file("auth.client_token_file", &file)?;
            self.auth.client_token = Some(token);
        }
        let mut tokens = std::mem::take(&mut self.auth.tokens);
        for (i, t) in tokens.iter_mut().enumerate() {
            self.resolve_token(i, t, base)?;
        }
        self.auth.tokens = tokens;
        if self
            .auth
            .cluster_secret
            .as_ref()
            .is_some_and(Secret::is_empty)
        {
            return Err(self.invalid("auth.cluster_secret", "must not be empty"));
        }
        Ok(())
    }

    /// A secret kept in a file of its own (trailing whitespace ignored); the error names `key`.
    fn read_secret_file(&self, key: &str, path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| self.invalid(key, format!("cannot read {}: {e}", path.display())))?;
        let secret = text.trim_end();
        if secret.is_empty() {
            return Err(self.invalid(key, format!("{} is empty", path.display())));
        }
        Ok(secret.into())
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

    /// Refuse to expose node `id` on a non-loopback address without TLS, client tokens and a
    /// cluster secret, unless `[auth] insecure = true` says that is meant; and, whatever
    /// `insecure` says, with the shipped or a short activation secret (anyone who knows it
    /// can activate any account without its mailbox).
    pub fn check_exposure(&self, id: NodeId) -> Result<(), ConfigError> {
        let node = self.node(id)?;
        let addrs = [Some(node.addr.as_str()), node.peer_addr.as_deref()];
        let exposed: Vec<&str> = addrs.into_iter().flatten().collect();
        self.check_listener(&format!("node {id}"), &exposed)?;
        if exposed.iter().any(|a| !is_loopback(a)) {
            if let Some(why) = self.users.weak_activation_secret() {
                return Err(self.invalid(
                    "users.activation_secret",
                    format!(
                        "node {id} listens on {}, which is not loopback, and the activation \
                         secret {why}: anyone could activate accounts without their mailbox. \
                         Set a random one of at least {} bytes (activation_secret_file or \
                         {ACTIVATION_SECRET_ENV}), the same on every node and the mail consumer",
                        exposed.join(" and "),
                        api::users::config::ACTIVATION_SECRET_BYTES_MIN
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The exposure check of any listener of the binary (`what` names it): loopback, or TLS
    /// with client tokens and a cluster secret, or `insecure = true`.
    pub fn check_listener(&self, what: &str, addrs: &[&str]) -> Result<(), ConfigError> {
        if self.auth.insecure {
            return Ok(());
        }
        let exposed: Vec<&str> = addrs.iter().copied().filter(|a| !is_loopback(a)).collect();
        if exposed.is_empty() {
            return Ok(());
        }
        let missing: Vec<&str> = [
            (
                self.auth.tls_cert.is_none(),
                "no TLS certificate (tls_cert)",
            ),
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
                "{what} listens on {}, which is not loopback, with {}: anyone who reaches it \
                 could read, write or join the cluster, or read its traffic. Set tls_cert, \
                 tls_key and tls_ca, tokens and a cluster secret (`uniqlog certs` makes them), \
                 or `insecure = true` under [auth] to run it open on purpose",
                exposed.join(" and "),
                missing.join(", ")
            ),
        ))
    }

    /// The node's client-route auth (its tokens were checked by [`Config::validate`]).
    pub fn client_auth(&self) -> api::auth::Auth {
        let stream_key = match &self.auth.cluster_secret {
            Some(secret) => api::auth::Auth::stream_key_from_secret(secret.expose()),
            None => {
                let mut key = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut api::runtime::rng(), &mut key);
                key
            }
        };
        api::auth::Auth::new(&self.auth.tokens, self.auth.anonymous_signup, stream_key)
            .expect("tokens validated with the config")
    }

    /// The cluster secret as the peer side uses it.
    pub fn cluster_secret(&self) -> Option<String> {
        self.auth
            .cluster_secret
            .as_ref()
            .map(|s| s.expose().to_string())
    }

    /// The token consumers and the CLI present.
    pub fn client_token(&self) -> Option<String> {
        self.auth
            .client_token
            .as_ref()
            .map(|s| s.expose().to_string())
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

    /// The `[[node]]` this machine is, by its hostname: the one whose address's (or peer
    /// address's) host is `hostname`, or begins with it and a dot (`uniqlog-0` for
    /// `uniqlog-0.uniqlog:7001`, as a StatefulSet's pods are named). Exactly one must match.
    pub fn node_for_host(&self, hostname: &str) -> Result<NodeId, ConfigError> {
        let host = |addr: &str| {
            addr.rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        };
        let is_this = |addr: &str| {
            host(addr).is_some_and(|h| h == hostname || h.starts_with(&format!("{hostname}.")))
        };
        let found: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| is_this(&n.addr) || n.peer_addr.as_deref().is_some_and(is_this))
            .map(|n| n.id)
            .collect();
        match found[..] {
            [id] => Ok(id),
            _ => Err(self.invalid(
                "node",
                format!(
                    "no --id (nor UNIQLOG_NODE_ID), and {} [[node]] address names this machine's \
                     hostname {hostname:?}: pass --id",
                    if found.is_empty() {
                        "no".to_string()
                    } else {
                        format!("more than one ({found:?})")
                    }
                ),
            )),
        }
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
            // Elections start in `crate::prevote`, after a PreVote: openraft 0.9 has none.
            enable_elect: false,
            ..Default::default()
        }
    }
}

/// `IP:port`, `[IPv6]:port`, or `host:port` with a DNS name (a container's or a pod's, which
/// the node binds by resolving it and its peers reach by that name).
fn is_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok()
        && !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Whether a listen address binds only to the loopback interface (a host name never counts:
/// what it resolves to may change).
pub fn is_loopback(addr: &str) -> bool {
    addr.parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), Path::new("/base"))
    }

    /// `uniqlog node` without `--id` finds itself by hostname, as a StatefulSet's pods and
    /// compose's services are named, and refuses to guess.
    #[test]
    fn a_node_without_an_id_is_the_one_its_hostname_names() {
        let config = parse(
            "[[node]]\nid = 1\naddr = \"uniqlog-0.uniqlog:7001\"\ndata_dir = \"a\"\n\
             [[node]]\nid = 2\naddr = \"uniqlog-1.uniqlog:7001\"\ndata_dir = \"b\"\n\
             [[node]]\nid = 3\naddr = \"10.0.0.3:7001\"\npeer_addr = \"node3:7002\"\n\
             data_dir = \"c\"\n",
        )
        .unwrap();
        assert_eq!(config.node_for_host("uniqlog-1").unwrap(), 2);
        assert_eq!(config.node_for_host("uniqlog-0.uniqlog").unwrap(), 1);
        assert_eq!(config.node_for_host("node3").unwrap(), 3);
        assert_eq!(config.node_for_host("10.0.0.3").unwrap(), 3);
        let e = config.node_for_host("uniqlog").unwrap_err().to_string();
        assert!(
            e.contains("no [[node]] address") && e.contains("--id"),
            "{e}"
        );
        assert!(config.node_for_host("uniqlog-").is_err());
    }

    /// What the harnesses write is what the config reads.
    #[test]
    fn a_node_section_reads_back_as_that_node() {
        let nodes = [
            NodeConfig {
                id: 3,
                addr: "10.0.0.3:7001".into(),
                peer_addr: None,
                data_dir: "/abs/node3".into(),
            },
            NodeConfig {
                id: 4,
                addr: "127.0.0.1:7004".into(),
                peer_addr: Some("127.0.0.1:8004".into()),
                data_dir: "/abs/node4".into(),
            },
        ];
        let text: String = nodes.iter().map(NodeConfig::toml_section).collect();
        assert_eq!(parse(&text).unwrap().nodes, nodes, "{text}");
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
    fn an_exposed_node_needs_tls_tokens_and_a_secret_or_insecure() {
        let exposed = |id: u64, addr: &str, peer: &str, auth: &str| {
            let peer = if peer.is_empty() {
                String::new()
            } else {
                format!("peer_addr = \"{peer}\"\n")
            };
            let text =
                format!("[[node]]\nid = {id}\naddr = \"{addr}\"\n{peer}data_dir = \"d\"\n{auth}");
            parse(&text)?.check_exposure(id)
        };
        let token = format!(
            "[[auth.token]]\nname = \"t\"\nrole = \"read\"\nsha256 = \"{}\"\n",
            "0".repeat(64)
        );
        let secret = "cluster_secret = \"s\"\n";
        let tls = "tls_cert = \"n.pem\"\ntls_key = \"n.key\"\ntls_ca = \"ca.pem\"\n";
        // Loopback is fine without auth.
        for addr in ["127.0.0.1:7001", "[::1]:7001", "127.8.0.1:1"] {
            exposed(1, addr, "", "").unwrap_or_else(|e| panic!("{addr}: {e}"));
        }
        // Anything else needs all three, or insecure.
        let e = exposed(1, "0.0.0.0:7001", "", "").unwrap_err().to_string();
        assert!(e.contains("0.0.0.0:7001"), "{e}");
        assert!(
            e.contains("no TLS certificate (tls_cert), no [[auth.token]], no cluster secret"),
            "{e}"
        );
        assert!(e.contains("insecure = true"), "{e}");
        let e = exposed(1, "10.1.2.3:7001", "", &format!("[auth]\n{secret}{tls}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("with no [[auth.token]]:"), "{e}");
        // Tokens without a secret are refused on loopback too: the peer routes would be open.
        let e = exposed(1, "127.0.0.1:7001", "", &format!("[auth]\n{token}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("auth.cluster_secret: [[auth.token]] is set without a cluster secret"),
            "{e}"
        );
        // Auth without TLS is not enough on a network.
        let e = exposed(
            1,
            "[2001:db8::1]:7001",
            "",
            &format!("[auth]\n{secret}{token}"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("with no TLS certificate (tls_cert):"), "{e}");
        // A loopback client API does not hide an exposed peer listener.
        let e = exposed(1, "127.0.0.1:7001", "10.1.2.3:7101", "")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.1.2.3:7101") && !e.contains("127.0.0.1"),
            "{e}"
        );
        exposed(
            1,
            "10.1.2.3:7001",
            "",
            &format!("[auth]\n{secret}{tls}{token}"),
        )
        .unwrap();
        exposed(1, "0.0.0.0:7001", "", "[auth]\ninsecure = true\n").unwrap();
    }

    #[test]
    fn an_exposed_node_refuses_the_shipped_or_a_short_activation_secret_even_if_insecure() {
        let node = |addr: &str, secret: &str| {
            let text = format!(
                "[[node]]\nid = 1\naddr = \"{addr}\"\ndata_dir = \"d\"\n\
                 [auth]\ninsecure = true\n[users]\nactivation_secret = \"{secret}\"\n"
            );
            parse(&text).unwrap().check_exposure(1)
        };
        let shipped = api::users::config::SHIPPED_ACTIVATION_SECRET;
        let e = node("10.0.0.1:7001", shipped).unwrap_err().to_string();
        assert!(
            e.contains("users.activation_secret") && e.contains("shipped in cluster.toml"),
            "{e}"
        );
        let e = node("10.0.0.1:7001", "short").unwrap_err().to_string();
        assert!(e.contains("is 5 bytes long; it must be at least 32"), "{e}");
        node("10.0.0.1:7001", &"r".repeat(32)).unwrap();
        // On loopback the shipped one still runs the examples.
        node("127.0.0.1:7001", shipped).unwrap();
    }

    #[test]
    fn the_activation_secret_comes_from_a_file_or_the_environment_and_never_shows_in_debug() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::write(dir.path().join("act.secret"), "from-a-file\n").unwrap();
        let text = format!("{THREE}\n[users]\nactivation_secret_file = \"act.secret\"\n");
        let c = Config::parse(&text, Path::new("test.toml"), dir.path()).unwrap();
        assert_eq!(c.users.activation_secret.expose(), "from-a-file");
        let e = Config::parse(
            &format!("{THREE}\n[users]\nactivation_secret_file = \"missing\"\n"),
            Path::new("test.toml"),
            dir.path(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("users.activation_secret_file"),
            "{e}"
        );
        // Debug of the whole config shows none of its secrets.
        let text = format!(
            "{THREE}\n[users]\nactivation_secret = \"act-SECRET-1\"\n[auth]\n\
             cluster_secret = \"cluster-SECRET-2\"\nclient_token = \"token-SECRET-3\"\n\
             [mail]\nwebhook_authorization = \"Bearer hook-SECRET-4\"\n\
             smtp_password = \"smtp-SECRET-5\"\n"
        );
        let c = parse(&text).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
        assert!(debug.contains("Secret(redacted)"), "{debug}");
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
        assert!(e.to_string().contains("not an IP:port or host:port"), "{e}");
        for bad in [
            "node_1:7002",
            "-node:7002",
            "node:70000",
            ":7002",
            "a..b:7002",
        ] {
            let e = parse(&THREE.replace("127.0.0.1:7002", bad)).unwrap_err();
            assert!(e.to_string().contains("node[1].addr"), "{bad}: {e}");
        }
        parse(&THREE.replace("127.0.0.1:7002", "node2.uniqlog:7002")).unwrap();
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
            "{THREE}\n[auth]\ncluster_secret = \"c\"\n\
             [[auth.token]]\nname = \"a\"\nrole = \"admin\"\ntoken_file = \"t.txt\"\n\
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
        // Names are unique; topics are patterns, and not for admin tokens.
        let token = |name: &str, role: &str, topics: &str| {
            format!(
                "[[auth.token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"\n{topics}",
                "0".repeat(64)
            )
        };
        let with = |tokens: String| {
            parse(&format!(
                "{THREE}\n[auth]\ncluster_secret = \"c\"\n{tokens}"
            ))
        };
        let e = with(token("a", "read", "") + &token("a", "write", "")).unwrap_err();
        assert!(e.to_string().contains("auth.token[1].name"), "{e}");
        let e = with(token("a", "admin", "topics = [\"x\"]\n")).unwrap_err();
        assert!(e.to_string().contains("admin token has every topic"), "{e}");
        let e = with(token("a", "write", "topics = [\"a/b\"]\n")).unwrap_err();
        assert!(e.to_string().contains("\"a/b\" is not a topic name"), "{e}");
        let c = with(token("a", "write", "topics = [\"orders.*\", \"users\"]\n")).unwrap();
        assert_eq!(
            c.auth.tokens[0].topics,
            Some(vec!["orders.*".to_string(), "users".to_string()])
        );
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
