//! Where state lives: `$PORTHOLE_HOME`, else `$XDG_DATA_HOME/porthole`, else
//! `~/.local/share/porthole` (contracts.md). App and CLI share it.

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
