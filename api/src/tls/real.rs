//! TLS in real builds: rustls on ring.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::{TlsError, TlsFile};

/// A node's certificate chain and key: the server side of the handshake.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

/// The CA bundle clients trust: the client side of the handshake.
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
}

/// What the server loop serves HTTP over after the handshake.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

/// What the client speaks HTTP over after the handshake.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// HTTP/1.1 is all either side speaks.
const ALPN_HTTP1: &[u8] = b"http/1.1";

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path)
        .map_err(|e| TlsError::new(file, path, format!("cannot read {}: {e}", path.display())))
}

/// Every `CERTIFICATE` section of a PEM file; at least one.
fn read_certs(
    file: TlsFile,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = read(file, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError::new(
                file,
                path,
                format!("{} is not valid PEM: {e}", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(TlsError::new(
            file,
            path,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

impl ServerTls {
    /// Load a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1),
    /// both PEM. Fails when a file is unreadable, holds no such item, or the key does not
    /// belong to the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let certs = read_certs(TlsFile::Cert, cert)?;
        let key_pem = read(TlsFile::Key, key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let reason = match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".to_string()
                }
                e => format!("is not valid PEM: {e}"),
            };
            TlsError::new(TlsFile::Key, key, format!("{} {reason}", key.display()))
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(TlsFile::Cert, cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| {
                TlsError::new(
                    TlsFile::Key,
                    key,
                    format!(
                        "the key in {} cannot serve the certificate in {}: {e}",
                        key.display(),
                        cert.display()
                    ),
                )
            })?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(ServerTls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server side of the handshake, given at most `timeout`: a client that connects and
    /// stalls cannot hold the connection.
    pub(crate) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> Result<ServerStream, String> {
        match tokio::time::timeout(timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no handshake within {} ms", timeout.as_millis())),
        }
    }
}

impl ClientTls {
    /// Trust exactly the certificates of a PEM CA bundle.
    pub fn from_ca_file(ca: &Path) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(TlsFile::Ca, ca)? {
            roots.add(cert).map_err(|e| {
                TlsError::new(
                    TlsFile::Ca,
                    ca,
                    format!(
                        "{} holds a certificate that cannot be a trust anchor: {e}",
                        ca.display()
                    ),
                )
            })?;
        }
        Self::trusting(roots, ca)
    }

    /// A client that trusts `roots` (read from `source`, for errors) and speaks HTTP/1.1.
    fn trusting(roots: rustls::RootCertStore, source: &Path) -> Result<ClientTls, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::new(TlsFile::Ca, source, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(ClientTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Trust the public web's CAs (Mozilla's list, built in): for services outside the
    /// cluster, such as an email provider's webhook.
    pub fn public_roots() -> Result<ClientTls, TlsError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::trusting(roots, Path::new("(built-in roots)"))
    }

    /// The client side of the handshake with the node at `addr` (`host:port`): its certificate
    /// must chain to the CA and name `host`.
    pub(crate) async fn connect(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> Result<ClientStream, String> {
        let name = server_name(addr)?;
        self.connector
            .connect(name, stream)
            .await
            .map_err(|e| handshake_error(&e))
    }
}

/// The name the node's certificate must carry: the host part of `host:port`, an IP address
/// (`127.0.0.1`, `[::1]`) or a DNS name.
fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

/// The handshake's error, with what it usually means.
fn handshake_error(e: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => " (the node's certificate is not signed by the configured CA)",
        Some(Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => " (the node's certificate does not name the address it was reached at)",
        Some(Error::InvalidMessage(_)) => " (does the node serve TLS?)",
        _ => "",
    };
    format!("TLS handshake failed: {e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        let ip = |a: &str| match server_name(a).unwrap() {
            rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(ip).to_string(),
            other => panic!("{a}: {other:?}"),
        };
        assert_eq!(ip("127.0.0.1:7001"), "127.0.0.1");
        assert_eq!(ip("[::1]:7001"), "::1");
        assert!(matches!(
            server_name("node-1.example:7001").unwrap(),
            rustls::pki_types::ServerName::DnsName(d) if d.as_ref() == "node-1.example"
        ));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("uniqlog-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = ClientTls::from_ca_file(&missing).err().unwrap();
        assert_eq!(e.file, TlsFile::Ca);
        assert!(
            e.message.contains("cannot read") && e.message.contains("missing.pem"),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not pem at all\n").unwrap();
        let e = ClientTls::from_ca_file(&empty).err().unwrap();
        assert!(e.message.contains("no PEM certificate"), "{e}");
        let e = ServerTls::from_pem_files(&empty, &missing).err().unwrap();
        assert_eq!(e.file, TlsFile::Cert);
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = ClientTls::from_ca_file(&broken).err().unwrap();
        assert!(e.message.contains("not valid PEM"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
