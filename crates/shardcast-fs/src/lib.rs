//! Atomic writes of local files and directories.
//!
//! Every file shardcast writes outside the store (model artifacts, ONNX
//! exports, backtest and simulator CSVs, the daemon's decisions) goes through
//! this crate, so that a reader sees either the old contents or the new ones,
//! never a part, and a crash leaves at most a hidden temporary beside the
//! target. A write goes to a uniquely named temporary in the target's own
//! directory (so the rename cannot cross file systems), is flushed and synced,
//! renamed over the target, and then the directory itself is synced so that
//! the rename survives a power loss. The store's Parquet and manifest files
//! are written through `object_store`, which has its own protocol.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically: `write` fills a buffered temporary file in the
/// same directory, which is synced and renamed over `path`; the directory
/// is synced afterwards. Missing parent directories are created. On error
/// the temporary is removed and `path` is unchanged.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let (parent, name) = split(path)?;
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(parent)?;
    let (file, tmp_path) = tmp.into_parts();
    let mut w = BufWriter::new(file);
    write(&mut w)?;
    let file = w.into_inner().map_err(io::IntoInnerError::into_error)?;
    file.sync_all()?;
    drop(file);
    tmp_path.persist(path).map_err(|e| e.error)?;
    sync_dir(parent)
}

/// Writes `bytes` to `path` atomically (see [`write_file`]).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, |w| w.write_all(bytes))
}

/// Creates the directory `dir` atomically: `fill` writes its files into a
/// temporary directory beside it, whose files are then synced and which is
/// renamed to `dir` (which must not exist, or be empty); the parent is
/// synced afterwards. On error the temporary directory is removed. Errors of
/// this function's own file operations are turned into `E` by `io_err`.
pub fn write_dir<E>(
    dir: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
    io_err: impl Fn(&Path, io::Error) -> E,
) -> Result<(), E> {
    let (parent, name) = split(dir).map_err(|e| io_err(dir, e))?;
    std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(parent)
        .map_err(|e| io_err(parent, e))?;
    fill(tmp.path())?;
    sync_tree(tmp.path()).map_err(|e| io_err(tmp.path(), e))?;
    std::fs::rename(tmp.path(), dir).map_err(|e| io_err(dir, e))?;
    // The temporary is now `dir`: nothing is left to delete.
    let _ = tmp.keep();
    sync_dir(parent).map_err(|e| io_err(parent, e))
}

/// Syncs a directory, so that the entries created or renamed in it are
/// durable. A no-op where directories cannot be opened for syncing.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Syncs every regular file directly in `dir`, and `dir` itself.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// The parent directory (`.` for a bare name) and the file name of `path`.
fn split(path: &Path) -> io::Result<(&Path, String)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((parent, name.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_is_replaced_whole_and_no_temporary_is_left() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/out.csv");
        write_bytes(&p, b"old\n").unwrap();
        write_file(&p, |w| writeln!(w, "new")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(names(&d.path().join("sub")), ["out.csv"]);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.json");
        write_bytes(&p, b"{}").unwrap();
        let err = write_file(&p, |w| {
            w.write_all(b"{\"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{}");
        assert_eq!(names(d.path()), ["out.json"]);
    }

    #[test]
    fn two_writers_of_one_file_never_share_a_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_bytes(p, format!("{i}{i}{i}").as_bytes()).unwrap();
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.len(), 3);
        // One writer's whole content: three equal digits.
        let first = text.as_bytes()[0];
        assert!(text.bytes().all(|b| b == first), "{text}");
        assert_eq!(names(d.path()), ["state.json"]);
    }

    #[test]
    fn a_directory_appears_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("7");
        let err = write_dir(
            &dir,
            |tmp| {
                std::fs::write(tmp.join("config.json"), "{}")?;
                Err(io::Error::other("weights failed"))
            },
            |_, e| e,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "weights failed");
        assert!(names(d.path()).is_empty(), "{:?}", names(d.path()));
        write_dir(
            &dir,
            |tmp| std::fs::write(tmp.join("config.json"), "{}"),
            |_, e| e,
        )
        .unwrap();
        assert_eq!(names(&dir), ["config.json"]);
        assert_eq!(names(d.path()), ["7"]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write_bytes(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
