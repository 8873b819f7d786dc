//! `uniqlog backup --to FILE` and `uniqlog restore --from FILE --id N`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use http_body_util::BodyExt;
use raft_store::Node;
use uniqlog_node::Config;

use super::cluster::leader_or_any;
use super::progress::Progress;

#[derive(clap::Args)]
pub struct BackupArgs {
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// Where to write the backup (written beside it first, renamed when complete and checked).
    #[arg(long)]
    to: PathBuf,
    /// Take it from this node (default: the leader, whose state is the newest).
    #[arg(long)]
    node: Option<u64>,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup file (`uniqlog backup --to`).
    #[arg(long)]
    from: PathBuf,
    /// The cluster's config file.
    #[arg(long, default_value = "cluster.toml")]
    config: PathBuf,
    /// The node of the config whose (new, empty) data dir receives the backup.
    #[arg(long)]
    id: u64,
    /// Restore a backup that carries no MAC although this config has a cluster secret (one
    /// taken from a cluster without a secret).
    #[arg(long)]
    allow_unsigned: bool,
}

pub async fn backup(args: BackupArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let (id, addr) = match args.node {
        Some(id) => (id, config.node(id)?.addr.clone()),
        None => leader_or_any(&config).await?,
    };
    let transport = api::HyperTransport::with_tls(config.client_tls()?);
    let backup = api::client::backup(&transport, &addr, config.client_token().as_deref())
        .await
        .with_context(|| format!("asking node {id} at {addr} for a backup"))?;
    let (total, index, expected_crc) = (backup.length, backup.index, backup.crc32c);
    let partial = partial_path(&args.to);
    let secret = config.cluster_secret();
    let kept = receive(
        backup.body,
        (&partial, &args.to),
        secret.as_deref(),
        id,
        index,
        total,
        expected_crc,
    )
    .await;
    if kept.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    kept
}

/// Write the body to `partial` (readable by this user only: a backup holds every event and
/// password hash), check it whole (its MAC too, with the config's cluster secret), and rename
/// it to `to`.
async fn receive(
    body: hyper::body::Incoming,
    (partial, to): (&Path, &Path),
    secret: Option<&str>,
    id: u64,
    index: u64,
    total: u64,
    expected_crc: u32,
) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options
        .open(partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut progress = Progress::new(format!("backup of node {id} at index {index}"), "bytes");
    let (mut received, mut crc) = (0u64, 0u32);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.with_context(|| format!("receiving the backup from node {id}"))?;
        if let Ok(data) = frame.into_data() {
            out.write_all(&data)
                .with_context(|| format!("writing {}", partial.display()))?;
            crc = crc32c::crc32c_append(crc, &data);
            received += data.len() as u64;
            progress.set(received, total);
        }
    }
    if received != total || crc != expected_crc {
        progress.abandon();
        bail!(
            "the backup arrived damaged or cut short ({received} of {total} bytes, CRC-32C \
             {crc:08x}, expected {expected_crc:08x}); nothing was kept: run it again"
        );
    }
    out.sync_all()?;
    drop(out);
    let info = {
        let (partial, secret) = (partial.to_path_buf(), secret.map(str::to_string));
        tokio::task::spawn_blocking(move || {
            let key = match &secret {
                Some(s) => raft_store::BackupKey::Secret {
                    key: s.as_bytes(),
                    allow_unsigned: false,
                },
                None => raft_store::BackupKey::Unchecked,
            };
            raft_store::verify_backup(&partial, key)
        })
        .await??
    };
    std::fs::rename(partial, to)
        .with_context(|| format!("renaming {} to {}", partial.display(), to.display()))?;
    progress.finish(&format!(
        "{} bytes, log index {} (term {}), CRC-32C {crc:08x}, written to {}",
        received,
        info.log_index,
        info.term,
        to.display()
    ));
    Ok(())
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

pub async fn restore(args: RestoreArgs) -> Result<()> {
    let config = Config::load(&args.config)?;
    let me = config.node(args.id)?.clone();
    let node = Node::new(me.peer_addr());
    let (data_dir, from, id) = (me.data_dir.clone(), args.from.clone(), args.id);
    let (secret, allow_unsigned) = (config.cluster_secret(), args.allow_unsigned);
    let info = tokio::task::spawn_blocking(move || {
        let key = match &secret {
            Some(s) => raft_store::BackupKey::Secret {
                key: s.as_bytes(),
                allow_unsigned,
            },
            None => raft_store::BackupKey::Unchecked,
        };
        raft_store::restore(&data_dir, &from, key, id, node)
    })
    .await?
    .with_context(|| format!("restoring {} as node {id}", args.from.display()))?;
    if config.auth.cluster_secret.is_none() && info.signed {
        println!(
            "note: the backup is signed, but this config has no cluster secret to check it with"
        );
    }
    println!(
        "restored log index {} (term {}) of a cluster of voters {:?} into {} as node {id}, \
         the only member of a new cluster",
        info.log_index,
        info.term,
        info.voters,
        me.data_dir.display()
    );
    println!("next:");
    println!(
        "  uniqlog node --config {} --id {id}",
        args.config.display()
    );
    for other in config.nodes.iter().filter(|n| n.id != id) {
        println!(
            "  (start node {} on an empty data dir) uniqlog cluster add-learner --config {} --id {} && uniqlog cluster promote --config {} --id {}",
            other.id,
            args.config.display(),
            other.id,
            args.config.display(),
            other.id
        );
    }
    Ok(())
}
