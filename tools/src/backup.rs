//! `myelin backup` and `myelin restore`.

use std::path::PathBuf;

use myelin_engine::{Engine, EngineError, backup};
use myelin_storage::{Db, StorageError, StorageOptions};

use crate::{Failure, load_config, runtime};

fn absolute(path: PathBuf) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path);
    }
    let cwd = std::env::current_dir().map_err(|e| Failure::runtime(format!("current directory: {e}")))?;
    Ok(cwd.join(path))
}

pub(super) fn backup_cmd(dir: PathBuf, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    let dir = absolute(dir)?;
    let rt = runtime()?;
    let request = serde_json::json!({ "op": "backup", "dir": dir });
    let answer = rt.block_on(myelin_api::admin::request(&config.data_dir, &request)).map_err(Failure::runtime)?;
    let (bytes, files) = match answer {
        Some(answer) => {
            if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
                let error = answer.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
                return Err(Failure::runtime(format!("backup failed: {error}")));
            }
            let n = |k: &str| answer.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            (n("bytes"), n("files"))
        }
        None => {
            // No running server: open the database ourselves.
            let options = StorageOptions { wal_bytes: 0, ..config.storage.options() };
            let db = Db::open(&Engine::db_path_of(&config), &options).map_err(|e| match e {
                StorageError::Locked(_) => Failure::usage(format!(
                    "{e}; the running server's admin socket is not reachable, so it cannot be asked for a backup"
                )),
                other => Failure::from(EngineError::from(other)),
            })?;
            let report = backup::backup(&db, &config.data_dir, &dir)?;
            db.shutdown();
            (report.bytes, report.files)
        }
    };
    println!("backup written to {} ({files} files, {bytes} bytes)", dir.display());
    Ok(())
}

pub(super) fn restore_cmd(from: PathBuf, config_path: Option<PathBuf>) -> Result<(), Failure> {
    let config = load_config(config_path)?;
    backup::restore(&from, &config.data_dir).map_err(|e| Failure::usage(e.to_string()))?;
    println!("restored {} into {}", from.display(), config.data_dir.display());
    Ok(())
}
