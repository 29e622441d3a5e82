//! Online backups and restores of a data directory.
//!
//! A backup is a directory holding:
//! - `db/`: a RocksDB checkpoint (consistent at one instant, taken while the
//!   server keeps writing);
//! - `keys/`: the signing key and generated TLS material (the server's identity:
//!   without it, other servers reject a restored server's signatures);
//! - `media/`: the media files, if any (content-addressed and immutable, so a
//!   copy made after the checkpoint holds at least every file it references).
//!
//! Restore copies those back into an empty data directory of a stopped server.

use std::path::Path;

use myelin_storage::Db;

use crate::EngineError;

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Bytes in the backup directory.
    pub bytes: u64,
    /// Files in the backup directory.
    pub files: u64,
}

/// Writes a backup of `db` and the files under `data_dir` into `target` (must not exist).
pub fn backup(db: &Db, data_dir: &Path, target: &Path) -> Result<BackupReport, EngineError> {
    if target.exists() {
        return Err(EngineError::Backup(format!("{} already exists; choose a new directory", target.display())));
    }
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| EngineError::io(format!("creating {}", parent.display()), e))?;
    let staging = target.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| EngineError::io(format!("removing {}", staging.display()), e))?;
    }
    std::fs::create_dir_all(&staging).map_err(|e| EngineError::io(format!("creating {}", staging.display()), e))?;
    db.checkpoint(&staging.join("db"))?;
    for sub in ["keys", "media"] {
        let from = data_dir.join(sub);
        if from.is_dir() {
            copy_tree(&from, &staging.join(sub))?;
        }
    }
    // Only a complete backup gets the requested name.
    std::fs::rename(&staging, target).map_err(|e| EngineError::io(format!("renaming to {}", target.display()), e))?;
    let mut report = BackupReport { bytes: 0, files: 0 };
    measure(target, &mut report)?;
    tracing::info!(target = %target.display(), bytes = report.bytes, files = report.files, "backup written");
    Ok(report)
}

/// Restores `backup` into `data_dir`, which must be absent or empty.
pub fn restore(backup: &Path, data_dir: &Path) -> Result<(), EngineError> {
    if !backup.join("db").join("CURRENT").is_file() {
        return Err(EngineError::Backup(format!("{} is not a Myelin backup (no db/CURRENT)", backup.display())));
    }
    if data_dir.exists() {
        let mut entries =
            std::fs::read_dir(data_dir).map_err(|e| EngineError::io(format!("reading {}", data_dir.display()), e))?;
        if entries.next().is_some() {
            return Err(EngineError::Backup(format!(
                "{} is not empty; move it away first (restore never overwrites data)",
                data_dir.display()
            )));
        }
    }
    for sub in ["db", "keys", "media"] {
        let from = backup.join(sub);
        if from.is_dir() {
            copy_tree(&from, &data_dir.join(sub))?;
        }
    }
    tracing::info!(from = %backup.display(), to = %data_dir.display(), "restore complete");
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), EngineError> {
    std::fs::create_dir_all(to).map_err(|e| EngineError::io(format!("creating {}", to.display()), e))?;
    let entries = std::fs::read_dir(from).map_err(|e| EngineError::io(format!("reading {}", from.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io(format!("reading {}", from.display()), e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| EngineError::io(format!("stat {}", src.display()), e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| EngineError::io(format!("copying {}", src.display()), e))?;
        }
    }
    Ok(())
}

fn measure(dir: &Path, report: &mut BackupReport) -> Result<(), EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io(format!("reading {}", dir.display()), e))?;
        let meta = entry.metadata().map_err(|e| EngineError::io("stat", e))?;
        if meta.is_dir() {
            measure(&entry.path(), report)?;
        } else {
            report.files += 1;
            report.bytes += meta.len();
        }
    }
    Ok(())
}
