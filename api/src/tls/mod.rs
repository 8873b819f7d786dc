//! TLS for the client API and peer RPC (rustls on ring), from PEM files.
//!
//! [`ServerTls`] is a node's certificate and key; [`ClientTls`] trusts exactly the CA bundle it
//! is given (no system roots) and checks the node's certificate against the host part of the
//! address it connects to (an IP address needs an IP SAN). No client certificates: peers prove
//! themselves with the cluster secret, clients with their token.
//!
//! TLS exists in real builds only (`real`). Under `--cfg madsim` (`simulated`) the same types
//! and functions exist, so the code using them compiles unchanged, but none can be built:
//! loading one is an error.

use std::path::{Path, PathBuf};

#[cfg(not(madsim))]
mod real;
#[cfg(not(madsim))]
pub use real::{ClientTls, ServerTls};

#[cfg(madsim)]
mod simulated;
#[cfg(madsim)]
pub use simulated::{ClientTls, ServerTls};

/// Which file a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Cert,
    Key,
    Ca,
}

/// A TLS file that cannot be used, with the reason.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TlsError {
    pub file: TlsFile,
    pub path: PathBuf,
    pub message: String,
}

impl TlsError {
    fn new(file: TlsFile, path: &Path, message: impl Into<String>) -> Self {
        TlsError {
            file,
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}
