//! Where state lives: `$PORTHOLE_HOME`, else `$XDG_DATA_HOME/porthole`, else
//! `~/.local/share/porthole` (contracts.md). App and CLI share it.
//!
//! It holds the machines' tokens, the vault key and the database: only its owner may enter it.
//! It and `keys/` are created with mode 0700 from the start (never created, then chmod'ed), and
//! one an older version left looser is tightened when it is opened.

use crate::error::{CoreError, Result};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = var("PORTHOLE_HOME")
            .or_else(|| var("XDG_DATA_HOME").map(|d| d.join("porthole")))
            .unwrap_or_else(|| {
                var("HOME")
                    .unwrap_or_else(|| PathBuf::from("/tmp"))
                    .join(".local/share/porthole")
            });
        Self { root }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Creates the state directory (0700; see the module doc).
    pub fn create(&self) -> Result<()> {
        ensure_private_dir(&self.root)
    }
    /// Creates `keys/` (0700, in a 0700 state directory) and returns it.
    pub fn create_keys(&self) -> Result<PathBuf> {
        self.create()?;
        let k = self.keys();
        ensure_private_dir(&k)?;
        Ok(k)
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("porthole.db")
    }
    pub fn machines(&self) -> PathBuf {
        self.root.join("machines")
    }
    pub fn machine(&self, name: &str) -> PathBuf {
        self.machines().join(name)
    }
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    pub fn recordings(&self) -> PathBuf {
        self.root.join("recordings")
    }
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }
}

/// Creates `dir` (and missing parents) with mode 0700 from the start; an existing one of ours
/// that others can enter is tightened to 0700 (what is inside was made private already).
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    crate::machine::create_private_dir(dir)?;
    let md = std::fs::metadata(dir).map_err(CoreError::io(format!("stat {}", dir.display())))?;
    // SAFETY: geteuid has no preconditions.
    if md.mode() & 0o077 != 0 && md.uid() == unsafe { libc::geteuid() } {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(CoreError::io(format!("make {} private", dir.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn state_and_keys_dirs_are_private_from_the_start() {
        let d = tempfile::tempdir().unwrap();
        let st = StateDir::at(d.path().join("new/porthole"));
        let keys = st.create_keys().unwrap();
        assert_eq!(mode(st.root()), 0o700);
        assert_eq!(
            mode(&d.path().join("new")),
            0o700,
            "a parent created on the way"
        );
        assert_eq!(mode(&keys), 0o700);
        // One an older version made 0755 is tightened.
        let old = StateDir::at(d.path().join("old"));
        std::fs::create_dir_all(old.keys()).unwrap();
        for p in [old.root().to_path_buf(), old.keys()] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        old.create_keys().unwrap();
        assert_eq!(mode(old.root()), 0o700);
        assert_eq!(mode(&old.keys()), 0o700);
    }
}
