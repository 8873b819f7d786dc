//! `uniqlog certs --config cluster.toml --out DIR`: the TLS and auth material of a cluster in
//! one command instead of an openssl recipe: a CA; a certificate per node and for the query
//! and mail processes, named after the hosts of their addresses in the config (plus
//! `localhost` and 127.0.0.1, for health checks and tools on the same machine); a cluster
//! secret, an activation secret, and three client tokens (`admin`, `query` that may read
//! `users`, `mail`, which needs admin). Every secret and key is written 0600, in a directory
//! made 0700.
//!
//! What is already in DIR is kept, and new certificates are signed by the CA found there: run
//! it again after adding a `[[node]]` and only that node's files appear. Nothing is printed
//! that is secret; `auth.toml` there holds the `[auth]` lines that name the files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::Deserialize;

use super::run::write_private;

#[derive(clap::Args)]
pub struct CertsArgs {
    /// The cluster's config: the hosts of its nodes' and consumers' addresses become the
    /// certificates' names. Only `[[node]]`, `[query]` and `[mail]` are read, so the config
    /// may already name the files this command makes.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Where the files go (made 0700 if absent). Files already there are kept.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How long the certificates the command makes are valid (the CA: ten times as long).
    #[arg(long, default_value_t = 825)]
    days: i64,
    /// One more name (DNS name or IP) of every certificate made: a load balancer's or a
    /// Service's in front of the nodes, the query API's when it listens on 0.0.0.0.
    #[arg(long = "san", value_name = "NAME")]
    sans: Vec<String>,
}

/// The part of a config that names hosts. Lenient on purpose: the full config may point at
/// secret files that do not exist until this command has run.
#[derive(Deserialize)]
struct Names {
    #[serde(rename = "node", default)]
    nodes: Vec<NodeNames>,
    #[serde(default)]
    query: Listen,
    #[serde(default)]
    mail: Listen,
}

#[derive(Deserialize)]
struct NodeNames {
    id: u64,
    addr: String,
    peer_addr: Option<String>,
}

#[derive(Deserialize, Default)]
struct Listen {
    listen: Option<String>,
}

/// Client tokens: name, role, topics.
const TOKENS: [(&str, &str, Option<&str>); 3] = [
    ("admin", "admin", None),
    ("query", "read", Some("users")),
    ("mail", "admin", None),
];

pub fn run(args: CertsArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let names: Names =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    if names.nodes.is_empty() {
        bail!("{} lists no [[node]]", args.config.display());
    }
    if args.days < 1 {
        bail!("--days must be at least 1");
    }
    make_dir(&args.out)?;
    let mut out = Out {
        dir: args.out.clone(),
        made: Vec::new(),
    };
    let ca = out.ca(args.days * 10)?;
    for node in &names.nodes {
        let hosts = [Some(&node.addr), node.peer_addr.as_ref()];
        out.leaf(
            &ca,
            &format!("node{}", node.id),
            hosts,
            &args.sans,
            args.days,
        )?;
    }
    for (name, listen) in [("query", &names.query), ("mail", &names.mail)] {
        out.leaf(
            &ca,
            name,
            [listen.listen.as_ref(), None],
            &args.sans,
            args.days,
        )?;
    }
    out.secret("cluster.secret")?;
    out.secret("activation.secret")?;
    for (name, _, _) in TOKENS {
        out.secret(&format!("{name}.token"))?;
    }
    out.auth_toml()?;
    if out.made.is_empty() {
        println!("{}: everything was there already", args.out.display());
    } else {
        println!("in {}: {}", args.out.display(), out.made.join(", "));
    }
    Ok(())
}

fn make_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// 32 random bytes from the OS, in hex.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The names a certificate for `addrs` ("host:port") answers to.
fn names_of<'a>(addrs: impl IntoIterator<Item = Option<&'a String>>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for addr in addrs.into_iter().flatten() {
        let Some(host) = host_of(addr) else { continue };
        // A wildcard listen address names no host.
        if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            continue;
        }
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> Option<String> {
    let (host, _port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| host.to_string())
}

struct Out {
    dir: PathBuf,
    made: Vec<String>,
}

impl Out {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn has(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        write_private(&self.path(name), bytes)?;
        self.made.push(name.to_string());
        Ok(())
    }

    /// The CA in the directory, or a new one.
    fn ca(&mut self, days: i64) -> Result<Issuer<'static, KeyPair>> {
        let (cert, key) = ("ca.pem", "ca.key");
        match (self.has(cert), self.has(key)) {
            (true, true) => {
                let read = |name: &str| {
                    std::fs::read_to_string(self.path(name))
                        .with_context(|| format!("reading {}", self.path(name).display()))
                };
                // The issuer of a certificate is the CA's name and key: the same params
                // (validity aside) over the kept key sign as the CA that made ca.pem did.
                let pair = KeyPair::from_pem(&read(key)?).context("reading ca.key")?;
                Ok(Issuer::new(ca_params(days)?, pair))
            }
            (false, false) => {
                let params = ca_params(days)?;
                let pair = KeyPair::generate()?;
                let pem = params.self_signed(&pair)?.pem();
                self.write(key, pair.serialize_pem().as_bytes())?;
                self.write(cert, pem.as_bytes())?;
                Ok(Issuer::new(params, pair))
            }
            _ => bail!(
                "{} holds one of ca.pem and ca.key without the other: restore the missing one, \
                 or move both away to make a new CA (every certificate then changes)",
                self.dir.display()
            ),
        }
    }

    /// `name.pem` and `name.key`, signed by `ca`, for the hosts of `addrs`, unless there.
    fn leaf<'a>(
        &mut self,
        ca: &Issuer<'static, KeyPair>,
        name: &str,
        addrs: impl IntoIterator<Item = Option<&'a String>>,
        sans: &[String],
        days: i64,
    ) -> Result<()> {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        if self.has(&cert) && self.has(&key) {
            return Ok(());
        }
        let mut names = names_of(addrs);
        for san in sans {
            if !names.contains(san) {
                names.push(san.clone());
            }
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("uniqlog {name}"));
        // Nodes are servers to clients and peers, and clients of their peers.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        valid_for(&mut params, days);
        let pair = KeyPair::generate()?;
        let pem = params.signed_by(&pair, ca)?.pem();
        // The key first: a certificate without its key would be kept, and useless.
        let _ = std::fs::remove_file(self.path(&key));
        let _ = std::fs::remove_file(self.path(&cert));
        self.write(&key, pair.serialize_pem().as_bytes())?;
        self.write(&cert, pem.as_bytes())
    }

    fn secret(&mut self, name: &str) -> Result<()> {
        if self.has(name) {
            return Ok(());
        }
        self.write(name, random_hex().as_bytes())
    }

    /// The `[auth]` lines that use these files, for the operator to copy (paths as written
    /// here: absolute if `--out` was).
    fn auth_toml(&mut self) -> Result<()> {
        let at = |name: &str| self.path(name).display().to_string();
        let mut text = format!(
            "# Made by `uniqlog certs`: the [auth] of a cluster with TLS and tokens on. Each\n\
             # node presents its own certificate ({{id}} is its id); the query and mail processes\n\
             # set UNIQLOG_TLS_CERT and UNIQLOG_TLS_KEY to query.* and mail.*.\n\
             [auth]\ncluster_secret_file = {:?}\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n\
             # The token this process presents: admin.token for the CLI, query.token, mail.token\n\
             # (or UNIQLOG_TOKEN_FILE per process).\nclient_token_file = {:?}\n",
            at("cluster.secret"),
            at("ca.pem"),
            at("node{id}.pem"),
            at("node{id}.key"),
            at("admin.token"),
        );
        for (name, role, topics) in TOKENS {
            text.push_str(&format!(
                "\n[[auth.token]]\nname = {name:?}\nrole = {role:?}\ntoken_file = {:?}\n",
                at(&format!("{name}.token"))
            ));
            if let Some(topic) = topics {
                text.push_str(&format!("topics = [{topic:?}]\n"));
            }
        }
        text.push_str(&format!(
            "\n# And under [users]:\n# activation_secret_file = {:?}\n",
            at("activation.secret")
        ));
        let name = "auth.toml";
        if self.has(name) {
            std::fs::remove_file(self.path(name))?;
        } else {
            self.made.push(name.to_string());
        }
        write_private(&self.path(name), text.as_bytes())
    }
}

fn ca_params(days: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "uniqlog cluster CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    valid_for(&mut params, days);
    Ok(params)
}

fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // A day back: clocks of a cluster's machines differ.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_hosts_of_the_addresses() {
        let addrs = [
            "node1.example.com:7001".to_string(),
            "[fd00::1]:7002".to_string(),
            "0.0.0.0:7101".to_string(),
            "127.0.0.1:7003".to_string(),
        ];
        assert_eq!(
            names_of(addrs.iter().map(Some)),
            ["localhost", "127.0.0.1", "node1.example.com", "fd00::1"]
        );
        assert_eq!(host_of("no-port"), None);
    }
}
