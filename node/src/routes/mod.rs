//! The client routes.

pub mod backup;
pub mod cluster;
pub mod consumers;
pub mod log;
pub mod ui;
pub mod uniq;
