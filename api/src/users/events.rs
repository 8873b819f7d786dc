//! The events of the `users` topic: each type's name and data, once. The command side writes
//! them, and the fold of a user's stream, the query read model and the mail consumer read them
//! through this type, so none of them spells an event's name or fields on its own. (The
//! simulator's checkers read events by name on purpose: an oracle that shared this decoder
//! would share its mistakes.)
//!
//! An event is stored as the log serves it: `type` is the variant's name and `data` its
//! fields (`{"type": "EmailChanged", "data": {"id": ..., "old_email": ..., "new_email": ...}}`,
//! beside the offset, timestamp and stream the node adds). A field that is missing, null or not
//! a string reads as empty, as the readers always read it: the topic also takes raw appends
//! from tokens allowed to write it, and an account is its stream (`user-<uuid>`), whatever an
//! event's `id` says. An event of a type this build does not know is not a user event.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::wire::Event;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum UserEvent {
    /// A sign-up: claims the email in the `user_email` set, and asks for an activation email.
    AccountCreated {
        #[serde(default, deserialize_with = "text")]
        id: String,
        #[serde(default, deserialize_with = "text")]
        username: String,
        #[serde(default, deserialize_with = "text")]
        email: String,
    },
    /// The activation email again (the mail consumer sends to the account's address as of
    /// this event, never to one an event names).
    ActivationRequested {
        #[serde(default, deserialize_with = "text")]
        id: String,
        #[serde(default, deserialize_with = "text")]
        username: String,
        #[serde(default, deserialize_with = "text")]
        email: String,
    },
    /// Moves the claim from `old_email` to `new_email`.
    EmailChanged {
        #[serde(default, deserialize_with = "text")]
        id: String,
        #[serde(default, deserialize_with = "text")]
        old_email: String,
        #[serde(default, deserialize_with = "text")]
        new_email: String,
    },
    AccountActivated {
        #[serde(default, deserialize_with = "text")]
        id: String,
    },
    /// Releases the email.
    AccountDeleted {
        #[serde(default, deserialize_with = "text")]
        id: String,
        #[serde(default, deserialize_with = "text")]
        email: String,
    },
}

/// A text field as the readers always read it: a string as it is, anything else as empty.
fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => s,
        _ => String::new(),
    })
}

impl UserEvent {
    /// The user event a served event is, or `None` for a type this build does not know or
    /// data that does not fit it.
    pub fn of(served: &Event) -> Option<UserEvent> {
        UserEvent::deserialize(serde_json::json!({
            "type": served.event_type,
            "data": served.data,
        }))
        .ok()
    }

    /// The event's type name and data, as an append carries them.
    pub fn to_parts(&self) -> (String, Value) {
        let Ok(Value::Object(mut fields)) = serde_json::to_value(self) else {
            unreachable!("a user event serializes to an object");
        };
        let name = match fields.remove("type") {
            Some(Value::String(name)) => name,
            _ => unreachable!("a user event has a type name"),
        };
        (name, fields.remove("data").unwrap_or(Value::Null))
    }

    /// Whether the mail consumer sends an activation email for it.
    pub fn asks_for_mail(&self) -> bool {
        matches!(
            self,
            UserEvent::AccountCreated { .. } | UserEvent::ActivationRequested { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn served(event_type: &str, data: Value) -> Event {
        Event {
            topic: "users".into(),
            offset: 4,
            log_index: 2,
            timestamp: 9,
            event_type: event_type.into(),
            stream: Some("user-1".into()),
            data,
            metadata: None,
        }
    }

    #[test]
    fn served_events_read_back_as_written() {
        let id = uuid::Uuid::from_u128(7).to_string();
        let ev = UserEvent::EmailChanged {
            id: id.clone(),
            old_email: "a@x.io".into(),
            new_email: "b@x.io".into(),
        };
        let (name, data) = ev.to_parts();
        assert_eq!(name, "EmailChanged");
        assert_eq!(
            data,
            json!({"id": id, "old_email": "a@x.io", "new_email": "b@x.io"})
        );
        assert_eq!(UserEvent::of(&served(&name, data)), Some(ev));
    }

    #[test]
    fn unknown_types_are_not_user_events_and_odd_fields_read_as_empty() {
        assert_eq!(UserEvent::of(&served("Renamed", json!({"id": "u"}))), None);
        assert_eq!(
            UserEvent::of(&served("AccountActivated", json!({}))),
            Some(UserEvent::AccountActivated { id: String::new() })
        );
        for odd in [json!(null), json!(7)] {
            assert_eq!(
                UserEvent::of(&served("AccountDeleted", json!({"id": odd, "email": odd}))),
                Some(UserEvent::AccountDeleted {
                    id: String::new(),
                    email: String::new()
                })
            );
        }
    }
}
