//! What `pgfanout check` verifies of an archive folder before `run` uses it:
//! that it is (or can become) a writable folder, that its filesystem has room
//! for what retention lets the archive grow to, and that it outlives a reboot.
//!
//! It only reads: a folder that does not exist yet is judged by its nearest
//! existing parent, through `access(2)` and `statvfs(2)`, and nothing is created.

use std::path::{Path, PathBuf};

use crate::writer::ArchiveOptions;

/// `statfs` type of tmpfs, whose files are gone after a reboot.
const TMPFS_MAGIC: i128 = 0x0102_1994;

/// What [`check_folder`] found: one line each, with the fix.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    /// Something `run` would fail on or run out of.
    pub problems: Vec<String>,
    /// A risk worth fixing that does not stop `run`.
    pub warnings: Vec<String>,
}

/// Checks the archive folder `dir` for `options` (see the module docs).
pub fn check_folder(dir: &Path, options: &ArchiveOptions) -> Findings {
    let mut findings = Findings::default();
    let shown = dir.display();
    let (existing, exists) = match nearest_existing(dir) {
        Some(existing) => {
            let exists = existing == dir;
            (existing, exists)
        }
        None => {
            findings.problems.push(format!("archive.path {shown}: no part of it exists; give an absolute path"));
            return findings;
        }
    };
    if !existing.is_dir() {
        findings.problems.push(format!(
            "archive.path {shown}: {} is not a folder; point archive.path at a folder (it is created if missing)",
            existing.display()
        ));
        return findings;
    }
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    if let Err(err) = rustix::fs::access(&existing, access) {
        let what = if exists { "the folder" } else { "its parent" };
        let err = std::io::Error::from(err);
        findings.problems.push(format!(
            "archive.path {shown}: {what} {} is not writable by this user ({err}); \
             give pgfanout's user write access, e.g. chown it, or pick another folder",
            existing.display()
        ));
        return findings;
    }
    let stats = match rustix::fs::statvfs(&existing) {
        Ok(stats) => stats,
        Err(err) => {
            findings.problems.push(format!(
                "archive.path {shown}: cannot read the free space of {} ({})",
                existing.display(),
                std::io::Error::from(err)
            ));
            return findings;
        }
    };
    let free = stats.f_bavail.saturating_mul(stats.f_frsize);
    let held = if exists { folder_bytes(dir) } else { 0 };
    let mb = |bytes: u64| bytes / (1024 * 1024);
    match options.retention.max_bytes {
        // Retention runs between appends: the newest segment may fill before the oldest goes.
        Some(max_bytes) => {
            let needed = max_bytes.saturating_add(options.segment_bytes).saturating_sub(held);
            if free < needed {
                findings.problems.push(format!(
                    "archive.path {shown}: {} MB free on its filesystem, but the archive may grow by {} MB \
                     (retention_mb plus one segment_mb, less the {} MB it holds); free space, lower \
                     archive.retention_mb, or move archive.path to a larger disk",
                    mb(free),
                    mb(needed),
                    mb(held)
                ));
            }
        }
        None => findings.warnings.push(format!(
            "archive.retention_mb is not set: the archive in {shown} grows with the change rate{}, \
             and {} MB are free on its filesystem; set archive.retention_mb below that",
            match options.retention.max_age {
                Some(age) => format!(" for archive.retention_hours ({} h)", age.as_secs() / 3600),
                None => " forever (archive.retention_hours = 0)".to_owned(),
            },
            mb(free)
        )),
    }
    if rustix::fs::statfs(&existing).is_ok_and(|stats| i128::from(stats.f_type) == TMPFS_MAGIC) {
        findings.warnings.push(format!(
            "archive.path {shown} is on tmpfs: the archive is lost at reboot while the slot has moved past \
             what it held; put it on a persistent disk"
        ));
    }
    findings
}

/// `dir` itself or its nearest parent that exists.
fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors().find(|path| !path.as_os_str().is_empty() && path.exists()).map(Path::to_path_buf)
}

/// Bytes of the files directly in `dir` (the segments and their indexes).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(|entry| entry.ok()?.metadata().ok()).filter(|meta| meta.is_file()).map(|meta| meta.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::Retention;

    fn options(retention_mb: Option<u64>) -> ArchiveOptions {
        ArchiveOptions {
            segment_bytes: 1024 * 1024,
            retention: Retention { max_bytes: retention_mb.map(|mb| mb * 1024 * 1024), max_age: None },
            ..ArchiveOptions::default()
        }
    }

    #[test]
    fn a_missing_folder_under_a_writable_parent_with_room_passes() {
        let parent = tempfile::tempdir().unwrap();
        let findings = check_folder(&parent.path().join("archive/deeper"), &options(Some(1)));
        assert_eq!(findings.problems, Vec::<String>::new());
        assert!(!parent.path().join("archive").exists(), "check creates nothing");
    }

    #[test]
    fn a_file_in_the_way_and_too_little_room_are_problems() {
        let parent = tempfile::tempdir().unwrap();
        let file = parent.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        let findings = check_folder(&file.join("archive"), &options(Some(1)));
        assert!(findings.problems[0].contains("is not a folder"), "{findings:?}");

        let findings = check_folder(parent.path(), &options(Some(u64::MAX / (2 * 1024 * 1024))));
        assert!(findings.problems[0].contains("MB free on its filesystem"), "{findings:?}");
        assert!(findings.problems[0].contains("lower archive.retention_mb"), "{findings:?}");
    }

    #[test]
    fn no_size_limit_is_a_warning_naming_the_free_space() {
        let parent = tempfile::tempdir().unwrap();
        let findings = check_folder(parent.path(), &options(None));
        assert!(findings.problems.is_empty(), "{findings:?}");
        assert!(findings.warnings[0].contains("archive.retention_mb is not set"), "{findings:?}");
    }
}
