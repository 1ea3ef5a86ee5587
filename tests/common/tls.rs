//! Certificates made at test time (rcgen) and a TLS-terminating proxy for
//! servers of the local stack that cannot speak TLS themselves (nx-27017,
//! the MongoDB stand-in; FalkorDB's redis-server, built without TLS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate, all signed by the CA, as PEM files in `dir`.
pub struct TestPki {
    /// Folder holding the files (removed on drop).
    pub dir: PathBuf,
    /// The CA certificate, what clients trust.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate and key (mutual TLS).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// Makes the certificates under a fresh folder named after `name`.
    pub fn new(name: &str) -> TestPki {
        let dir = std::env::temp_dir().join(format!("pgfanout-tests-pki-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, format!("pgfanout test CA {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let write = |file: &str, text: String| {
            let path = dir.join(file);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.crt", ca.pem());
        let leaf = |names: Vec<String>, common_name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, common_name);
            (params.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "localhost");
        let (client_cert, client_key) = leaf(Vec::new(), "pgfanout");
        TestPki {
            ca: ca_path,
            server_cert: write("server.crt", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.crt", client_cert),
            client_key: write("client.key", client_key),
            dir,
        }
    }

    /// A file holding the client certificate then its key (MongoDB's
    /// `tlsCertificateKeyFile`).
    pub fn client_cert_and_key(&self) -> PathBuf {
        let path = self.dir.join("client-cert-and-key.pem");
        let text = read(&self.client_cert) + &read(&self.client_key);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A rustls server config presenting the server certificate.
    fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(&self.server_cert).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Accepts TLS on its own loopback port (the [`TestPki`] server
/// certificate) and forwards the plaintext to `target`.
pub struct TlsTerminator {
    address: SocketAddr,
    serving: JoinHandle<()>,
}

impl TlsTerminator {
    /// A terminator in front of `target`, serving at once.
    pub async fn start(pki: &TestPki, target: SocketAddr) -> TlsTerminator {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A refused handshake (the wrong-CA test) just ends the connection.
                    let Ok(mut client) = acceptor.accept(client).await else { return };
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        TlsTerminator { address, serving }
    }

    /// Where TLS clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.serving.abort();
    }
}
