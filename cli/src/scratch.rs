//! Test files: a file or folder in a temporary folder of its own, removed when dropped.

use std::path::{Path, PathBuf};

/// A file or folder in a folder of its own, removed (with that folder) when dropped.
pub struct TempPath(PathBuf);

impl std::ops::Deref for TempPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn place(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("provisioner-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A file `name` holding `text`.
pub fn file(name: &str, text: &[u8]) -> TempPath {
    let path = place(name);
    std::fs::write(&path, text).unwrap();
    TempPath(path)
}

/// An empty folder `name`.
pub fn folder(name: &str) -> TempPath {
    let path = place(name);
    std::fs::create_dir(&path).unwrap();
    TempPath(path)
}
