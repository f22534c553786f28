//! Environment files as the app and CLI use them: load any supported format into Porthole's.

use crate::error::{CoreError, Result};
use std::path::Path;

/// Loads `.cursor/environment.json`, `.porthole/environment.json` or a devcontainer.json into
/// Porthole's environment (problems listed with their JSON paths).
pub fn load(path: &Path) -> Result<porthole_envfile::PortholeEnvironment> {
    let report = porthole_envfile::check_file(path);
    if !report.is_valid() {
        return Err(CoreError::Invalid(format!(
            "{} is invalid:\n{}",
            path.display(),
            report.to_text().trim_end()
        )));
    }
    report.environment.ok_or_else(|| {
        CoreError::Invalid(format!("{}: no environment in the file", path.display()))
    })
}

/// The environment file of a repository, if it has one.
pub fn find_in_repo(repo: &Path) -> Option<std::path::PathBuf> {
    [
        ".porthole/environment.json",
        ".cursor/environment.json",
        ".devcontainer/devcontainer.json",
    ]
    .iter()
    .map(|p| repo.join(p))
    .find(|p| p.is_file())
}
