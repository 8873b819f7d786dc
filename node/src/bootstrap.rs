//! Self-bootstrap (`[raft] bootstrap = "auto"`, the default): nodes started with the same
//! node list form the cluster on their own, as etcd's `initial-cluster-state = new` does.
//!
//! The rule is openraft's (docs, cluster formation): calling `Raft::initialize` on several
//! nodes with an identical membership is safe (the initial entry is the same on each, log id
//! `(0, 0)`); with different memberships it splits the brain. So a node initializes only when,
//! in one survey, it and every other node of its config are pristine (no log, no vote) and
//! list exactly the same members and addresses. Hence:
//! - one initial membership, however many nodes initialize at once;
//! - a node with data never initializes (openraft refuses), nor a pristine one whose peers
//!   hold a log: a node wiped and restarted, a removed node started again, a new node
//!   waiting for `cluster add-learner`, a node beside a restored one;
//! - a peer that does not answer holds the bootstrap back (it may hold a log), so a cluster
//!   whose node is down at its very first start waits for it, or for `uniqlog cluster init`.
//!
//! Then the config's uniq rules become the first rules entry, as `cluster init` proposes
//! them, from any node that finds none once a leader is known.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::app::SharedApp;

/// The peer route that answers [`BootstrapView`].
pub const BOOTSTRAP_PATH: &str = "/raft/bootstrap";

/// What a node tells a peer deciding whether to bootstrap.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootstrapView {
    /// No log entry, no snapshot and no vote: this node was never part of a cluster.
    pub pristine: bool,
    /// The node list of its config: id and peer address.
    pub members: BTreeMap<u64, String>,
}

impl BootstrapView {
    pub fn of(app: &SharedApp) -> Self {
        BootstrapView {
            pristine: pristine(app),
            members: initial_members(app),
        }
    }
}

fn pristine(app: &SharedApp) -> bool {
    let m = app.raft.metrics().borrow().clone();
    m.last_log_index.is_none()
        && m.snapshot.is_none()
        && m.purged.is_none()
        && m.current_term == 0
        && m.vote == Default::default()
}

fn initial_members(app: &SharedApp) -> BTreeMap<u64, String> {
    app.settings
        .initial_members
        .iter()
        .map(|(id, node)| (*id, node.addr.clone()))
        .collect()
}

/// What one survey of the config's nodes found.
#[derive(Debug, PartialEq, Eq)]
enum Survey {
    /// Every node answered pristine, with this node's member list.
    AllPristine,
    /// This node, or the one named, holds a log: the cluster was formed.
    Formed(u64),
    /// These nodes did not answer.
    Waiting(Vec<u64>),
    /// This node lists other members or addresses than ours.
    Mismatch(u64, BTreeMap<u64, String>),
}

/// Bootstrap if this node should, then see that the first rules entry exists. Runs for the
/// node's life at most; polls every `period` (no watch channel: see `RunningNode::failed`).
pub async fn run(app: SharedApp, period: Duration) {
    let mut last: Option<Survey> = None;
    loop {
        let survey = if pristine(&app) {
            survey(&app, period).await
        } else {
            Survey::Formed(app.id)
        };
        match &survey {
            Survey::AllPristine => {
                initialize(&app).await;
                break;
            }
            Survey::Formed(id) => {
                if *id != app.id {
                    tracing::info!(
                        peer = id,
                        "not bootstrapping: node {id} already holds a log; waiting to be \
                         replicated to (or added with `uniqlog cluster add-learner`)"
                    );
                }
                break;
            }
            // Said when it changes, not every period.
            _ if last.as_ref() == Some(&survey) => {}
            Survey::Waiting(ids) => tracing::info!(
                ?ids,
                "bootstrap waits for every node of the config to answer"
            ),
            Survey::Mismatch(id, theirs) => tracing::error!(
                peer = id,
                ours = ?initial_members(&app),
                ?theirs,
                "not bootstrapping: node {id} lists other nodes or addresses; every node must \
                 start with the same [[node]] list"
            ),
        }
        last = Some(survey);
        tokio::time::sleep(period).await;
    }
    loop {
        match first_rules(&app).await {
            Ok(_) => return,
            Err(e) => tracing::debug!(error = %e, "the first rules entry: will try again"),
        }
        tokio::time::sleep(period).await;
    }
}

async fn survey(app: &SharedApp, timeout: Duration) -> Survey {
    let ours = initial_members(app);
    let mut waiting = Vec::new();
    for (&id, addr) in &ours {
        if id == app.id {
            continue;
        }
        match ask(app, addr, timeout).await {
            None => waiting.push(id),
            Some(view) if !view.pristine => return Survey::Formed(id),
            Some(view) if view.members != ours => return Survey::Mismatch(id, view.members),
            Some(_) => {}
        }
    }
    if waiting.is_empty() {
        Survey::AllPristine
    } else {
        Survey::Waiting(waiting)
    }
}

async fn ask(app: &SharedApp, addr: &str, timeout: Duration) -> Option<BootstrapView> {
    crate::removal::ask_peer(app, addr, BOOTSTRAP_PATH, timeout).await
}

async fn initialize(app: &SharedApp) {
    use openraft::error::{InitializeError, RaftError};
    let members = app.settings.initial_members.clone();
    let ids: Vec<u64> = members.keys().copied().collect();
    match app.raft.initialize(members).await {
        Ok(()) => tracing::info!(?ids, "bootstrapped the cluster: every node was pristine"),
        // Replication reached this node between the survey and now.
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
        Err(e) => tracing::warn!(error = %e, "bootstrap: initialize failed"),
    }
}

/// The config's rules as the first rules entry, unless there is one: what `cluster init`
/// does after initializing.
pub(crate) async fn first_rules(app: &SharedApp) -> Result<u64, api::error::ApiError> {
    app.linearize().await?;
    let rules = app.rules().await?;
    if rules.version != 0 {
        return Ok(rules.version);
    }
    crate::routes::uniq::propose_rules(app, app.settings.config_rules.clone()).await
}
