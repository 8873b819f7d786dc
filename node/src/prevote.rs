//! Elections start here, not in openraft: PreVote (Raft thesis §9.6; etcd's `PreVote`) at
//! the application level, because openraft 0.9 has none.
//!
//! Without it, a voter cut off from the others stands for election again and again, each
//! time in a higher term. openraft's leader lease keeps its peers from voting for it, but not
//! its term from growing; when it comes back, the leader's next append meets that term, the
//! leader steps down, and the cluster holds an election it did not need, writes stalled
//! meanwhile.
//!
//! So openraft's own election timer is off (`enable_elect: false`, `Config::openraft`) and
//! [`run`] is the timer. Each round sleeps a random time in [election_timeout_ms_min,
//! election_timeout_ms_max]. A voter that is not the leader and has heard from no leader
//! within the lease asks every other voter, on `/raft/prevote`, whether it would vote for it
//! in the next term with its last log id. A peer says yes only if it does not hear from a
//! leader within the lease either (a leader always says no) and the asker's last log id is at
//! least its own, as openraft compares them for a real vote. Yes from a quorum (of each voter
//! set during a joint membership change, itself counted) starts a real election
//! (`Raft::trigger().elect()`). A question changes nothing on either side: a node that cannot
//! reach a quorum never raises its term. A peer that does not answer in time says no. A single
//! voter elects itself without asking.
//!
//! "Heard from a leader" is the notion behind openraft's own lease: this node's vote is a
//! leader's (committed) and an accepted append or heartbeat refreshed it within
//! `election_timeout_ms_max`, the lease openraft 0.9 refuses real votes under
//! (`Engine::handle_vote_req`); or it accepted a leader's snapshot chunk within that time
//! ([`SnapshotContact`]). A PreVote granted under a shorter lease would be followed by a real
//! vote the same peers refuse, a term spent for nothing.
//!
//! The timer polls (sleeps) and never waits on openraft's metrics channel: one more waiter
//! there makes the simulation's wake order depend on an unseeded generator
//! (`RunningNode::failed`). Its randomness is `api::runtime::rng`, the seed's under madsim.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::Fatal;
use openraft::{LogId, ServerState};
use raft_store::NodeId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::app::{App, SharedApp};

pub const PREVOTE_PATH: &str = "/raft/prevote";

/// "Would you vote for me in `term` with this last log id?"
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteRequest {
    /// The term the asker would stand in: its own plus one. For the log only; a real vote
    /// settles terms.
    pub term: u64,
    pub candidate: NodeId,
    pub last_log: Option<LogId<NodeId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreVoteResponse {
    pub granted: bool,
}

/// The election timer's durations, from openraft's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A round sleeps a random time in `round_min..=round_max`.
    pub round_min: Duration,
    pub round_max: Duration,
    /// A node hears from a leader when its leader's vote was refreshed within this:
    /// openraft's lease, `election_timeout_ms_max`.
    pub lease: Duration,
    /// Deadline of one question: openraft's for a real vote, `election_timeout_ms_min`.
    pub ask_timeout: Duration,
}

impl Timing {
    pub fn of(config: &openraft::Config) -> Timing {
        let min = Duration::from_millis(config.election_timeout_min);
        let max = Duration::from_millis(config.election_timeout_max);
        Timing {
            round_min: min,
            round_max: max,
            lease: max,
            ask_timeout: min,
        }
    }
}

/// When this node last accepted a leader's snapshot chunk (`peer::snapshot`). openraft
/// refreshes its vote's time on every append and heartbeat, but on a snapshot only once the
/// last chunk is in: a long transfer would look like silence.
#[derive(Debug, Default)]
pub struct SnapshotContact(Mutex<Option<tokio::time::Instant>>);

impl SnapshotContact {
    pub fn heard(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    }

    fn age(&self) -> Option<Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }
}

/// What this node knows that an election is decided on, read from openraft's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: NodeId,
    pub state: ServerState,
    pub term: u64,
    /// Whether the vote this node holds is a leader's (committed), not a candidate's.
    pub leader_vote: bool,
    /// Since the vote last changed, or was refreshed by the leader's messages.
    pub vote_age: Option<Duration>,
    /// Since this node last accepted a leader's snapshot chunk.
    pub snapshot_age: Option<Duration>,
    pub last_log: Option<LogId<NodeId>>,
    /// The voter sets of the membership in effect: one, or two during a joint change.
    pub voter_sets: Vec<BTreeSet<NodeId>>,
    /// Every voter but this node, with its peer address.
    pub peers: Vec<(NodeId, String)>,
}

/// What a round of the timer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Ask the other voters first.
    Ask,
    /// The only voter: elect at once.
    Elect,
}

impl View {
    fn is_voter(&self) -> bool {
        self.voter_sets.iter().any(|s| s.contains(&self.id))
    }

    /// Whether this node hears from a leader: it leads, its vote is a leader's and was
    /// refreshed within `lease`, or a leader's snapshot chunk came within `lease`.
    pub fn hears_leader(&self, lease: Duration) -> bool {
        let within = |age: Option<Duration>| age.is_some_and(|age| age <= lease);
        self.state == ServerState::Leader
            || (self.leader_vote && within(self.vote_age))
            || within(self.snapshot_age)
    }

    /// What this round does.
    pub fn next_step(&self, t: &Timing) -> Step {
        if !self.is_voter() || self.state == ServerState::Leader {
            return Step::Wait;
        }
        let alone = self.voter_sets.iter().flatten().all(|v| *v == self.id);
        if alone {
            // As openraft's own timer: a single voter's election in progress is left alone.
            return match self.state {
                ServerState::Candidate => Step::Wait,
                _ => Step::Elect,
            };
        }
        if self.hears_leader(t.lease) {
            return Step::Wait;
        }
        // A vote changed less than a round ago (granted to a candidate, or this node's own
        // election) is an election in progress: give it a round.
        if self.vote_age.is_some_and(|age| age < t.round_min) {
            return Step::Wait;
        }
        Step::Ask
    }

    /// This node's answer to `req`: yes only if it hears from no leader and the asker's log
    /// is at least as up to date as its own.
    pub fn grants(&self, req: &PreVoteRequest, lease: Duration) -> bool {
        !self.hears_leader(lease) && req.last_log >= self.last_log
    }
}

/// Whether `granted` holds a majority of every voter set.
pub fn quorum(voter_sets: &[BTreeSet<NodeId>], granted: &BTreeSet<NodeId>) -> bool {
    !voter_sets.is_empty()
        && voter_sets
            .iter()
            .all(|set| set.intersection(granted).count() * 2 > set.len())
}

/// This node's view, read inside openraft's core (its vote's time is not in the metrics);
/// the last log id comes from the metrics, which carry it.
pub async fn view(app: &App) -> Result<View, Fatal<NodeId>> {
    let id = app.id;
    let last_log = app.raft.data_metrics().borrow().last_log;
    let snapshot_age = app.runtime.snapshot_contact.age();
    app.raft
        .with_raft_state(move |st| {
            let vote = st.vote_ref();
            let m = st.membership_state.effective();
            View {
                id,
                state: st.server_state,
                term: vote.leader_id.term,
                leader_vote: vote.committed,
                vote_age: st.vote_last_modified().map(|t| t.elapsed()),
                snapshot_age,
                last_log,
                voter_sets: m.membership().get_joint_config().clone(),
                peers: m
                    .voter_ids()
                    .filter(|v| *v != id)
                    .filter_map(|v| m.get_node(&v).map(|n| (v, n.addr.clone())))
                    .collect(),
            }
        })
        .await
}

/// Answer a peer's PreVote: a question only, nothing changes here.
pub async fn answer(app: &App, req: &PreVoteRequest) -> Result<PreVoteResponse, Fatal<NodeId>> {
    let timing = Timing::of(app.raft.config());
    let view = view(app).await?;
    let granted = view.grants(req, timing.lease);
    tracing::debug!(
        candidate = req.candidate,
        term = req.term,
        last_log = ?req.last_log,
        ours = ?view.last_log,
        hears_leader = view.hears_leader(timing.lease),
        granted,
        "answered a prevote"
    );
    app.metrics.elections.answered(granted);
    Ok(PreVoteResponse { granted })
}

/// The election timer of this node, until its Raft stops. Spawned with the node's other
/// tasks (`lib.rs::start`), so it dies with them.
pub async fn run(app: SharedApp) {
    let timing = Timing::of(app.raft.config());
    // Refused rounds in a row. One refusal is common in a failover (a peer heard the dead
    // leader a little later than this node); three are a node cut off, or a leader the
    // others hear and this node does not. One line when such a streak starts, one when it
    // ends, not one a round.
    const STREAK: u64 = 3;
    let mut refused = 0u64;
    loop {
        let wait = api::runtime::rng().gen_range(timing.round_min..=timing.round_max);
        tokio::time::sleep(wait).await;
        match round(&app, &timing).await {
            Ok(Round::Refused { granted }) => {
                refused += 1;
                if refused == STREAK {
                    tracing::warn!(
                        rounds = refused,
                        ?granted,
                        "no leader heard and no quorum grants this node a PreVote: cut off \
                         from the others, or they hear a leader this node does not"
                    );
                }
            }
            Ok(Round::Quiet | Round::Elected) => {
                if refused >= STREAK {
                    tracing::info!(rounds = refused, "PreVote refusals over");
                }
                refused = 0;
            }
            Err(e) => {
                tracing::debug!(error = %e, "Raft stopped: election timer ends");
                return;
            }
        }
    }
}

/// What a round came to.
enum Round {
    /// Nothing to do, or a leader came meanwhile.
    Quiet,
    Refused {
        granted: BTreeSet<NodeId>,
    },
    Elected,
}

/// One round: look, maybe ask, maybe elect.
async fn round(app: &App, timing: &Timing) -> Result<Round, Fatal<NodeId>> {
    let view = view(app).await?;
    match view.next_step(timing) {
        Step::Wait => Ok(Round::Quiet),
        Step::Elect => elect(app, &view).await.map(|()| Round::Elected),
        Step::Ask => {
            app.metrics.elections.rounds.inc();
            let granted = ask_all(app, &view, timing.ask_timeout).await;
            if !quorum(&view.voter_sets, &granted) {
                tracing::debug!(term = view.term + 1, ?granted, "prevote refused");
                return Ok(Round::Refused { granted });
            }
            app.metrics.elections.rounds_granted.inc();
            // A leader may have come while the question was out: elect only if this node
            // still hears none.
            let now = self::view(app).await?;
            if now.next_step(timing) != Step::Ask {
                return Ok(Round::Quiet);
            }
            tracing::info!(term = now.term + 1, ?granted, "prevote granted by a quorum");
            elect(app, &now).await.map(|()| Round::Elected)
        }
    }
}

async fn elect(app: &App, view: &View) -> Result<(), Fatal<NodeId>> {
    tracing::info!(term = view.term + 1, "standing for election");
    app.metrics.elections.elections.inc();
    app.raft.trigger().elect().await
}

/// Ask every other voter at once; the voters that said yes, this node among them. Stops as
/// soon as they make a quorum.
async fn ask_all(app: &App, view: &View, timeout: Duration) -> BTreeSet<NodeId> {
    let req = PreVoteRequest {
        term: view.term + 1,
        candidate: app.id,
        last_log: view.last_log,
    };
    let body = raft_store::codec::encode(&req);
    let mut granted = BTreeSet::from([app.id]);
    let mut asks: FuturesUnordered<_> = view
        .peers
        .iter()
        .map(|(peer, addr)| {
            let body = body.clone();
            async move { (*peer, ask(app, addr, body, timeout).await) }
        })
        .collect();
    while let Some((peer, yes)) = asks.next().await {
        if yes {
            granted.insert(peer);
            if quorum(&view.voter_sets, &granted) {
                break;
            }
        }
    }
    granted
}

/// One peer's answer; no answer, or one that does not decode, is no.
async fn ask(app: &App, addr: &str, body: Vec<u8>, timeout: Duration) -> bool {
    let req = crate::peer::peer_request(PREVOTE_PATH, body, app.settings.cluster_secret.as_deref());
    match app.transport.send(addr, req, timeout).await {
        Ok(resp) if resp.status == 200 => {
            raft_store::codec::decode::<PreVoteResponse>(&resp.body).is_ok_and(|r| r.granted)
        }
        Ok(resp) => {
            tracing::debug!(
                addr,
                status = resp.status,
                "prevote refused by the peer route"
            );
            false
        }
        Err(e) => {
            tracing::debug!(addr, error = %e, "prevote unanswered");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    const LEASE: Duration = Duration::from_millis(1000);

    fn timing() -> Timing {
        Timing {
            round_min: Duration::from_millis(500),
            round_max: LEASE,
            lease: LEASE,
            ask_timeout: Duration::from_millis(500),
        }
    }

    fn log(term: u64, index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(term, 0), index))
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// Node 1 of voters 1, 2, 3, a follower whose leader was last heard `heard_ms` ago.
    fn follower(heard_ms: u64) -> View {
        View {
            id: 1,
            state: ServerState::Follower,
            term: 4,
            leader_vote: true,
            vote_age: Some(Duration::from_millis(heard_ms)),
            snapshot_age: None,
            last_log: log(4, 10),
            voter_sets: vec![set(&[1, 2, 3])],
            peers: vec![(2, "b".into()), (3, "c".into())],
        }
    }

    fn asking(last_log: Option<LogId<NodeId>>) -> PreVoteRequest {
        PreVoteRequest {
            term: 5,
            candidate: 2,
            last_log,
        }
    }

    #[test]
    fn a_peer_that_hears_its_leader_refuses_whatever_the_log() {
        let v = follower(100);
        assert!(!v.grants(&asking(log(9, 99)), LEASE));
        assert!(
            !follower(1000).grants(&asking(log(9, 99)), LEASE),
            "at the lease"
        );
    }

    #[test]
    fn a_peer_without_a_leader_grants_by_log_freshness_as_openraft_compares() {
        let v = follower(1001);
        assert!(v.grants(&asking(log(4, 10)), LEASE), "the same log");
        assert!(v.grants(&asking(log(4, 11)), LEASE), "longer");
        assert!(v.grants(&asking(log(5, 2)), LEASE), "a later term, shorter");
        assert!(!v.grants(&asking(log(4, 9)), LEASE), "shorter");
        assert!(
            !v.grants(&asking(log(3, 50)), LEASE),
            "an earlier term, longer"
        );
        assert!(!v.grants(&asking(None), LEASE), "empty");
        let empty = View {
            last_log: None,
            ..follower(5000)
        };
        assert!(empty.grants(&asking(None), LEASE));
    }

    #[test]
    fn a_leader_refuses_and_a_candidate_grants() {
        let leader = View {
            state: ServerState::Leader,
            vote_age: Some(Duration::from_secs(60)),
            ..follower(0)
        };
        assert!(!leader.grants(&asking(log(9, 99)), LEASE));
        // A candidate's vote is its own, not a leader's, however fresh.
        let candidate = View {
            state: ServerState::Candidate,
            leader_vote: false,
            ..follower(10)
        };
        assert!(candidate.grants(&asking(log(4, 10)), LEASE));
        let never = View {
            vote_age: None,
            ..follower(0)
        };
        assert!(never.grants(&asking(log(4, 10)), LEASE));
    }

    /// openraft refreshes its vote's time only when a whole snapshot is in; a chunk accepted
    /// from the leader is contact too.
    #[test]
    fn a_snapshot_chunk_from_the_leader_counts_as_contact() {
        let receiving = View {
            snapshot_age: Some(Duration::from_millis(200)),
            ..follower(5000)
        };
        assert!(!receiving.grants(&asking(log(9, 99)), LEASE));
        assert_eq!(receiving.next_step(&timing()), Step::Wait);
        let long_ago = View {
            snapshot_age: Some(Duration::from_millis(1500)),
            ..follower(5000)
        };
        assert!(long_ago.grants(&asking(log(9, 99)), LEASE));
    }

    #[test]
    fn a_follower_asks_only_after_the_lease_without_its_leader() {
        let t = timing();
        assert_eq!(follower(900).next_step(&t), Step::Wait);
        assert_eq!(follower(1001).next_step(&t), Step::Ask);
        // A vote granted to a candidate just now: its election is given a round.
        let voted = View {
            leader_vote: false,
            ..follower(100)
        };
        assert_eq!(voted.next_step(&t), Step::Wait);
        let failed_election = View {
            state: ServerState::Candidate,
            leader_vote: false,
            ..follower(600)
        };
        assert_eq!(failed_election.next_step(&t), Step::Ask);
    }

    #[test]
    fn leaders_and_learners_never_start_an_election() {
        let t = timing();
        let leader = View {
            state: ServerState::Leader,
            ..follower(5000)
        };
        assert_eq!(leader.next_step(&t), Step::Wait);
        let learner = View {
            state: ServerState::Learner,
            voter_sets: vec![set(&[2, 3, 4])],
            ..follower(5000)
        };
        assert_eq!(learner.next_step(&t), Step::Wait);
        let uninitialized = View {
            voter_sets: vec![],
            peers: vec![],
            ..follower(5000)
        };
        assert_eq!(uninitialized.next_step(&t), Step::Wait);
    }

    #[test]
    fn a_single_voter_elects_without_asking_unless_already_standing() {
        let t = timing();
        let alone = View {
            voter_sets: vec![set(&[1])],
            peers: vec![],
            ..follower(0)
        };
        assert_eq!(alone.next_step(&t), Step::Elect);
        let standing = View {
            state: ServerState::Candidate,
            ..alone.clone()
        };
        assert_eq!(standing.next_step(&t), Step::Wait);
        assert!(quorum(&alone.voter_sets, &set(&[1])));
    }

    #[test]
    fn a_quorum_is_a_majority_of_voters_counting_the_asker() {
        let one = [set(&[1])];
        assert!(quorum(&one, &set(&[1])));
        assert!(!quorum(&one, &set(&[2])));

        let three = [set(&[1, 2, 3])];
        assert!(!quorum(&three, &set(&[1])));
        assert!(quorum(&three, &set(&[1, 3])));
        assert!(
            !quorum(&three, &set(&[1, 9])),
            "a non-voter's yes counts for nothing"
        );

        let five = [set(&[1, 2, 3, 4, 5])];
        assert!(!quorum(&five, &set(&[1, 2])));
        assert!(quorum(&five, &set(&[1, 2, 5])));

        assert!(!quorum(&[], &set(&[1])), "no voters, no quorum");
    }

    /// During a joint change a quorum needs a majority of each set: when voter 5 is replaced
    /// by 6, yes from 1, 2, 3 is enough (a majority of the union, 3 of 6, would not be).
    #[test]
    fn a_joint_membership_needs_a_majority_of_each_set() {
        let joint = [set(&[1, 2, 3, 4, 5]), set(&[1, 2, 3, 4, 6])];
        assert!(quorum(&joint, &set(&[1, 2, 3])));
        let growing = [set(&[1, 2, 3]), set(&[1, 2, 3, 4, 5])];
        assert!(!quorum(&growing, &set(&[1, 4, 5])), "1 of the old 3");
        assert!(quorum(&growing, &set(&[1, 2, 4])));
    }
}
