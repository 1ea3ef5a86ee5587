//! Pre-parsing of connection strings: takes out the libpq TLS settings that
//! `tokio_postgres::Config` does not know (`sslrootcert`, `sslcert`, `sslkey`)
//! or only knows in part (`sslmode`: no `verify-ca`/`verify-full`), and hands
//! the rest back unchanged in meaning for `tokio_postgres::Config` to parse.
//!
//! Both libpq forms are handled, with the same tokenization rules as
//! `tokio_postgres`'s parser so that both agree on where each setting starts
//! and ends: `postgres://…?key=value&…` (keys and values percent-decoded) and
//! `key=value key='quoted \' value'`.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::error::{ReplicationError, Result};

/// The settings this crate interprets itself, as written in the connection string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) sslmode: Option<String>,
    pub(crate) sslrootcert: Option<String>,
    pub(crate) sslcert: Option<String>,
    pub(crate) sslkey: Option<String>,
}

impl TlsParams {
    /// Stores `value` if `key` is one of ours; tells whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        let slot = match key {
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            _ => return false,
        };
        // As in libpq, a later occurrence overrides an earlier one.
        *slot = Some(value);
        true
    }
}

/// Splits `conninfo` into the TLS settings and a connection string without them.
pub(crate) fn split_tls_params(conninfo: &str) -> Result<(String, TlsParams)> {
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = conninfo.strip_prefix(prefix) {
            return split_url(prefix, rest);
        }
    }
    split_key_values(conninfo)
}

fn split_url(prefix: &str, rest: &str) -> Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    // tokio_postgres takes everything up to the first '@' as credentials, so a
    // '?' inside a password is not the start of the query string.
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_start) = rest.get(host_start..).and_then(|tail| tail.find('?')).map(|q| host_start + q) else {
        return Ok((format!("{prefix}{rest}"), params));
    };
    let (head, query) = rest.split_at(query_start);
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(ReplicationError::Config(format!(
                "cannot parse source url: parameter {pair:?} has no '=value'"
            )));
        };
        let key = decode(key, "parameter name")?;
        if !params.take(&key, decode(value, &key)?.into_owned()) {
            kept.push(pair);
        }
    }
    let mut url = format!("{prefix}{head}");
    if !kept.is_empty() {
        url.push('?');
        url.push_str(&kept.join("&"));
    }
    Ok((url, params))
}

fn decode<'a>(text: &'a str, what: &str) -> Result<Cow<'a, str>> {
    percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| ReplicationError::Config(format!("cannot parse source url: {what} is not UTF-8 once decoded")))
}

fn split_key_values(conninfo: &str) -> Result<(String, TlsParams)> {
    let mut params = TlsParams::default();
    let mut kept = Vec::new();
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if let Some(c) = chars.peek() {
                return Err(ReplicationError::Config(format!(
                    "cannot parse source url: expected a setting name, found {c:?}"
                )));
            }
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ReplicationError::Config(format!("cannot parse source url: setting {key:?} lacks '=value'")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(ReplicationError::Config(format!(
                            "cannot parse source url: the quoted value of {key:?} is not closed"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if !params.take(&key, value.clone()) {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok((kept.join(" "), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_query_loses_only_the_tls_settings() {
        let (rest, params) = split_tls_params(
            "postgres://u:p%3Fw@db:5433/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Froot.crt",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p%3Fw@db:5433/app?application_name=x");
        assert_eq!(params.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(params.sslcert, None);
    }

    #[test]
    fn url_without_other_parameters_has_no_dangling_question_mark() {
        let (rest, params) = split_tls_params("postgresql://u@h/db?sslcert=/c.pem&sslkey=/k.pem").unwrap();
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(params.sslcert.as_deref(), Some("/c.pem"));
        assert_eq!(params.sslkey.as_deref(), Some("/k.pem"));
    }

    #[test]
    fn question_mark_in_a_password_is_not_a_query() {
        let (rest, params) = split_tls_params("postgres://u:a?b@h/db").unwrap();
        assert_eq!(rest, "postgres://u:a?b@h/db");
        assert_eq!(params, TlsParams::default());
    }

    #[test]
    fn key_values_keep_quoting_and_escapes() {
        let (rest, params) = split_tls_params(
            "host=h  user = u password='it\\'s a \\\\ pass' sslmode=require sslrootcert='/tmp/my ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(params.sslmode.as_deref(), Some("require"));
        assert_eq!(params.sslrootcert.as_deref(), Some("/tmp/my ca.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's a \\ pass"[..]));
        assert_eq!(config.get_user(), Some("u"));
        assert_eq!(config.get_dbname(), Some("d"));
    }

    #[test]
    fn later_settings_override_earlier_ones() {
        let (_, params) = split_tls_params("sslmode=require user=u sslmode=disable").unwrap();
        assert_eq!(params.sslmode.as_deref(), Some("disable"));
    }

    #[test]
    fn malformed_strings_are_config_errors() {
        assert!(matches!(split_tls_params("user=u sslrootcert='/open"), Err(ReplicationError::Config(_))));
        assert!(matches!(split_tls_params("user"), Err(ReplicationError::Config(_))));
        assert!(matches!(split_tls_params("postgres://h/db?sslmode"), Err(ReplicationError::Config(_))));
    }
}
