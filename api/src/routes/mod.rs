//! The client routes.

pub mod cluster;
pub mod log;
pub mod uniq;
