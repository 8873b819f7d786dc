//! The answers of the uniq look-ups: who owns a key, who owned it over time, and the sets
//! with their sizes. Fields are in alphabetical order (see `crate::wire`).

use serde::{Deserialize, Serialize};

/// `GET /v1/uniq/{set}/{key}`: the key's owner (a 404 when it is free).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Owner {
    /// The key as the set normalized it.
    pub key: String,
    /// The stream that owns it.
    pub owner: String,
    pub set: String,
    /// The offset of the event that claimed it.
    pub since_offset: u64,
}

/// `GET /v1/uniq/{set}/{key}/history`: owners over time, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    pub history: Vec<Claim>,
    pub key: String,
    pub set: String,
}

/// One owner of a key, from the event that claimed it to the one that released it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Claim {
    pub claimed_offset: u64,
    pub owner: String,
    /// Null while it still owns the key.
    pub released_offset: Option<u64>,
}

/// `GET /v1/uniq`: the sets the caller may read, with their number of keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sets {
    /// When the key counts were taken (they are cached briefly), ms since the Unix epoch.
    pub counted_at: u64,
    pub sets: Vec<SetSize>,
    /// The version of the rules in force.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetSize {
    pub keys: u64,
    pub name: String,
    /// `none`, `lowercase` or `email`.
    pub normalize: String,
    pub topic: String,
}

/// The answer of a rules change: the version of the rules now in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RulesVersion {
    pub version: u64,
}
