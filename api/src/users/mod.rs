//! The sign-up flow's contract: its config, the `users` topic's events and what a user's
//! stream folds to, the commands' requests and answers, and the activation tokens the mail consumer sends. The command handlers
//! are the node's (`node::users`).

pub mod commands;
pub mod config;
pub mod events;
pub mod state;
pub mod token;

/// How often the mail consumer reports to `__checkpoints` while it has nothing to send, so
/// that nodes know it runs.
pub const MAIL_HEARTBEAT_MS: u64 = 30_000;

/// A mail consumer that has not reported for this long is taken for not running.
pub const MAIL_SILENT_MAX_MS: u64 = 3 * MAIL_HEARTBEAT_MS;
