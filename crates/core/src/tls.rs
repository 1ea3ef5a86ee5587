//! `[sink.tls]`: the certificate files a sink's TLS connection uses, shared
//! by every sink kind so that each reads and checks them the same way.
//!
//! What turns TLS on is the sink's own convention (`rediss://`, `bolt+s://`,
//! `neo4j+s://`, MongoDB's `tls=true`, or the section's presence for
//! Cassandra/ScyllaDB); this section only says which CA to trust and which
//! client certificate to present. Server certificates are always verified:
//! against `ca_file` when set, else against the system's roots.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Certificate files for TLS to a store.
///
/// ```toml
/// [sink.tls]
/// ca_file = "/etc/pgfanout/tls/store-ca.pem"
/// cert_file = "/etc/pgfanout/tls/client.pem"   # optional: mutual TLS
/// key_file = "/etc/pgfanout/tls/client.key"
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) the server's certificate must chain
    /// to. Default: the system's trusted roots.
    /// Example: `"/etc/pgfanout/tls/store-ca.pem"`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (chain) to present, for servers
    /// that require one (mutual TLS); needs `key_file`. Default: none.
    /// Example: `"/etc/pgfanout/tls/client.pem"`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (unencrypted).
    /// Default: none. Example: `"/etc/pgfanout/tls/client.key"`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// The PEM contents of a [`TlsConfig`]'s files, read once.
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The CA certificates, when `ca_file` is set.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate and its key, when both are set.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsFiles {
    // The key is a secret: say whether it is there, never what it holds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl TlsConfig {
    /// Problems with the section, each prefixed with `sink <name>: tls.` and
    /// saying what to change: a certificate without its key (or the other way
    /// round), a file that cannot be read or holds no PEM block of the kind
    /// expected.
    pub fn problems(&self, sink: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(format!(
                "sink {sink}: tls.cert_file and tls.key_file go together (the client certificate and its key); set both or neither"
            ));
        }
        let files = [("ca_file", &self.ca_file, "CERTIFICATE"), ("cert_file", &self.cert_file, "CERTIFICATE")];
        for (key, path, kind) in files {
            if let Some(path) = path {
                if let Err(problem) = read_pem(path, kind) {
                    problems.push(format!("sink {sink}: tls.{key}: {problem}"));
                }
            }
        }
        if let Some(path) = &self.key_file {
            if let Err(problem) = read_pem(path, "PRIVATE KEY") {
                problems.push(format!("sink {sink}: tls.key_file: {problem}"));
            }
        }
        problems
    }

    /// Reads the files; the error says which file and what is wrong.
    pub fn read(&self) -> Result<TlsFiles, String> {
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read_pem(path, "CERTIFICATE").map_err(|e| format!("tls.ca_file: {e}"))?),
            None => None,
        };
        let client = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some((
                read_pem(cert, "CERTIFICATE").map_err(|e| format!("tls.cert_file: {e}"))?,
                read_pem(key, "PRIVATE KEY").map_err(|e| format!("tls.key_file: {e}"))?,
            )),
            _ => None,
        };
        Ok(TlsFiles { ca_pem, client })
    }
}

/// What to check when a connection error says the server's certificate
/// was refused (`None` for any other error). The drivers' own words
/// ("invalid peer certificate: UnknownIssuer", "certificate verify failed")
/// say what failed, not what to do.
pub fn certificate_hint(error: &str) -> Option<&'static str> {
    let lower = error.to_ascii_lowercase();
    (lower.contains("certificate") && !lower.contains("tls.")).then_some(
        "the store's TLS certificate was not accepted: it must be signed by a CA in [sink.tls] ca_file \
         (the system's roots when unset) and name the host or IP address the sink connects to",
    )
}

/// The file's bytes, when it holds at least one PEM block whose label ends
/// with `kind` (`PRIVATE KEY` matches PKCS#8, PKCS#1 `RSA` and SEC1 `EC` keys).
fn read_pem(path: &Path, kind: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .any(|label| label.ends_with(kind));
    if found {
        Ok(bytes)
    } else {
        Err(format!("{} holds no PEM {kind} block (-----BEGIN {kind}-----)", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n";

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn certificate_errors_get_a_hint_and_others_none() {
        assert!(certificate_hint("cannot reach redis at h:6380: invalid peer certificate: UnknownIssuer").is_some());
        assert!(certificate_hint("ssl routines: certificate verify failed").is_some());
        assert!(certificate_hint("cannot reach redis at h:6379: Connection refused").is_none());
        // A file problem already says what to do.
        assert!(certificate_hint("sink tls settings: tls.ca_file: /x holds no PEM CERTIFICATE block").is_none());
    }

    #[test]
    fn files_are_checked_for_their_kind_of_pem_block() {
        let dir = std::env::temp_dir().join(format!("pgfanout-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = TlsConfig {
            ca_file: Some(file(&dir, "ca.pem", CERT)),
            cert_file: Some(file(&dir, "cert.pem", CERT)),
            key_file: Some(file(&dir, "key.pem", KEY)),
        };
        assert!(tls.problems("cache").is_empty(), "{:?}", tls.problems("cache"));
        let files = tls.read().unwrap();
        assert!(files.ca_pem.is_some() && files.client.is_some());
        assert!(!format!("{files:?}").contains("MHc"), "the key never shows in Debug");

        let swapped = TlsConfig { ca_file: Some(dir.join("key.pem")), ..tls.clone() };
        let problems = swapped.problems("cache");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("sink cache: tls.ca_file: ") && problems[0].contains("no PEM CERTIFICATE"));

        let missing = TlsConfig { ca_file: Some(dir.join("absent.pem")), key_file: None, ..tls };
        let problems = missing.problems("cache");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("set both or neither"), "{problems:?}");
        assert!(problems[1].contains("cannot read") && problems[1].contains("absent.pem"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
