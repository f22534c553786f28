//! Porthole's application logic, without Tauri.
//!
//! It owns machines (providers: local sandbox, remote host, QEMU) and their lifecycle, the
//! local SQLite store, the HTTP client for guest agents, session sync, replay, evidence
//! export, the secrets vault and agent runs. The desktop app and the CLI are thin front ends
//! over this crate; anything that can be tested without a webview is tested here.

pub mod agent;
pub mod compat;
pub mod environments;
pub mod error;
pub mod export;
pub mod frames;
pub mod image;
pub mod live;
pub mod machine;
pub mod paths;
pub mod pool;
pub mod provider;
pub mod replay;
pub mod runs;
pub mod store;
pub mod sync;
pub mod vault;

pub use error::{CoreError, Result};
pub use machine::{CreateSpec, Machine, Machines, ProviderKind};
pub use paths::StateDir;
