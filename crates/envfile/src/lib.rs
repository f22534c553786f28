//! The environment file formats Porthole reads: Cursor's `.cursor/environment.json` (accepted
//! unchanged), Porthole's own `.porthole/environment.json` (a strict superset of it), and
//! `devcontainer.json`, imported by mapping what has a counterpart and naming what does not.
//!
//! This crate owns what those files may contain and how they are checked: every problem in a
//! file is reported with its JSON path, not just the first, because people fix these files by
//! hand. One table per format (`spec.rs`) drives both the validator and the JSON Schemas under
//! `schema/`. Nothing here runs the steps a file describes; the guest agent does that.
//!
//! `porthole-agent env check FILE [--json]` is [`check_file`] plus printing
//! [`CheckReport::to_text`] or the report as JSON.

mod check;
mod devcontainer;
pub mod egress;
mod jsonc;
mod schema;
mod spec;
mod types;
mod validate;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use check::{check_file, check_str, detect_kind, CheckReport, Kind};
pub use devcontainer::{import_devcontainer, Import};
pub use schema::{cursor_schema, porthole_schema};
pub use types::{
    AgentConfig, Build, CursorEnvironment, DisplaySize, Machine, Port, PortholeEnvironment,
    ResolvedBuild, Terminal,
};
pub use validate::Problem;

/// Why an environment file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid environment file: {}", path.display(), join(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads a file of any of the three formats as a Porthole environment. A devcontainer.json's
/// unmapped fields are dropped here; use [`check_file`] to list them.
pub fn load_file(path: &Path) -> Result<PortholeEnvironment, Error> {
    let report = check_str(path, &read(path)?);
    report.environment.ok_or(Error::Invalid {
        path: path.to_owned(),
        problems: report.problems,
    })
}

/// Parses Cursor's `.cursor/environment.json`, reporting every problem.
pub fn parse_cursor(text: &str) -> Result<CursorEnvironment, Vec<Problem>> {
    parse(text, Kind::Cursor)
}

/// Parses Porthole's `.porthole/environment.json`, reporting every problem.
pub fn parse_porthole(text: &str) -> Result<PortholeEnvironment, Vec<Problem>> {
    parse(text, Kind::Porthole)
}

/// Every problem with an already parsed value, for callers (such as the app's forms) that edit
/// a value rather than a file. A devcontainer.json is checked by mapping it.
pub fn validate_value(kind: Kind, value: &Value) -> Vec<Problem> {
    match kind {
        Kind::Cursor => validate::cursor(value),
        Kind::Porthole => validate::porthole(value),
        Kind::Devcontainer => devcontainer::import_value(value).problems,
    }
}

fn parse<T: DeserializeOwned>(text: &str, kind: Kind) -> Result<T, Vec<Problem>> {
    let value = validate::parse_json(text).map_err(|problem| vec![problem])?;
    let problems = validate_value(kind, &value);
    if !problems.is_empty() {
        return Err(problems);
    }
    // Only fails if the tables and the types disagree: a bug, but one to report, not to panic on.
    serde_json::from_value(value).map_err(|e| vec![Problem::new("", e.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CURSOR_EVERY_FIELD: &str = include_str!("../tests/corpus/cursor-every-field.json");
    const PORTHOLE_EVERY_FIELD: &str = include_str!("../tests/corpus/porthole-every-field.json");
    const DEVCONTAINER: &str =
        include_str!("../tests/corpus/located-devcontainer/.devcontainer/devcontainer.json");

    /// The typed structs and the tables in `spec.rs` must name the same fields: a file using every
    /// field survives a trip through the types unchanged.
    #[test]
    fn every_field_round_trips_through_the_types() {
        let original: Value = serde_json::from_str(CURSOR_EVERY_FIELD).unwrap();
        let typed = parse_cursor(CURSOR_EVERY_FIELD).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), original);
        assert_eq!(
            serde_json::to_value(PortholeEnvironment::from(typed)).unwrap(),
            original
        );

        let original: Value = serde_json::from_str(PORTHOLE_EVERY_FIELD).unwrap();
        let typed = parse_porthole(PORTHOLE_EVERY_FIELD).unwrap();
        assert_eq!(serde_json::to_value(&typed).unwrap(), original);
        assert_eq!(
            typed.display.map(|d| d.to_string()).as_deref(),
            Some("1920x1080")
        );
    }

    #[test]
    fn a_cursor_file_is_a_porthole_file_but_not_the_reverse() {
        assert!(parse_porthole(CURSOR_EVERY_FIELD).is_ok());
        let problems = parse_cursor(PORTHOLE_EVERY_FIELD).unwrap_err();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["agent", "display", "env", "machine", "secrets"]);
    }

    #[test]
    fn devcontainer_maps_to_this_environment() {
        let import = import_devcontainer(DEVCONTAINER);
        assert_eq!(import.problems, []);
        let env = import.environment.unwrap();
        assert_eq!(
            serde_json::to_value(env).unwrap(),
            json!({
                "name": "Python 3",
                "user": "vscode",
                "install": "pip3 install --user -r requirements.txt // not a comment",
                "start": "python manage.py migrate --noinput && (python -m http.server 8000 &)",
                "ports": [{"port": 8000}, {"port": 5432}],
                "env": {
                    "DJANGO_SETTINGS_MODULE": "app.settings.local",
                    "DOCS_URL": "https://docs.example.invalid/*not-a-comment*/",
                },
            })
        );
    }

    #[test]
    fn the_json_report_has_the_fields_the_cli_prints() {
        let report = check_str(
            Path::new("x/.cursor/environment.json"),
            r#"{"ports": [{"prot": 1}]}"#,
        );
        assert!(!report.is_valid());
        assert_eq!(
            serde_json::to_value(&report).unwrap(),
            json!({
                "file": "x/.cursor/environment.json",
                "kind": "cursor",
                "problems": [
                    {"path": "ports[0].port", "message": "missing required field"},
                    {"path": "ports[0].prot", "message": "unknown field; expected one of port, name (did you mean port?)"},
                ],
                "not_mapped": [],
                "not_applied": [],
                "environment": null,
            })
        );
    }

    #[test]
    fn detection_prefers_location_over_content() {
        let devcontainer_like = json!({"image": "node:20", "forwardPorts": [3000]});
        assert_eq!(
            detect_kind(
                Path::new("a/.porthole/environment.json"),
                &devcontainer_like
            ),
            Kind::Porthole
        );
        assert_eq!(
            detect_kind(Path::new("a/.devcontainer.json"), &json!({})),
            Kind::Devcontainer
        );
        assert_eq!(
            detect_kind(Path::new("env.json"), &devcontainer_like),
            Kind::Devcontainer
        );
        // An environment-only key outweighs devcontainer keys: it is an environment file with a
        // stray key, which is better reported as unknown than silently mapped.
        assert_eq!(
            detect_kind(
                Path::new("env.json"),
                &json!({"install": "x", "image": "y"})
            ),
            Kind::Cursor
        );
        assert_eq!(
            detect_kind(Path::new("env.json"), &json!({"secrets": []})),
            Kind::Porthole
        );
        assert_eq!(detect_kind(Path::new("env.json"), &json!([])), Kind::Cursor);
    }

    #[test]
    fn unreadable_files_are_problems_for_check_and_errors_for_load() {
        let missing = Path::new("/nonexistent/.porthole/environment.json");
        let report = check_file(missing);
        assert_eq!(report.kind, Kind::Porthole);
        assert!(report.problems[0]
            .message
            .starts_with("cannot read /nonexistent/.porthole/environment.json: "));
        assert!(matches!(load_file(missing), Err(Error::Read { .. })));
    }

    #[test]
    fn validate_value_serves_editors_of_unsaved_values() {
        let problems = validate_value(
            Kind::Porthole,
            &json!({"display": {"width": 1280, "height": "800"}}),
        );
        assert_eq!(
            problems,
            [Problem::new("display.height", "expected an integer")]
        );
    }
}
