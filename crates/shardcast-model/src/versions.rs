//! The models directory: `<models_dir>/<name>/<version>/`, one directory per
//! saved [`Model`](crate::forecaster::Model), versions numbered 1, 2, 3…
//!
//! The server and the command line find versions the same way through this
//! module: a version is a subdirectory whose name is a number in `u32` and
//! that holds a model's `config.json`. Anything else in the directory (a
//! half-written model's hidden temporary, notes, a `latest` link) is not a
//! version.

use std::io;
use std::path::{Path, PathBuf};

use crate::forecaster::CONFIG_FILE;

/// The version numbers of the model directory `dir` (`<models_dir>/<name>`),
/// ascending. A missing or unreadable directory has none.
pub fn versions(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = numbered(dir)
        .into_iter()
        .filter(|(_, p)| p.join(CONFIG_FILE).is_file())
        .map(|(v, _)| v)
        .collect();
    out.sort_unstable();
    out
}

/// The newest version of model `name` under `models_dir` and its directory.
pub fn newest(models_dir: &Path, name: &str) -> Option<(u32, PathBuf)> {
    let dir = models_dir.join(name);
    let v = *versions(&dir).last()?;
    Some((v, dir.join(v.to_string())))
}

/// The version directory `path` names: itself when it holds a model
/// (`models/<name>/<version>`), else the newest version of the model it
/// names (`models/<name>`); `None` when it is neither.
pub fn resolve(path: &Path) -> Option<PathBuf> {
    if path.join(CONFIG_FILE).is_file() {
        return Some(path.to_path_buf());
    }
    let name = path.file_name()?.to_str()?;
    newest(path.parent()?, name).map(|(_, dir)| dir)
}

/// The number for a new version of the model directory `dir`: one more than
/// every numbered subdirectory, with or without a model in it (1 when there
/// are none), so that a new version never reuses a directory.
pub fn next_version(dir: &Path) -> io::Result<u32> {
    if !dir.exists() {
        return Ok(1);
    }
    std::fs::read_dir(dir)?;
    let max = numbered(dir).into_iter().map(|(v, _)| v).max().unwrap_or(0);
    max.checked_add(1)
        .ok_or_else(|| io::Error::other(format!("{} already holds version {max}", dir.display())))
}

/// Subdirectories of `dir` named by a number, with their paths.
fn numbered(dir: &Path) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_numbered_directories_holding_a_model() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("default");
        assert!(versions(&m).is_empty());
        assert_eq!(newest(d.path(), "default"), None);
        assert_eq!(next_version(&m).unwrap(), 1);
        for name in ["1", "2", "10", "foo", ".3.abc.tmp", "4"] {
            std::fs::create_dir_all(m.join(name)).unwrap();
        }
        for v in ["1", "2", "10", "foo"] {
            std::fs::write(m.join(v).join(CONFIG_FILE), "{}").unwrap();
        }
        std::fs::write(m.join("11"), "a file, not a version").unwrap();
        // 4 has no model yet; 10 sorts after 2 as a number.
        assert_eq!(versions(&m), [1, 2, 10]);
        assert_eq!(newest(d.path(), "default"), Some((10, m.join("10"))));
        assert_eq!(next_version(&m).unwrap(), 11);
        std::fs::create_dir(m.join("12")).unwrap();
        assert_eq!(
            next_version(&m).unwrap(),
            13,
            "an empty version is not reused"
        );
        assert_eq!(resolve(&m.join("2")), Some(m.join("2")));
        assert_eq!(resolve(&m), Some(m.join("10")));
        assert_eq!(resolve(&m.join("4")), None, "no model in it");
        assert_eq!(resolve(&d.path().join("other")), None);
    }
}
