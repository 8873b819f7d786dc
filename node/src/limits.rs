//! `[limits]`: every limit of the client API, named with its unit, each with a default.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body.
    pub body_bytes_max: usize,
    /// Most events in one append.
    pub events_per_append_max: usize,
    /// Largest single event: type, stream, data and metadata together.
    pub event_bytes_max: usize,
    /// Longest topic, stream or event type name.
    pub name_bytes_max: usize,
    /// Longest long-poll a reader may ask for.
    pub wait_ms_max: u64,
    /// Most events in one read page.
    pub read_events_max: usize,
    /// Most bytes of events in one read page or server-sent-event frame; a page holds at
    /// least one event, whatever its size.
    pub read_bytes_max: usize,
    /// Event streams and long-polls open at once on a node; past it, 429.
    pub streams_max: usize,
    /// Anonymous sign-up, activation and activation-email requests a client may send in a
    /// burst and per minute (with `[auth] anonymous_signup`); past it, 429.
    pub anonymous_requests_per_minute: u32,
    /// How long a write may wait for its answer (commit and apply), forwarding included.
    pub request_timeout_ms: u64,
    /// Most writes waiting for a Raft entry on the leader; past it, 429 with `Retry-After`.
    pub write_queue_max: usize,
    /// Most connections open at once on a client listener. Past it a connection is still
    /// accepted, but serves only peer routes, `/health` and `/ready`, and answers 429 with
    /// `Retry-After` to everything else. Peers that share the client address count toward it.
    pub connections_max: usize,
    /// How long a client may take to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Interval of keep-alive comments on server-sent-event streams.
    pub sse_keepalive_ms: u64,
    /// Free space a node keeps on its data disk beyond the size of its last snapshot; below
    /// it, writes answer 503 `unavailable` until space is freed (`raft_store::DiskSpace`).
    pub disk_free_min_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes_max: 1024 * 1024,
            events_per_append_max: 1000,
            event_bytes_max: 256 * 1024,
            name_bytes_max: 255,
            wait_ms_max: 30_000,
            read_events_max: 1000,
            read_bytes_max: 4 * 1024 * 1024,
            streams_max: 512,
            anonymous_requests_per_minute: 30,
            request_timeout_ms: 10_000,
            write_queue_max: 4096,
            connections_max: 1024,
            header_read_timeout_ms: 10_000,
            sse_keepalive_ms: 15_000,
            disk_free_min_bytes: 256 * 1024 * 1024,
        }
    }
}
