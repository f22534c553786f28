//! The one description of both file formats.
//!
//! The validator (`validate.rs`) walks these tables and the JSON Schemas (`schema.rs`) are
//! generated from them, so the two cannot disagree about names, types, ranges or which fields
//! are required. The typed structs in `types.rs` are checked against them by a round-trip test.

/// What a JSON value must look like.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Shape {
    String(Text),
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
    Array {
        items: &'static Shape,
        unique: bool,
    },
    Object(&'static [Field]),
    /// An object used as a map from variable names to string values.
    StringMap {
        keys: Text,
    },
}

/// Rules on a string beyond being a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Text {
    Any,
    /// A secret's name, as the vault and the guest's environment know it.
    SecretName,
    /// An environment variable name; lower case is allowed because POSIX allows it.
    VariableName,
    /// A build path, relative to the file's directory, that stays inside the repository.
    RepoPath,
}

impl Text {
    /// The pattern as written into the schema; `matches` implements the same language.
    pub(crate) fn pattern(self) -> Option<&'static str> {
        match self {
            Text::Any => None,
            Text::SecretName => Some("^[A-Z_][A-Z0-9_]*$"),
            Text::VariableName => Some("^[A-Za-z_][A-Za-z0-9_]*$"),
            // The schema can say "relative" but not "stays inside"; the validator does both.
            Text::RepoPath => Some("^[^/]"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: &'static str,
    pub shape: Shape,
    pub required: bool,
    pub doc: &'static str,
}

const fn optional(name: &'static str, shape: Shape, doc: &'static str) -> Field {
    Field {
        name,
        shape,
        required: false,
        doc,
    }
}

const fn required(name: &'static str, shape: Shape, doc: &'static str) -> Field {
    Field {
        name,
        shape,
        required: true,
        doc,
    }
}

const STRING: Shape = Shape::String(Text::Any);
const PORT: Shape = Shape::Integer { min: 1, max: 65535 };

const TERMINAL: &[Field] = &[
    optional("name", STRING, "Window name in the shared tmux session."),
    required(
        "command",
        STRING,
        "Command run in the window, from the repository root.",
    ),
    optional(
        "description",
        STRING,
        "What the terminal is for, shown to the agent.",
    ),
];

const PORT_ENTRY: &[Field] = &[
    required(
        "port",
        PORT,
        "TCP port a process in the machine listens on.",
    ),
    optional("name", STRING, "Label shown for the port."),
];

const BUILD: &[Field] = &[
    optional(
        "dockerfile",
        Shape::String(Text::RepoPath),
        "Dockerfile path, relative to the file's directory; `.`, `./` and `..` mean the repository root.",
    ),
    optional(
        "context",
        Shape::String(Text::RepoPath),
        "Build context, relative to the file's directory; `.`, `./` and `..` mean the repository root. Defaults to the file's directory.",
    ),
    optional(
        "dockerfileContents",
        STRING,
        "The Dockerfile itself, instead of a path (one of the two is required).",
    ),
];

pub(crate) const CURSOR_FIELDS: [Field; 16] = [
    optional("name", STRING, "Name of the environment."),
    optional("user", STRING, "User that install, start and terminals run as."),
    optional(
        "install",
        STRING,
        "Blocking setup command, run from the repository root after the snapshot is restored or built; must be idempotent.",
    ),
    optional("start", STRING, "Background command run after install; it does not block startup."),
    optional(
        "terminals",
        Shape::Array { items: &Shape::Object(TERMINAL), unique: false },
        "Commands each run in a window of one shared tmux session, after start.",
    ),
    optional(
        "ports",
        Shape::Array { items: &Shape::Object(PORT_ENTRY), unique: false },
        "Ports the environment serves.",
    ),
    optional(
        "repositoryDependencies",
        Shape::Array { items: &STRING, unique: false },
        "Other repositories the environment needs access to.",
    ),
    optional("build", Shape::Object(BUILD), "Build the machine image from a Dockerfile."),
    optional("snapshot", STRING, "Snapshot to restore instead of building."),
    optional(
        "agentCanUpdateSnapshot",
        Shape::Boolean,
        "Whether the agent may replace the snapshot with the machine's current disk state.",
    ),
    optional("image", STRING, "A container image to start the machine from, instead of a snapshot or a build."),
    optional("egressMode", STRING, "Outbound network policy of the machine: \"allowAll\" (the default), \"allowlist\" (only egressAllowlist) or \"none\"."),
    optional(
        "egressAllowlist",
        Shape::Array { items: &STRING, unique: false },
        "Hosts the machine may reach when egress is restricted: names, \"*.\" + a domain (its subdomains), IP addresses.",
    ),
    optional(
        "mcpServerAllowlist",
        Shape::Array { items: &STRING, unique: false },
        "MCP servers the coding agent may use.",
    ),
    optional("disableAllMcpServers", Shape::Boolean, "Whether the coding agent gets no MCP servers at all."),
    optional("chromeExecutablePath", STRING, "Chrome or Chromium the agent's browser tools start."),
];

/// Fields of Cursor's file that Porthole accepts but does not act on yet: `env check` and the
/// agent say `not applied: <field>` for each one present, never refuse the file for it.
pub(crate) const NOT_APPLIED: &[&str] = &["mcpServerAllowlist", "disableAllMcpServers"];

const DISPLAY: &[Field] = &[
    required(
        "width",
        Shape::Integer {
            min: 320,
            max: 7680,
        },
        "Width in pixels.",
    ),
    required(
        "height",
        Shape::Integer {
            min: 200,
            max: 4320,
        },
        "Height in pixels.",
    ),
];

const MACHINE: &[Field] = &[
    optional("cpus", Shape::Integer { min: 1, max: 64 }, "Virtual CPUs."),
    optional(
        "memory_mib",
        Shape::Integer {
            min: 512,
            max: 262_144,
        },
        "Memory in MiB.",
    ),
    optional(
        "disk_gib",
        Shape::Integer { min: 1, max: 4096 },
        "Disk size in GiB.",
    ),
];

const AGENT: &[Field] = &[required(
    "command",
    STRING,
    "Command that starts the coding agent, from the repository root, after terminals start.",
)];

const PORTHOLE_ONLY: [Field; 5] = [
    optional(
        "secrets",
        Shape::Array { items: &Shape::String(Text::SecretName), unique: true },
        "Names of vault secrets exported to every step; values never appear in the file and are redacted from everything that leaves the machine.",
    ),
    optional(
        "env",
        Shape::StringMap { keys: Text::VariableName },
        "Plain environment variables exported to every step.",
    ),
    optional(
        "display",
        Shape::Object(DISPLAY),
        "Screen size, which is also the computer-use coordinate space (default 1280x800).",
    ),
    optional("machine", Shape::Object(MACHINE), "Machine size; the provider's defaults fill what is left out."),
    optional("agent", Shape::Object(AGENT), "The coding agent started when `porthole run start` is given no `--agent`."),
];

pub(crate) const PORTHOLE_FIELDS: [Field; 21] = concat(CURSOR_FIELDS, PORTHOLE_ONLY);

/// Names that only a Porthole file may use; their presence identifies the format.
pub(crate) fn porthole_only_names() -> impl Iterator<Item = &'static str> {
    PORTHOLE_ONLY.iter().map(|f| f.name)
}

/// Builds the superset at compile time, so Porthole's fields are Cursor's by construction.
const fn concat<const N: usize, const M: usize, const T: usize>(
    base: [Field; N],
    extra: [Field; M],
) -> [Field; T] {
    assert!(N + M == T && N > 0);
    let mut out = [base[0]; T];
    let mut i = 0;
    while i < N {
        out[i] = base[i];
        i += 1;
    }
    while i < T {
        out[i] = extra[i - N];
        i += 1;
    }
    out
}
