//! Email providers. The webhook provider speaks DESIGN's protocol through the transport seam,
//! so it runs in the simulator too.

use std::sync::Arc;
use std::time::Duration;

use api::{HttpRequest, Transport, TransportError};
use axum::http::HeaderName;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: String,
    pub subject: String,
    pub text: String,
    /// `<topic>:<offset>` of the event the email is for.
    pub idempotency_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The provider refuses this message for good (`422 invalid_recipient`): park it.
    Permanent(String),
    /// Anything else: refused connections, timeouts, 5xx, 429, other non-2xx. Retry.
    Transient {
        reason: String,
        timed_out: bool,
    },
}

pub struct Webhook {
    pub transport: Arc<dyn Transport>,
    pub addr: String,
    pub path: String,
    pub authorization: Option<api::Secret>,
    pub timeout: Duration,
}

impl Webhook {
    pub async fn send(&self, m: &Outgoing) -> Delivery {
        let body = json!({"to": m.to, "subject": m.subject, "text": m.text}).to_string();
        let mut req = HttpRequest::post(self.path.clone(), body);
        req.headers.push((
            HeaderName::from_static("idempotency-key"),
            m.idempotency_key.clone(),
        ));
        if let Some(auth) = &self.authorization {
            req.headers.push((
                HeaderName::from_static("authorization"),
                auth.expose().into(),
            ));
        }
        match self.transport.send(&self.addr, req, self.timeout).await {
            Ok(r) if (200..300).contains(&r.status) => Delivery::Sent,
            Ok(r) if r.status == 422 => {
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                if v["error"] == "invalid_recipient" {
                    Delivery::Permanent(format!("invalid_recipient: {}", m.to))
                } else {
                    Delivery::Transient {
                        reason: format!("provider answered 422: {v}"),
                        timed_out: false,
                    }
                }
            }
            Ok(r) => Delivery::Transient {
                reason: format!("provider answered {}", r.status),
                timed_out: false,
            },
            Err(e @ TransportError::Timeout { .. }) => Delivery::Transient {
                reason: e.to_string(),
                timed_out: true,
            },
            Err(e) => Delivery::Transient {
                reason: e.to_string(),
                timed_out: false,
            },
        }
    }
}
