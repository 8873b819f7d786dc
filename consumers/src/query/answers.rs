//! The query API's answers, and the user documents the read model keeps (stored as the API
//! serves them). Top-level fields are in alphabetical order, the order the read model has
//! always written them in; a history's events are in `api::wire::Event`'s.

use api::wire::Event;
use serde::{Deserialize, Serialize};

/// A user as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub created_at: u64,
    pub email: String,
    pub id: String,
    /// `pending`, `active` or `deleted`.
    pub status: String,
    pub updated_at: u64,
    pub username: String,
    /// Events applied to this user after the first.
    pub version: u64,
}

/// `GET /v1/users?email=|username=`: the live users with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Users {
    pub users: Vec<User>,
}

/// `GET /v1/users/{id}/history`: every event of the user, as the log serves them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    pub events: Vec<Event>,
}

/// `GET /v1/stats/signups`: sign-up counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub activated: u64,
    pub created: u64,
    pub deleted: u64,
    /// Sign-ups with an email that a deleted account had.
    pub recreated: u64,
}

/// `GET /health`: how far the read model is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// Next offset of `users` to apply.
    pub checkpoint: u64,
    /// Length of `users` as last seen.
    pub head: u64,
    pub lag_events: u64,
    pub lag_seconds: u64,
}
