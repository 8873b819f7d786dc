//! Consumers of the committed log: the shared consumer library (tail a topic from any node,
//! move to another node when one fails or lost its leader, report the position to
//! `__checkpoints`) and the consumers built on it (`query`: the users read model).
//!
//! Consumers see only committed, applied events: they read through the nodes' HTTP API, never
//! a node's storage.

pub mod access;
pub mod backoff;
pub mod breaker;
pub mod checkpoint;
pub mod mail;
pub mod mail_sink;
pub mod metrics;
#[cfg(madsim)]
pub mod planted;
pub mod query;
pub mod tail;
