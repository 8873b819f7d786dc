//! uniqlog's public contract: the JSON shapes of the client API, the `users` topic's events,
//! the records consumers park, how uniq keys compare, and the HTTP client (the transport seam,
//! TLS, bearer tokens) with which the CLI, the consumers and the simulator reach a node. With
//! them, the HTTP toolkit both of uniqlog's servers share (the node and the query process):
//! the one error type and its status mapping, strict extractors, token auth, request ids,
//! deadlines, metrics middleware and the accept loop.
//!
//! The server itself (routes, Raft, peer RPC) is the `node` crate's.

pub mod auth;
pub mod checkpoints;
pub mod client;
pub mod cluster;
pub mod error;
pub mod extract;
pub mod host_check;
mod json_check;
pub mod keys;
pub mod link;
pub mod metrics;
pub mod openapi;
pub mod parking;
pub mod request_id;
pub mod runtime;
pub mod secret;
pub mod server;
pub mod timeouts;
pub mod tls;
pub mod transport;
pub mod uniq;
pub mod users;
pub mod wire;

pub use auth::{Access, Role};
pub use error::ApiError;
pub use secret::Secret;
pub use tls::{ClientTls, ServerTls, TlsError, TlsFile};
pub use transport::{
    client_transport, client_transport_with, HttpRequest, HttpResponse, HyperTransport, Transport,
    TransportError,
};
