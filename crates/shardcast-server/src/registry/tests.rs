use std::path::{Path, PathBuf};

use super::*;

/// The bundled model, copied in as `versions` of `default` under a temp dir.
fn models(versions: &[u32]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for v in versions {
        copy_version(tmp.path(), *v);
    }
    tmp
}

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default/1")
}

fn copy_version(root: &Path, v: u32) -> PathBuf {
    let dst = root.join("default").join(v.to_string());
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "model.safetensors", "metrics.json"] {
        std::fs::copy(bundled().join(f), dst.join(f)).unwrap();
    }
    dst
}

fn corrupt(dir: &Path) {
    let w = dir.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
}

#[test]
fn serves_the_newest_loadable_version_and_lists_versions() {
    let tmp = models(&[1, 2]);
    std::fs::create_dir_all(tmp.path().join("default/notes")).unwrap();
    assert_eq!(versions(&tmp.path().join("default")), vec![1, 2]);
    let r = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle).unwrap();
    assert_eq!(r.current().version, 2);
    assert!(r.current().validation_loss.is_some());
    assert!(r.refused().is_empty());
}

#[test]
fn a_corrupt_newest_version_is_refused_and_an_older_one_served() {
    let tmp = models(&[1, 2]);
    corrupt(&tmp.path().join("default/2"));
    let r = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle).unwrap();
    assert_eq!(r.current().version, 1);
    let refused = r.refused();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].starts_with("version 2:"), "{refused:?}");
    assert!(refused[0].contains("model.safetensors"), "{refused:?}");
}

#[test]
fn no_loadable_model_is_an_error_naming_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let err = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no loadable model"), "{err}");
    let dir = copy_version(tmp.path(), 1);
    corrupt(&dir);
    let err = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle)
        .unwrap_err()
        .to_string();
    assert!(err.contains("every version was refused"), "{err}");
}

#[test]
fn poll_follows_new_versions_and_skips_bad_ones() {
    let tmp = models(&[1]);
    let r = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle).unwrap();
    assert_eq!(r.poll(), None);
    let bad = copy_version(tmp.path(), 3);
    corrupt(&bad);
    assert_eq!(r.poll(), None, "a corrupt version must not be served");
    assert_eq!(r.current().version, 1);
    copy_version(tmp.path(), 2);
    // 3 stays refused; 2 is the newest loadable version newer than 1.
    assert_eq!(r.poll(), Some(2));
    assert_eq!(r.current().version, 2);
    assert_eq!(r.poll(), None);
}

#[test]
fn rollback_pins_until_reload() {
    let tmp = models(&[1, 2]);
    let r = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle).unwrap();
    // Nothing served before: no previous version to go back to.
    let err = r.rollback(None).unwrap_err().to_string();
    assert!(err.contains("no version was served before"), "{err}");
    assert_eq!(r.rollback(Some(1)).unwrap().version, 1);
    copy_version(tmp.path(), 3);
    assert_eq!(r.poll(), None, "pinned by the rollback");
    assert_eq!(r.current().version, 1);
    let err = r.rollback(Some(9)).unwrap_err().to_string();
    assert!(err.contains("version 9"), "{err}");
    assert_eq!(
        r.current().version,
        1,
        "a failed rollback keeps the current version"
    );
    assert_eq!(r.reload().version, 3);
    // 2 -> 1 (rollback) -> 3 (reload): rolling back goes to 1, then 2,
    // never forward to 3 again.
    assert_eq!(r.rollback(None).unwrap().version, 1);
    assert_eq!(r.rollback(None).unwrap().version, 2);
    assert!(r.rollback(None).is_err(), "nothing served before 2");
    assert_eq!(r.current().version, 2);
}

#[test]
fn a_refused_version_is_tried_again_once_its_files_change() {
    let tmp = models(&[1]);
    let r = ModelRegistry::open(tmp.path(), "default", ModelFormat::Candle).unwrap();
    // A slow copy: the config first, the weights later.
    let dst = tmp.path().join("default/2");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["config.json", "metrics.json"] {
        std::fs::copy(bundled().join(f), dst.join(f)).unwrap();
    }
    assert_eq!(r.poll(), None);
    assert!(
        r.refused().is_empty(),
        "no weights yet: passed over, not refused"
    );
    // Half of the weights: refused, with the reason, and not served.
    let weights = std::fs::read(bundled().join("model.safetensors")).unwrap();
    std::fs::write(dst.join("model.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert_eq!(r.poll(), None);
    let why = r.refusal(2).expect("version 2 refused");
    assert!(why.contains("version 2"), "{why}");
    assert_eq!(r.poll(), None, "unchanged files stay refused");
    assert_eq!(r.current().version, 1);
    // The copy completes: the next poll serves it, no reload needed.
    std::fs::write(dst.join("model.safetensors"), &weights).unwrap();
    assert_eq!(r.poll(), Some(2));
    assert_eq!(r.current().version, 2);
    assert_eq!(r.refusal(2), None);
    assert!(r.refused().is_empty(), "{:?}", r.refused());
}
