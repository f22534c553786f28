//! Typed forms of the environment files.
//!
//! Files are checked by the validator before they reach these types, but the types still deny
//! unknown fields so that deserializing them directly is never laxer than checking a file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Cursor's `.cursor/environment.json`, exactly: every field it accepts and no other.
///
/// Startup runs in this order: restore `snapshot` (or `build`), `install`, `start`,
/// `terminals`. Only disk state survives a snapshot; processes do not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CursorEnvironment {
    /// Name of the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// User that `install`, `start` and the terminals run as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Blocking setup command, run from the repository root after the snapshot is restored or
    /// built. It runs again on every start, so it must be idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// Background command run after `install`; startup does not wait for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Commands each run in a window of one shared tmux session, which the agent can attach to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminals: Vec<Terminal>,
    /// Ports the environment serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// Other repositories the environment needs access to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repository_dependencies: Vec<String>,
    /// Build the machine image from a Dockerfile instead of restoring a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// Snapshot to restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Whether the agent may replace the snapshot with the machine's current disk state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_can_update_snapshot: Option<bool>,
    /// A container image to start from (accepted, not applied yet: `not applied: image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Outbound network policy ([`crate::egress::Policy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mode: Option<String>,
    /// Hosts reachable when egress is restricted ([`crate::egress::Policy`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowlist: Vec<String>,
    /// MCP servers the coding agent may use (accepted, not applied yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_server_allowlist: Vec<String>,
    /// No MCP servers for the coding agent (accepted, not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_all_mcp_servers: Option<bool>,
    /// The browser the agent's browser tools start (accepted, not applied yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chrome_executable_path: Option<String>,
}

/// Porthole's `.porthole/environment.json`: every field of [`CursorEnvironment`] with the same
/// meaning, plus the fields below. Unknown fields are rejected here too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortholeEnvironment {
    /// As in [`CursorEnvironment::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// As in [`CursorEnvironment::user`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// As in [`CursorEnvironment::install`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<String>,
    /// As in [`CursorEnvironment::start`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// As in [`CursorEnvironment::terminals`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terminals: Vec<Terminal>,
    /// As in [`CursorEnvironment::ports`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    /// As in [`CursorEnvironment::repository_dependencies`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repository_dependencies: Vec<String>,
    /// As in [`CursorEnvironment::build`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// As in [`CursorEnvironment::snapshot`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// As in [`CursorEnvironment::agent_can_update_snapshot`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_can_update_snapshot: Option<bool>,
    /// As in [`CursorEnvironment::image`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// As in [`CursorEnvironment::egress_mode`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mode: Option<String>,
    /// As in [`CursorEnvironment::egress_allowlist`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allowlist: Vec<String>,
    /// As in [`CursorEnvironment::mcp_server_allowlist`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_server_allowlist: Vec<String>,
    /// As in [`CursorEnvironment::disable_all_mcp_servers`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_all_mcp_servers: Option<bool>,
    /// As in [`CursorEnvironment::chrome_executable_path`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chrome_executable_path: Option<String>,

    /// Names of vault secrets exported as environment variables to every step. Only names live
    /// in the file; each must match `^[A-Z_][A-Z0-9_]*$`, appear once, and not also be in
    /// `env`. Their values are redacted from everything that leaves the machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Plain environment variables exported to every step. Names match
    /// `^[A-Za-z_][A-Za-z0-9_]*$`; values are not redacted, so secrets belong in `secrets`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Screen size, which is also the computer-use coordinate space. Without it the agent uses
    /// 1280x800.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplaySize>,
    /// Machine size; the provider's defaults fill whatever is left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// The coding agent that `porthole run start` starts when it is given no `--agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentConfig>,
}

impl From<CursorEnvironment> for PortholeEnvironment {
    fn from(c: CursorEnvironment) -> Self {
        PortholeEnvironment {
            name: c.name,
            user: c.user,
            install: c.install,
            start: c.start,
            terminals: c.terminals,
            ports: c.ports,
            repository_dependencies: c.repository_dependencies,
            build: c.build,
            snapshot: c.snapshot,
            agent_can_update_snapshot: c.agent_can_update_snapshot,
            image: c.image,
            egress_mode: c.egress_mode,
            egress_allowlist: c.egress_allowlist,
            mcp_server_allowlist: c.mcp_server_allowlist,
            disable_all_mcp_servers: c.disable_all_mcp_servers,
            chrome_executable_path: c.chrome_executable_path,
            ..PortholeEnvironment::default()
        }
    }
}

/// A command in its own tmux window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Terminal {
    /// Window name; tmux numbers the window when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Command run in the window, from the repository root.
    pub command: String,
    /// What the terminal is for, shown to the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A port the environment serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// TCP port, 1 to 65535.
    pub port: u16,
    /// Label shown for the port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Building the machine image from a Dockerfile. Both paths are relative to the directory
/// holding the environment file (`.cursor/` or `.porthole/`), except that `.`, `./`, `..` and
/// `../` on their own mean the repository root. Neither may leave the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Build {
    /// Path of the Dockerfile (or `dockerfile_contents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// The Dockerfile itself, instead of a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_contents: Option<String>,
    /// Build context; the file's directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// [`Build`]'s paths made concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBuild {
    /// None when the file gives the Dockerfile's contents instead of a path.
    pub dockerfile: Option<PathBuf>,
    pub context: PathBuf,
}

impl Build {
    /// Resolves both paths given the repository root and the directory holding the file
    /// (normally `repo_root/.cursor`). Resolution is lexical: nothing is read from disk, so
    /// symlinks are not followed.
    pub fn resolve(&self, repo_root: &Path, file_dir: &Path) -> ResolvedBuild {
        let resolve = |p: &str| match p {
            "." | "./" | ".." | "../" => repo_root.to_path_buf(),
            _ => normalize(&file_dir.join(p)),
        };
        ResolvedBuild {
            dockerfile: self.dockerfile.as_deref().map(resolve),
            context: self
                .context
                .as_deref()
                .map_or_else(|| normalize(file_dir), resolve),
        }
    }
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Screen size in pixels. An object rather than a `"WxH"` string so that the schema can bound
/// each side and editors can complete it; `Display` gives the agent's `--display-size` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplaySize {
    /// Width, 320 to 7680.
    pub width: u32,
    /// Height, 200 to 4320.
    pub height: u32,
}

impl fmt::Display for DisplaySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Size of the virtual machine. Units are in the names so that a bare number cannot be
/// misread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Virtual CPUs, 1 to 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB, 512 to 262144.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Disk size in GiB, 1 to 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
}

/// The coding agent an environment runs by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Command that starts the agent, from the repository root, after the terminals start.
    pub command: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(dockerfile: &str, context: Option<&str>) -> ResolvedBuild {
        let b = Build {
            dockerfile: Some(dockerfile.into()),
            dockerfile_contents: None,
            context: context.map(Into::into),
        };
        b.resolve(Path::new("/repo"), Path::new("/repo/.cursor"))
    }

    #[test]
    fn build_paths_are_relative_to_the_files_directory() {
        let r = build("Dockerfile", None);
        assert_eq!(
            r.dockerfile.as_deref(),
            Some(Path::new("/repo/.cursor/Dockerfile"))
        );
        assert_eq!(r.context, Path::new("/repo/.cursor"));

        let r = build("../docker/./Dockerfile", Some("../docker"));
        assert_eq!(
            r.dockerfile.as_deref(),
            Some(Path::new("/repo/docker/Dockerfile"))
        );
        assert_eq!(r.context, Path::new("/repo/docker"));
    }

    #[test]
    fn dot_and_dot_dot_alone_mean_the_repository_root() {
        for root in [".", "./", "..", "../"] {
            assert_eq!(
                build("Dockerfile", Some(root)).context,
                Path::new("/repo"),
                "{root}"
            );
        }
        // Only the bare forms are special: a path starting with `./` is still under `.cursor/`.
        assert_eq!(
            build("./Dockerfile", None).dockerfile.as_deref(),
            Some(Path::new("/repo/.cursor/Dockerfile"))
        );
    }

    #[test]
    fn display_size_prints_as_the_agent_flag_expects() {
        assert_eq!(
            DisplaySize {
                width: 1280,
                height: 800
            }
            .to_string(),
            "1280x800"
        );
    }
}
