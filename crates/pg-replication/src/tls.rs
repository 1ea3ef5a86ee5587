//! TLS for the replication connection: libpq's `sslmode` rules on rustls
//! (with the `ring` crypto provider), the `SSLRequest` exchange that precedes
//! the handshake, and the `tls-server-end-point` data that SCRAM-SHA-256-PLUS
//! binds to.
//!
//! What each `sslmode` does here, as in libpq:
//!
//! | sslmode       | TLS                      | certificate check                                         |
//! |---------------|--------------------------|-----------------------------------------------------------|
//! | `disable`     | never                    | —                                                         |
//! | `prefer`      | if the server accepts it | none, or the chain if `sslrootcert` is given              |
//! | `require`     | always                   | none, or the chain if `sslrootcert` is given              |
//! | `verify-ca`   | always                   | the chain, against `sslrootcert`                          |
//! | `verify-full` | always                   | chain and host name, against `sslrootcert` or system CAs  |
//!
//! As in libpq, `prefer` also retries once without TLS when the TLS
//! handshake is rejected (for example a certificate that does not pass the
//! `sslrootcert` check); every other mode fails with [`ReplicationError::Tls`], which is
//! not transient.
//!
//! Differences from libpq, on purpose: there is no `~/.postgresql/root.crt`
//! default (pgfanout runs as a service; the URL says which CA to trust), so
//! `verify-full` without `sslrootcert` trusts the operating system's CA store
//! (read with `rustls-native-certs`), and `verify-ca` without `sslrootcert` is
//! refused, because a chain check against public CAs proves nothing when
//! the name is not checked. `sslrootcert=system` is accepted like libpq 16
//! does: it makes `verify-full` the default and refuses weaker modes.
//! `sslmode=allow` is not supported.
//!
//! TLS is only ever used over TCP: libpq ignores `sslmode` for unix-domain
//! sockets, and so does this crate.
//!
//! Invariant: the certificate files are read once, when the connection
//! options are parsed; every connection made from them uses the same rustls
//! configuration.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use postgres_protocol::message::{backend, frontend};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use x509_cert::der::oid::db::rfc5912;
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;

use crate::conninfo::TlsParams;
use crate::error::{ReplicationError, Result};
use crate::wire::server_error;

/// `sslrootcert` value that means "the operating system's trusted CAs" (libpq 16).
const SYSTEM_ROOTS: &str = "system";

/// ALPN protocol name PostgreSQL registered; servers from 17 on check it, older ones ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Largest `ErrorResponse` accepted in answer to `SSLRequest`; a real one is a few hundred bytes.
const MAX_SSL_REFUSAL_LEN: usize = 64 * 1024;

/// libpq's `sslmode`: whether to use TLS and how much to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server accepts it, plain otherwise (libpq's default).
    Prefer,
    /// TLS or fail; the certificate is not checked unless `sslrootcert` is given.
    Require,
    /// TLS with the certificate chain checked against `sslrootcert`; the host name is not checked.
    VerifyCa,
    /// TLS with the chain and the host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(text: &str) -> Result<Self> {
        match text {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" => Err(ReplicationError::Config(
                "sslmode=allow is not supported; use prefer (TLS when the server offers it) or disable".into(),
            )),
            other => Err(ReplicationError::Config(format!(
                "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or verify-full"
            ))),
        }
    }

    /// The libpq spelling, e.g. `verify-full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server that refuses TLS must be refused in turn.
    fn requires_tls(self) -> bool {
        !matches!(self, SslMode::Disable | SslMode::Prefer)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`TlsPolicy::negotiate`] leaves the connection running over.
pub(crate) enum Negotiated {
    Tls(Box<TlsStream<TcpStream>>),
    /// No TLS: `sslmode=disable`, or the server declined under `prefer`.
    Plain(TcpStream),
}

/// How much of the server's certificate is checked once TLS is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertificateCheck {
    Nothing,
    Chain,
    ChainAndHostName,
}

/// The TLS side of the connection options: the mode, and the rustls
/// configuration built from the certificate files.
#[derive(Clone)]
pub(crate) struct TlsPolicy {
    mode: SslMode,
    check: CertificateCheck,
    /// Where the trusted CAs come from, for error messages.
    trust_source: String,
    /// `None` exactly when `mode` is `Disable`.
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPolicy")
            .field("mode", &self.mode)
            .field("check", &self.check)
            .field("trust_source", &self.trust_source)
            .finish_non_exhaustive()
    }
}

impl TlsPolicy {
    /// Checks the combination of settings and reads the certificate files.
    pub(crate) fn from_params(params: &TlsParams) -> Result<Self> {
        let system_roots = params.sslrootcert.as_deref() == Some(SYSTEM_ROOTS);
        let mode = match (&params.sslmode, system_roots) {
            (Some(text), _) => SslMode::parse(text)?,
            // libpq 16: trusting public CAs only makes sense with the host name checked.
            (None, true) => SslMode::VerifyFull,
            (None, false) => SslMode::Prefer,
        };
        if system_roots && mode != SslMode::VerifyFull {
            return Err(ReplicationError::Config(format!(
                "sslrootcert=system trusts every public CA, so it needs sslmode=verify-full (got sslmode={mode}); \
                 anyone can get a public certificate for a name they control"
            )));
        }
        let root_file = params.sslrootcert.as_deref().filter(|_| !system_roots).map(PathBuf::from);
        let check = match mode {
            SslMode::Disable => CertificateCheck::Nothing,
            // As libpq: a root certificate given to prefer/require turns on the chain check.
            SslMode::Prefer | SslMode::Require if root_file.is_some() => CertificateCheck::Chain,
            SslMode::Prefer | SslMode::Require => CertificateCheck::Nothing,
            SslMode::VerifyCa => CertificateCheck::Chain,
            SslMode::VerifyFull => CertificateCheck::ChainAndHostName,
        };
        if mode == SslMode::VerifyCa && root_file.is_none() {
            return Err(ReplicationError::Config(
                "sslmode=verify-ca needs sslrootcert=<file with the CA that signed the server's certificate>; \
                 without it use sslmode=verify-full, which checks the host name against the system's CAs"
                    .into(),
            ));
        }
        let client_identity = match (&params.sslcert, &params.sslkey) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            _ => {
                return Err(ReplicationError::Config(
                    "sslcert and sslkey go together: give both files for a client certificate, or neither".into(),
                ))
            }
        };
        let trust_source = match &root_file {
            Some(path) => format!("sslrootcert={}", path.display()),
            None => "the system's trusted CAs".to_owned(),
        };
        let mut policy = TlsPolicy { mode, check, trust_source, config: None };
        if mode != SslMode::Disable {
            policy.config = Some(Arc::new(build_client_config(check, root_file.as_deref(), client_identity)?));
        }
        Ok(policy)
    }

    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// The same policy with TLS switched off, for `prefer`'s plain retry.
    pub(crate) fn without_tls(&self) -> Self {
        TlsPolicy {
            mode: SslMode::Disable,
            check: CertificateCheck::Nothing,
            trust_source: String::new(),
            config: None,
        }
    }

    /// Sends `SSLRequest` on a fresh TCP connection and, if the server agrees,
    /// runs the TLS handshake; hands the socket back for a plain session when
    /// the mode allows that.
    pub(crate) async fn negotiate(&self, mut tcp: TcpStream, host: &str, endpoint: &str) -> Result<Negotiated> {
        let Some(config) = &self.config else { return Ok(Negotiated::Plain(tcp)) };
        let io_error = |source| ReplicationError::Io { endpoint: endpoint.to_owned(), source };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        tcp.write_all(&request).await.map_err(io_error)?;
        // Exactly one byte is read, straight from the socket: anything the
        // server sends after 'S' must go through the TLS layer, never be
        // taken as plaintext protocol (CVE-2021-23222).
        let answer = tcp.read_u8().await.map_err(io_error)?;
        match answer {
            b'S' => {}
            b'N' if self.mode.requires_tls() => {
                return Err(ReplicationError::Tls {
                    endpoint: endpoint.to_owned(),
                    reason: format!(
                        "the server does not accept TLS connections but sslmode={}; turn on ssl in the server's \
                         postgresql.conf, or use sslmode=prefer or disable",
                        self.mode
                    ),
                })
            }
            b'N' => return Ok(Negotiated::Plain(tcp)),
            b'E' => return Err(read_refusal(&mut tcp, endpoint).await),
            other => {
                return Err(ReplicationError::Protocol(format!(
                    "the server answered SSLRequest with byte {other:#04x}, expected 'S' or 'N'; is this a PostgreSQL server?"
                )))
            }
        }
        let server_name = self.server_name(host, &tcp)?;
        TlsConnector::from(Arc::clone(config))
            .connect(server_name, tcp)
            .await
            .map(|session| Negotiated::Tls(Box::new(session)))
            .map_err(|err| self.explain_handshake_failure(err, host, endpoint))
    }

    fn server_name(&self, host: &str, tcp: &TcpStream) -> Result<ServerName<'static>> {
        match ServerName::try_from(host) {
            Ok(name) => Ok(name.to_owned()),
            Err(_) if self.check == CertificateCheck::ChainAndHostName => Err(ReplicationError::Config(format!(
                "host {host:?} is neither a DNS name nor an IP address, so sslmode=verify-full cannot check it \
                 against the certificate"
            ))),
            // The name is only used for SNI here; the peer's address serves.
            Err(_) => tcp
                .peer_addr()
                .map(|address| ServerName::IpAddress(address.ip().into()))
                .map_err(|source| ReplicationError::Io { endpoint: host.to_owned(), source }),
        }
    }

    fn explain_handshake_failure(&self, err: io::Error, host: &str, endpoint: &str) -> ReplicationError {
        let Some(tls_error) = err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
            // Not a TLS verdict but the socket failing mid-handshake: worth retrying.
            return ReplicationError::Io { endpoint: endpoint.to_owned(), source: err };
        };
        let mode = self.mode;
        let reason = match tls_error {
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
                "the server's certificate is not signed by a CA from {} (sslmode={mode}); point sslrootcert at \
                 the CA certificate that issued the server's certificate",
                self.trust_source
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => format!(
                "the server's certificate is not valid for host {host:?} (sslmode={mode} checks the name); connect \
                 with a host name the certificate lists, or use sslmode=verify-ca to check only the CA"
            ),
            rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ) => format!(
                "the server's certificate is outside its validity period (sslmode={mode}); renew it on the \
                 server, or check this machine's clock"
            ),
            rustls::Error::InvalidCertificate(other) => {
                format!("the server's certificate was rejected (sslmode={mode}): {other:?}")
            }
            rustls::Error::AlertReceived(alert) => format!(
                "the server aborted the TLS handshake with alert {alert:?} (sslmode={mode}); if the server asks \
                 for a client certificate, give sslcert and sslkey; the server's log says more"
            ),
            other => format!("the TLS handshake failed (sslmode={mode}): {other}"),
        };
        ReplicationError::Tls { endpoint: endpoint.to_owned(), reason }
    }
}

/// Reads the `ErrorResponse` a server sends instead of 'S'/'N' (for example
/// when it has too many connections) and turns it into a server error.
async fn read_refusal(tcp: &mut TcpStream, endpoint: &str) -> ReplicationError {
    let io_error = |source| ReplicationError::Io { endpoint: endpoint.to_owned(), source };
    let declared = match tcp.read_u32().await {
        Ok(length) => length as usize,
        Err(source) => return io_error(source),
    };
    if !(4..=MAX_SSL_REFUSAL_LEN).contains(&declared) {
        return ReplicationError::Protocol(format!(
            "the server answered SSLRequest with an error message of length {declared}"
        ));
    }
    // Re-assemble the whole frame (tag, length, body) for the parser.
    let mut frame = BytesMut::with_capacity(declared + 1);
    frame.put_u8(b'E');
    frame.put_u32(declared as u32);
    let mut body = vec![0; declared - 4];
    if let Err(source) = tcp.read_exact(&mut body).await {
        return io_error(source);
    }
    frame.put_slice(&body);
    match backend::Message::parse(&mut frame) {
        Ok(Some(backend::Message::ErrorResponse(body))) => ReplicationError::Server(server_error(&body)),
        _ => ReplicationError::Protocol("the server answered SSLRequest with an unparseable error message".into()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_client_config(
    check: CertificateCheck,
    root_file: Option<&Path>,
    client_identity: Option<(PathBuf, PathBuf)>,
) -> Result<ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| ReplicationError::Config(format!("cannot set up TLS: {err}")))?;
    let builder = match check {
        CertificateCheck::Nothing => {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(LenientVerifier { roots: None, algorithms }))
        }
        CertificateCheck::Chain => {
            let roots = Some(Arc::new(load_roots(root_file)?));
            builder.dangerous().with_custom_certificate_verifier(Arc::new(LenientVerifier { roots, algorithms }))
        }
        CertificateCheck::ChainAndHostName => builder.with_root_certificates(load_roots(root_file)?),
    };
    let mut config = match client_identity {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let chain = read_certificates(&cert_file, "sslcert")?;
            let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|err| {
                ReplicationError::Config(format!(
                    "cannot read a private key from sslkey={}: {err}; give a PEM file (PKCS#8, PKCS#1 or SEC1)",
                    key_file.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|err| {
                ReplicationError::Config(format!(
                    "sslkey={} does not fit sslcert={}: {err}",
                    key_file.display(),
                    cert_file.display()
                ))
            })?
        }
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// The CAs in `root_file`, or the system's when there is none.
fn load_roots(root_file: Option<&Path>) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root_file {
        Some(path) => {
            for certificate in read_certificates(path, "sslrootcert")? {
                roots.add(certificate).map_err(|err| {
                    ReplicationError::Config(format!(
                        "sslrootcert={} holds a certificate that cannot be a trust anchor: {err}",
                        path.display()
                    ))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _unparseable) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors = found.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                return Err(ReplicationError::Config(format!(
                    "sslmode=verify-full without sslrootcert trusts the system's CAs, but none were found ({errors}); \
                     give sslrootcert=<CA file>"
                )));
            }
        }
    }
    Ok(roots)
}

/// All certificates of a PEM file; `setting` names the option for errors.
fn read_certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>> {
    let unreadable = |err: &dyn fmt::Display| {
        ReplicationError::Config(format!("cannot read certificates from {setting}={}: {err}", path.display()))
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|err| unreadable(&err))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| unreadable(&err))?;
    if certificates.is_empty() {
        return Err(unreadable(&"no PEM certificate (-----BEGIN CERTIFICATE-----) in the file"));
    }
    Ok(certificates)
}

/// The two checks rustls's own verifier cannot do, because it always checks
/// the host name:
/// - `roots: None` — `sslmode=require`/`prefer` without a root certificate:
///   encryption without authentication of the server, exactly what libpq
///   does;
/// - `roots: Some(..)` — `sslmode=verify-ca`: the chain must lead to a
///   trusted CA; the host name is not looked at.
///
/// Either way the handshake signatures are verified, so the peer must hold
/// the key of the certificate it shows (which matters for channel binding).
#[derive(Debug)]
struct LenientVerifier {
    roots: Option<Arc<RootCertStore>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for LenientVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let certificate = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(&certificate, roots, intermediates, now, self.algorithms.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `ecdsa-with-SHA1`, missing from `const-oid`'s RFC 5912 table.
const ECDSA_WITH_SHA_1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");

/// The hash that `tls-server-end-point` uses for a certificate signed with `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn end_point_hash(algorithm: &ObjectIdentifier) -> Option<EndPointHash> {
    // RFC 5929 §4.1: the certificate's own signature hash, except that MD5
    // and SHA-1 are replaced by SHA-256. Algorithms without a separate hash
    // (RSASSA-PSS, whose hash hides in parameters, and EdDSA) have no
    // defined binding; PostgreSQL cannot bind to them either.
    let hash = match *algorithm {
        rfc5912::MD_5_WITH_RSA_ENCRYPTION
        | rfc5912::SHA_1_WITH_RSA_ENCRYPTION
        | rfc5912::DSA_WITH_SHA_1
        | ECDSA_WITH_SHA_1
        | rfc5912::SHA_256_WITH_RSA_ENCRYPTION
        | rfc5912::ECDSA_WITH_SHA_256
        | rfc5912::DSA_WITH_SHA_256 => EndPointHash::Sha256,
        rfc5912::SHA_224_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_224 | rfc5912::DSA_WITH_SHA_224 => {
            EndPointHash::Sha224
        }
        rfc5912::SHA_384_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_384 => EndPointHash::Sha384,
        rfc5912::SHA_512_WITH_RSA_ENCRYPTION | rfc5912::ECDSA_WITH_SHA_512 => EndPointHash::Sha512,
        _ => return None,
    };
    Some(hash)
}

/// The `tls-server-end-point` channel-binding data (RFC 5929) of the server's
/// end-entity certificate, given as DER.
pub(crate) fn tls_server_end_point(certificate_der: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let certificate = x509_cert::Certificate::from_der(certificate_der)
        .map_err(|err| format!("cannot parse the server's certificate: {err}"))?;
    let algorithm = certificate.signature_algorithm.oid;
    let hash = end_point_hash(&algorithm).ok_or_else(|| {
        format!(
            "the server's certificate is signed with algorithm {algorithm}, for which tls-server-end-point \
             channel binding is not defined"
        )
    })?;
    Ok(match hash {
        EndPointHash::Sha224 => sha2::Sha224::digest(certificate_der).to_vec(),
        EndPointHash::Sha256 => sha2::Sha256::digest(certificate_der).to_vec(),
        EndPointHash::Sha384 => sha2::Sha384::digest(certificate_der).to_vec(),
        EndPointHash::Sha512 => sha2::Sha512::digest(certificate_der).to_vec(),
    })
}

/// The channel-binding data of an established TLS session, or why there is none.
pub(crate) fn session_end_point(stream: &TlsStream<TcpStream>) -> std::result::Result<Vec<u8>, String> {
    let (_, session) = stream.get_ref();
    let end_entity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| "the server presented no certificate".to_owned())?;
    tls_server_end_point(end_entity.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> TlsParams {
        let mut params = TlsParams::default();
        for (key, value) in pairs {
            let value = Some((*value).to_owned());
            match *key {
                "sslmode" => params.sslmode = value,
                "sslrootcert" => params.sslrootcert = value,
                "sslcert" => params.sslcert = value,
                "sslkey" => params.sslkey = value,
                other => panic!("not a TLS setting: {other}"),
            }
        }
        params
    }

    fn config_error(pairs: &[(&str, &str)]) -> String {
        match TlsPolicy::from_params(&params(pairs)) {
            Err(ReplicationError::Config(message)) => message,
            other => panic!("expected a config error for {pairs:?}, got {other:?}"),
        }
    }

    #[test]
    fn modes_parse_with_libpq_spelling_and_prefer_is_the_default() {
        for mode in [SslMode::Disable, SslMode::Prefer, SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
            assert_eq!(SslMode::parse(mode.as_str()).unwrap(), mode);
        }
        let policy = TlsPolicy::from_params(&TlsParams::default()).unwrap();
        assert_eq!(policy.mode(), SslMode::Prefer);
        assert_eq!(policy.check, CertificateCheck::Nothing);
        assert!(policy.config.is_some(), "prefer needs a TLS configuration to try");
        assert!(TlsPolicy::from_params(&params(&[("sslmode", "disable")])).unwrap().config.is_none());
    }

    #[test]
    fn unknown_and_unsupported_modes_are_refused_with_the_choices() {
        let message = config_error(&[("sslmode", "verify_full")]);
        assert!(message.contains("verify-full") && message.contains("\"verify_full\""), "{message}");
        assert!(config_error(&[("sslmode", "allow")]).contains("prefer"));
    }

    #[test]
    fn verify_ca_needs_a_root_certificate() {
        assert!(config_error(&[("sslmode", "verify-ca")]).contains("sslrootcert"));
    }

    #[test]
    fn system_roots_force_verify_full() {
        let message = config_error(&[("sslmode", "require"), ("sslrootcert", "system")]);
        assert!(message.contains("verify-full"), "{message}");
        assert!(config_error(&[("sslmode", "verify-ca"), ("sslrootcert", "system")]).contains("verify-full"));
    }

    #[test]
    fn missing_root_file_names_the_setting_and_path() {
        let message = config_error(&[("sslmode", "require"), ("sslrootcert", "/nonexistent/ca.pem")]);
        assert!(message.contains("sslrootcert=/nonexistent/ca.pem"), "{message}");
    }

    #[test]
    fn client_certificate_needs_both_files() {
        assert!(config_error(&[("sslcert", "/c.pem")]).contains("sslkey"));
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        assert_eq!(end_point_hash(&rfc5912::MD_5_WITH_RSA_ENCRYPTION), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&rfc5912::SHA_1_WITH_RSA_ENCRYPTION), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&ECDSA_WITH_SHA_1), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&rfc5912::ECDSA_WITH_SHA_256), Some(EndPointHash::Sha256));
        assert_eq!(end_point_hash(&rfc5912::SHA_384_WITH_RSA_ENCRYPTION), Some(EndPointHash::Sha384));
        assert_eq!(end_point_hash(&rfc5912::ECDSA_WITH_SHA_384), Some(EndPointHash::Sha384));
        assert_eq!(end_point_hash(&rfc5912::SHA_512_WITH_RSA_ENCRYPTION), Some(EndPointHash::Sha512));
        assert_eq!(end_point_hash(&rfc5912::ID_RSASSA_PSS), None);
        assert_eq!(end_point_hash(&ObjectIdentifier::new_unwrap("1.3.101.112")), None, "Ed25519");
    }

    #[test]
    fn end_point_hashes_the_whole_certificate_with_the_signature_hash() {
        for (algorithm, length) in [(&rcgen::PKCS_ECDSA_P256_SHA256, 32), (&rcgen::PKCS_ECDSA_P384_SHA384, 48)] {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let certificate =
                rcgen::CertificateParams::new(vec!["db.example".to_owned()]).unwrap().self_signed(&key).unwrap();
            let end_point = tls_server_end_point(certificate.der()).unwrap();
            assert_eq!(end_point.len(), length);
            let expected = if length == 32 {
                sha2::Sha256::digest(certificate.der()).to_vec()
            } else {
                sha2::Sha384::digest(certificate.der()).to_vec()
            };
            assert_eq!(end_point, expected);
        }
    }

    #[test]
    fn ed25519_certificates_cannot_be_bound_to() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let certificate =
            rcgen::CertificateParams::new(vec!["db.example".to_owned()]).unwrap().self_signed(&key).unwrap();
        let reason = tls_server_end_point(certificate.der()).unwrap_err();
        assert!(reason.contains("1.3.101.112"), "{reason}");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(tls_server_end_point(b"not DER").unwrap_err().contains("cannot parse"));
    }
}
