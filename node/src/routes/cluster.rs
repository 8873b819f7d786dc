//! Cluster administration and health.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use openraft::error::{InitializeError, RaftError};
use openraft::ServerState;

use crate::app::{LeaderOp, LeaderReply, SharedApp};
use crate::wire::{
    AddLearnerBody, ClusterStatus, Health, IdempotencyStatus, Initialized, LogIndex, Member,
    MembershipBody, Ready, StateHash, TableHash,
};
use api::error::ApiError;
use api::extract::JsonBody;

/// `GET /v1/cluster/state-hash`: a full scan of the applied state, hence admin only.
pub async fn state_hash(State(app): State<SharedApp>) -> Result<Json<StateHash>, ApiError> {
    let reader = app.reader.clone();
    let (applied_index, tables) = raft_store::blocking(move || reader.state_hash())
        .await
        .map_err(crate::errors::api_error)?;
    Ok(Json(StateHash {
        applied_index,
        tables: tables
            .into_iter()
            .map(|(name, (rows, sha256))| (name.to_string(), TableHash { rows, sha256 }))
            .collect(),
    }))
}

pub async fn status(State(app): State<SharedApp>) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(cluster_status(&app).await?))
}

pub async fn cluster_status(app: &SharedApp) -> Result<ClusterStatus, ApiError> {
    let m = app.raft.metrics().borrow().clone();
    let committed = app
        .raft
        .with_raft_state(|s| s.committed.map_or(0, |l| l.index))
        .await
        .map_err(|e| ApiError::unavailable(format!("raft is not running: {e}")))?;
    let rules = app.rules().await?;
    let reader = app.reader.clone();
    let idempotency_records = raft_store::blocking(move || reader.idempotency_records())
        .await
        .map_err(crate::errors::api_error)?;
    let membership = m.membership_config.membership();
    let voters: BTreeSet<_> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let replication = m.replication.as_ref().map(|r| {
        r.iter()
            .filter(|(id, _)| **id != app.id)
            .map(|(id, matched)| (*id, matched.map(|l| l.index)))
            .collect()
    });
    Ok(ClusterStatus {
        id: app.id,
        role: role_name(m.state).to_string(),
        term: m.current_term,
        leader: m.current_leader,
        commit_index: committed,
        applied_index: m.last_applied.map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        purged_index: m.purged.map(|l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        members,
        replication,
        uptime_ms: app.runtime.started.elapsed().as_millis() as u64,
        rules_version: rules.version,
        idempotency: IdempotencyStatus {
            window_ms: rules.rules.idempotency.window_ms,
            records_max: rules.rules.idempotency.records_max,
            records: idempotency_records,
        },
    })
}

/// The name of a Raft state in answers and metrics.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Bootstrap the cluster from the config's node list and propose the config's rules as the
/// first rules entry. Idempotent: on an initialized cluster whose rules are in place it
/// answers 200 and changes nothing.
pub async fn init(State(app): State<SharedApp>) -> Result<Response, ApiError> {
    Ok(Json(init_cluster(&app).await?).into_response())
}

/// What `POST /v1/cluster/init` (and `uniqlog dev`) does.
pub async fn init_cluster(app: &SharedApp) -> Result<Initialized, ApiError> {
    let initialized = match app
        .raft
        .initialize(app.settings.initial_members.clone())
        .await
    {
        Ok(()) => true,
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => false,
        Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
            return Err(ApiError::bad_request(format!(
                "this node is not in the config's node list: {e}"
            )))
        }
        Err(RaftError::Fatal(e)) => {
            return Err(ApiError::unavailable(format!("raft is not running: {e}")))
        }
    };
    let rules_version = crate::bootstrap::first_rules(app).await?;
    let message = if initialized {
        "cluster initialized"
    } else {
        "the cluster was already initialized"
    };
    Ok(Initialized {
        initialized,
        message: message.into(),
        rules_version,
    })
}

fn membership_answer(reply: LeaderReply) -> Result<Response, ApiError> {
    match reply {
        LeaderReply::Membership { log_index } => {
            Ok((StatusCode::OK, Json(LogIndex { log_index })).into_response())
        }
        other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
    }
}

pub async fn add_learner(
    State(app): State<SharedApp>,
    JsonBody(body): JsonBody<AddLearnerBody>,
) -> Result<Response, ApiError> {
    if body.addr.trim().is_empty() {
        return Err(ApiError::bad_request("addr must not be empty"));
    }
    let op = LeaderOp::AddLearner {
        id: body.id,
        addr: body.addr,
    };
    membership_answer(app.execute(op, app.request_timeout()).await?)
}

pub async fn change_membership(
    State(app): State<SharedApp>,
    JsonBody(body): JsonBody<MembershipBody>,
) -> Result<Response, ApiError> {
    if body.voters.is_empty() {
        return Err(ApiError::bad_request("voters must not be empty"));
    }
    let op = LeaderOp::ChangeMembership {
        voters: body.voters.into_iter().collect(),
    };
    membership_answer(app.execute(op, app.request_timeout()).await?)
}

/// Alive, or failed: a node whose Raft stopped on a fatal error (a storage write or fsync
/// that failed) answers 503 until it is restarted, so a supervisor or load balancer sees it.
pub async fn health(State(app): State<SharedApp>) -> Response {
    match app.fatal() {
        None => Json(Health {
            error: None,
            status: "ok".into(),
        })
        .into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                error: Some(error),
                status: "failed".into(),
            }),
        )
            .into_response(),
    }
}

/// Ready: a leader is known and this node has applied everything it knows to be committed.
pub async fn ready(State(app): State<SharedApp>) -> Result<Json<Ready>, ApiError> {
    let s = cluster_status(&app).await?;
    if s.leader.is_none() {
        return Err(ApiError::unavailable("no leader is known"));
    }
    if s.applied_index < s.commit_index {
        return Err(ApiError::unavailable(format!(
            "applied {} of {} committed entries",
            s.applied_index, s.commit_index
        )));
    }
    Ok(Json(Ready {
        status: "ready".into(),
        leader: s.leader,
        applied_index: s.applied_index,
    }))
}
