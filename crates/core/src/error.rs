use thiserror::Error;

/// Every failure of the core, each with a stable `code` for the UI's `{code, message}`.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The user asked for something that cannot be (bad name, unknown provider, ...).
    #[error("{0}")]
    Invalid(String),
    #[error("no machine named '{0}' (see `porthole machine list`)")]
    NoMachine(String),
    #[error("a machine named '{0}' already exists; pick another --name or destroy it first")]
    MachineExists(String),
    #[error("no snapshot named '{0}' (see `porthole machine snapshot`)")]
    NoSnapshot(String),
    #[error("no run '{0}' (see `porthole run list`)")]
    NoRun(String),
    /// Something the machine needs is not installed here; the message says how to fix it.
    #[error("{0}")]
    Missing(String),
    /// The machine's agent could not be reached or answered with an error.
    #[error("agent at {url}: {message}")]
    Agent { url: String, message: String },
    /// The machine did not come up; everything it started was cleaned up.
    #[error("machine '{name}' failed to start: {reason}")]
    Boot { name: String, reason: String },
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("store migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Git(String),
    /// A machine image could not be built or unpacked (the message names the failing step).
    #[error("image build: {0}")]
    Build(String),
}

impl CoreError {
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::Invalid(_) => "invalid",
            CoreError::NoMachine(_) | CoreError::NoSnapshot(_) | CoreError::NoRun(_) => "not_found",
            CoreError::MachineExists(_) => "exists",
            CoreError::Missing(_) => "missing_dependency",
            CoreError::Agent { .. } => "agent_error",
            CoreError::Boot { .. } => "boot_failed",
            CoreError::Store(_) | CoreError::Migrate(_) => "store_error",
            CoreError::Io { .. } => "io_error",
            CoreError::Git(_) => "git_error",
            CoreError::Build(_) => "build_failed",
        }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoreError {
        let context = context.into();
        move |source| CoreError::Io { context, source }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
