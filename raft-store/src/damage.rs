//! The first damaged record a running node met.
//!
//! A damaged record found while serving (a read whose checksum fails) must stop the node:
//! answering around it would serve some data from a store known to be bad, and repairing it in
//! place could make the node vote twice. Errors reaching openraft stop Raft by themselves;
//! this handle carries the rest (reads served outside Raft) to the node, which stops and
//! prints the repair steps.

use std::sync::{Arc, OnceLock};

use crate::error::StoreError;

/// Shared by a node's log store, state machine and readers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Damage(Arc<OnceLock<String>>);

impl Damage {
    /// What was found first, if anything.
    pub fn found(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Pass `result` on, remembering it when it reports damage.
    pub(crate) fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        result.map_err(|e| self.saw(e))
    }

    /// Pass `e` on, remembering it when it is damage.
    pub(crate) fn saw(&self, e: StoreError) -> StoreError {
        if e.is_damage() && self.0.set(e.to_string()).is_ok() {
            tracing::error!(error = %e, "damaged data found; this node stops");
        }
        e
    }
}
