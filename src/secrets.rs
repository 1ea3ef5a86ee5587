//! Sink passwords from the environment: `PGFANOUT_SINK_<NAME>__PASSWORD`
//! (the sink's name upper-cased, `-` as `_`) for the Redis and MongoDB
//! sinks, whose clients take the password inside the URL.
//!
//! A URL written in the config file must not carry a password (it would end
//! up in backups, diffs and ConfigMaps): such a file is refused. The password
//! from the environment is put into the URL in memory only, after loading;
//! the sinks print their store's address without the user part.

use crate::config::Config;

/// The environment variable holding sink `name`'s password.
pub fn password_variable(name: &str) -> String {
    format!("PGFANOUT_SINK_{}__PASSWORD", name.to_ascii_uppercase().replace('-', "_"))
}

/// Refuses sink URLs that carry a password and fills in the passwords the
/// environment gives; one problem per sink, each saying what to change.
pub fn apply_sink_passwords(config: &mut Config) -> Vec<String> {
    let mut problems = Vec::new();
    for sink in &mut config.sinks {
        let name = sink.name().to_owned();
        // Which kinds take the password in their URL: see crate::sinks.
        let Some((url, needs_user)) = sink.kind_mut().password_url() else { continue };
        let variable = password_variable(&name);
        let Some((prefix, user, rest)) = split_user(url) else {
            continue;
        };
        if user.is_some_and(|user| user.contains(':')) {
            problems.push(format!(
                "sink {name}: the url carries a password; remove it from the file and set {variable} instead"
            ));
            continue;
        }
        let Ok(password) = std::env::var(&variable) else {
            continue;
        };
        if needs_user && user.is_none_or(str::is_empty) {
            problems.push(format!("sink {name}: {variable} is set but the url names no user (scheme://user@host)"));
            continue;
        }
        *url = format!("{prefix}{}:{}@{rest}", user.unwrap_or_default(), percent_encode(&password));
    }
    problems
}

/// `scheme://[user@]rest` as (`scheme://`, user, rest); `None` without `://`.
fn split_user(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let start = url.find("://")? + 3;
    let (prefix, after) = url.split_at(start);
    let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(match after[..authority_end].rfind('@') {
        Some(at) => (prefix, Some(&after[..at]), &after[at + 1..]),
        None => (prefix, None, after),
    })
}

/// Every byte outside RFC 3986's unreserved set as `%XX`, so any password
/// fits in a URL's user part.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_follow_the_sink_name() {
        assert_eq!(password_variable("cache"), "PGFANOUT_SINK_CACHE__PASSWORD");
        assert_eq!(password_variable("read-model"), "PGFANOUT_SINK_READ_MODEL__PASSWORD");
    }

    #[test]
    fn user_part_is_split_from_the_authority_only() {
        assert_eq!(split_user("redis://h:6379/0"), Some(("redis://", None, "h:6379/0")));
        assert_eq!(split_user("mongodb://app@h/db?x=a@b"), Some(("mongodb://", Some("app"), "h/db?x=a@b")));
        assert_eq!(split_user("redis://:pw@h"), Some(("redis://", Some(":pw"), "h")));
        assert_eq!(split_user("no-scheme"), None);
    }

    #[test]
    fn passwords_are_percent_encoded() {
        assert_eq!(percent_encode("a-Z_9.~"), "a-Z_9.~");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }
}
