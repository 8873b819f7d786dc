//! The client routes' own middleware, in one layer: the timing and count of every request
//! (`crate::metrics`), its deadlines (`api::timeouts`), the dashboard's list of conflicts
//! (`crate::conflicts`) and who may call it (`crate::auth`), outermost first.
//!
//! One layer, not four: each axum `from_fn` layer clones its inner service and boxes a future
//! per request. With four, the layers' allocations were about 6 % of the leader's CPU in a
//! profile, and one layer took 3 % off the server CPU per request (bench/README.md, issue 25
//! step 6). Refusals are counted and timed like any answer, as they were with four layers.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::SharedApp;
use api::timeouts::{self, RequestTimeouts};

/// What the layer needs: the node, and the client listener's deadlines.
#[derive(Clone)]
pub(crate) struct Edge {
    pub app: SharedApp,
    pub timeouts: Arc<RequestTimeouts>,
}

/// The route layer of every client route.
pub(crate) async fn client_route(
    State(edge): State<Edge>,
    mut req: Request,
    next: Next,
) -> Response {
    let Edge { app, timeouts } = &edge;
    // A route layer runs for matched routes only, so the route is there; `MatchedPath` is an
    // `Arc<str>`, so this clone copies no text.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let started = Instant::now();
    let budget = timeouts.arm(&mut req, Some(route));
    let resp = timeouts::within(budget, &method, async {
        if let Err(refused) = crate::auth::admit(app, Some(route), &mut req).await {
            return refused;
        }
        let resp = next.run(req).await;
        crate::conflicts::note(app, route, &resp);
        resp
    })
    .await;
    app.metrics.http.observe(
        method.as_str(),
        route,
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}
