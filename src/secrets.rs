//! Sink passwords from the environment: `PGFANOUT_SINK_<NAME>__PASSWORD`
//! (the sink's name upper-cased, `-` as `_`) for the Redis and MongoDB
//! sinks, whose clients take the password inside the URL.
//!
//! A URL written in the config file must not carry a password (it would end
//! up in backups, diffs and ConfigMaps): such a file is refused. The password
//! from the environment is put into the URL in memory only, after loading;
//! the sinks print their store's address without the user part.
//!
//! Files that hold secrets (password files, TLS keys), and the config file
//! itself, should be readable by pgfanout's user alone: one that every user
//! of the machine may read gets a warning at load ([`world_readable_files`]).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

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

/// The config file and the secret files it names (source and sink password
/// files, TLS private keys) that other users of the machine may read (mode
/// `o+r`), each with what it holds. Files that cannot be read are left to
/// whoever opens them, which says so.
pub fn world_readable_files(config_path: &Path, config: &Config) -> Vec<(PathBuf, &'static str)> {
    let mut files: Vec<(PathBuf, &'static str)> = vec![(config_path.to_path_buf(), "the config file")];
    if let Some(file) = &config.source.password_file {
        files.push((file.clone(), "source.password_file"));
    }
    for sink in &config.sinks {
        files.extend(sink.kind().secret_files());
    }
    files.retain(|(path, _)| std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o004 != 0));
    files.dedup_by(|a, b| a.0 == b.0);
    files
}

/// Logs one warning per file of [`world_readable_files`], with the fix.
pub fn warn_world_readable(config_path: &Path, config: &Config) {
    for (path, holds) in world_readable_files(config_path, config) {
        tracing::warn!(
            file = %path.display(),
            holds,
            "file is readable by every user of this machine; restrict it to pgfanout's user (chmod o-rwx, or 0600)"
        );
    }
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
    fn world_readable_config_and_secret_files_are_listed() {
        let dir = std::env::temp_dir().join(format!("pgfanout-secrets-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("pg-password");
        let key = dir.join("client.key");
        std::fs::write(&password, "secret\n").unwrap();
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n").unwrap();
        let config_path = dir.join("pgfanout.toml");
        std::fs::write(
            &config_path,
            format!(
                "[source]\nurl = \"postgres://u@h/db\"\npassword_file = {password:?}\n\
                 [[sink]]\nname = \"cache\"\nkind = \"redis\"\nurl = \"rediss://h:6380\"\n\
                 [sink.tls]\nkey_file = {key:?}\ncert_file = {key:?}\n[[sink.table]]\nsource = \"t\"\n"
            ),
        )
        .unwrap();
        let set_mode = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let config: Config = toml_config(&config_path);

        for path in [&config_path, &password, &key] {
            set_mode(path, 0o644);
        }
        let listed: Vec<_> = world_readable_files(&config_path, &config).into_iter().map(|(path, _)| path).collect();
        assert_eq!(listed, [config_path.clone(), password.clone(), key.clone()]);

        for path in [&config_path, &password, &key] {
            set_mode(path, 0o640);
        }
        assert!(world_readable_files(&config_path, &config).is_empty());
        set_mode(&key, 0o604);
        let listed = world_readable_files(&config_path, &config);
        assert_eq!(listed, [(key.clone(), "a sink's tls.key_file")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The file parsed without `Config::load`'s checks (the key file is no real key).
    fn toml_config(path: &Path) -> Config {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::file_exact(path)).extract().unwrap()
    }

    #[test]
    fn passwords_are_percent_encoded() {
        assert_eq!(percent_encode("a-Z_9.~"), "a-Z_9.~");
        assert_eq!(percent_encode("p@ss:w/rd%"), "p%40ss%3Aw%2Frd%25");
    }
}
