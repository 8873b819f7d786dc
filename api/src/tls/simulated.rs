//! TLS in simulation builds: the types exist so the code using them compiles unchanged, but
//! none can be built (madsim simulates plain TCP only).

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{TlsError, TlsFile};

#[derive(Clone)]
pub struct ServerTls {
    never: std::convert::Infallible,
}

#[derive(Clone)]
pub struct ClientTls {
    never: std::convert::Infallible,
}

pub(crate) type ServerStream = TcpStream;
pub(crate) type ClientStream = TcpStream;

fn unsupported(file: TlsFile, path: &Path) -> TlsError {
    TlsError::new(
        file,
        path,
        "TLS is not available in simulation builds (--cfg madsim)",
    )
}

impl ServerTls {
    pub fn from_pem_files(cert: &Path, _key: &Path) -> Result<ServerTls, TlsError> {
        Err(unsupported(TlsFile::Cert, cert))
    }

    pub(crate) async fn accept(
        &self,
        _stream: TcpStream,
        _timeout: Duration,
    ) -> Result<ServerStream, String> {
        match self.never {}
    }
}

impl ClientTls {
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        Err(unsupported(TlsFile::Ca, ca))
    }

    pub fn public_roots() -> Result<ClientTls, TlsError> {
        Err(unsupported(TlsFile::Ca, Path::new("(built-in roots)")))
    }

    pub(crate) async fn connect(
        &self,
        _addr: &str,
        _stream: TcpStream,
    ) -> Result<ClientStream, String> {
        match self.never {}
    }
}
