//! The latest conflicts (409 answers) this node gave, for the dashboard: which rule a client
//! ran into, and on what (the uniq set and key, the stream and versions), when.
//!
//! Kept in memory, the newest [`KEPT`], lost at restart: an operator's glance, not a record
//! (the log itself holds what was written; a refused write left nothing there). Recorded
//! from the answer itself (`error.rs` tags every 409 with its body), so every route that can
//! conflict is covered.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::app::SharedApp;
use api::error::{ConflictSeen, ErrorBody};
use api::wire::{RecentConflict, RecentConflicts};

const KEPT: usize = 50;

#[derive(Default)]
pub struct ConflictRing(Mutex<VecDeque<RecentConflict>>);

impl ConflictRing {
    fn record(&self, route: &str, body: &ErrorBody) {
        let entry = RecentConflict {
            at_ms: api::runtime::now_ms(),
            error: body.error.clone(),
            message: body.message.clone(),
            route: route.to_string(),
            details: body.details.clone(),
        };
        let mut ring = self.0.lock().expect("conflicts lock");
        if ring.len() == KEPT {
            ring.pop_back();
        }
        ring.push_front(entry);
    }

    /// Newest first.
    pub fn list(&self) -> Vec<RecentConflict> {
        self.0
            .lock()
            .expect("conflicts lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Remember `resp` if it is a 409 (`route`: the matched route it answers). Part of the client
/// routes' one middleware (`crate::edge`).
pub(crate) fn note(app: &SharedApp, route: &str, resp: &Response) {
    if let Some(ConflictSeen(body)) = resp.extensions().get::<ConflictSeen>() {
        app.runtime.recent_conflicts.record(route, body);
        // Counted where it is listed, so the dashboard's count and list agree.
        let set = match body.error.as_str() {
            "uniq_conflict" => body.details.get("set").and_then(|s| s.as_str()),
            "email_taken" => Some(crate::users::state::EMAIL_SET),
            _ => None,
        };
        if let Some(set) = set {
            app.metrics.uniq_conflict(set);
        }
    }
}

/// `GET /v1/conflicts/recent` (admin role: a refused write's key is in no event).
pub async fn recent(State(app): State<SharedApp>) -> Response {
    Json(RecentConflicts {
        conflicts: app.runtime.recent_conflicts.list(),
    })
    .into_response()
}
