//! `uniqlog uniq get | history`: who holds a key of a uniq set, and who held it.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use uniqlog_node::Config;

use super::cluster::any_node;

#[derive(Subcommand)]
pub enum UniqCommand {
    /// Print the owner of KEY in SET (JSON); fails when the key is free. The key is
    /// normalized as the set says, as writes do.
    Get {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The uniq set (`user_email`).
        set: String,
        /// The key, as written (it is normalized as the set says).
        key: String,
    },
    /// Print every owner KEY of SET has had, oldest first (JSON).
    History {
        /// The cluster's config file.
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// The uniq set (`user_email`).
        set: String,
        /// The key, as written (it is normalized as the set says).
        key: String,
    },
}

pub async fn run(command: UniqCommand) -> Result<()> {
    let answer = match command {
        UniqCommand::Get { config, set, key } => {
            let config = Config::load(&config)?;
            let owner = any_node(&config, |c, a| {
                let (set, key) = (set.clone(), key.clone());
                async move { Ok(c.api().uniq_owner(&a, &set, &key, c.timeout).await?) }
            })
            .await?;
            serde_json::to_string_pretty(&owner)?
        }
        UniqCommand::History { config, set, key } => {
            let config = Config::load(&config)?;
            let history = any_node(&config, |c, a| {
                let (set, key) = (set.clone(), key.clone());
                async move { Ok(c.api().uniq_history(&a, &set, &key, c.timeout).await?) }
            })
            .await?;
            serde_json::to_string_pretty(&history)?
        }
    };
    println!("{answer}");
    Ok(())
}
