//! The users commands' requests and answers: `POST /v1/users`, `PATCH /v1/users/{id}`,
//! `DELETE /v1/users/{id}`, `GET /v1/users/activate`, `POST /v1/users/{id}/activation-email`.
//! The node reads the requests leniently (a field of the wrong type is a field error like a
//! blank one, all reported at once); these are the shapes a client sends.

use serde::{Deserialize, Serialize};

/// `POST /v1/users`: every field is checked, and all field errors come back at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignupRequest {
    pub username: String,
    pub email: String,
    pub password: String,
}

/// `PATCH /v1/users/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailChangeRequest {
    pub email: String,
}

/// The 201 answer of a sign-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedUp {
    pub email: String,
    pub id: String,
    /// The offset of its `AccountCreated` in `users`.
    pub offset: u64,
    /// `pending` until the account is activated.
    pub status: String,
    pub username: String,
}

/// The answer of an email change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailChanged {
    pub email: String,
    pub id: String,
    pub offset: u64,
}

/// The answer of an activation, a deletion, or a request for the activation email again: the
/// account and the offset of the event the command appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandDone {
    pub id: String,
    pub offset: u64,
}
