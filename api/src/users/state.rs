//! The current state of one user, folded from the events of its stream. The command side
//! reads this on the leader (after a linearizable barrier), never from the query read model.

use crate::wire::Event;
use uuid::Uuid;

use super::events::UserEvent;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Active,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub status: Status,
    /// Number of events in the stream: the expected version of the next append.
    pub version: u64,
    /// Offset of the AccountActivated event, once active.
    pub activated_offset: Option<u64>,
    /// Log time of the last event that sent an activation email (`AccountCreated`,
    /// `ActivationRequested`): resends are spaced from it.
    pub last_mail_ms: Option<u64>,
}

pub const TOPIC: &str = "users";
pub const EMAIL_SET: &str = "user_email";

pub fn stream_of(id: Uuid) -> String {
    format!("user-{id}")
}

/// Fold a stream's events (as served: `{type, data, offset, ...}`) into the user's state.
/// `None` when the stream has no `AccountCreated`.
pub fn fold(id: Uuid, events: &[Event]) -> Option<UserState> {
    let mut state: Option<UserState> = None;
    for (i, e) in events.iter().enumerate() {
        match (UserEvent::of(e), state.as_mut()) {
            (
                Some(UserEvent::AccountCreated {
                    username, email, ..
                }),
                _,
            ) => {
                state = Some(UserState {
                    id,
                    username,
                    email,
                    status: Status::Pending,
                    version: 0,
                    activated_offset: None,
                    last_mail_ms: Some(e.timestamp),
                })
            }
            (Some(UserEvent::ActivationRequested { .. }), Some(s)) => {
                s.last_mail_ms = Some(e.timestamp)
            }
            (Some(UserEvent::EmailChanged { new_email, .. }), Some(s)) => s.email = new_email,
            (Some(UserEvent::AccountActivated { .. }), Some(s)) => {
                s.status = Status::Active;
                s.activated_offset = Some(e.offset);
            }
            (Some(UserEvent::AccountDeleted { .. }), Some(s)) => s.status = Status::Deleted,
            _ => {}
        }
        if let Some(s) = state.as_mut() {
            s.version = i as u64 + 1;
        }
    }
    state
}
