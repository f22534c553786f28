//! Checking one file of any of the three formats, as `porthole-agent env check` does.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::devcontainer::{self, import_devcontainer};
use crate::spec::porthole_only_names;
use crate::types::PortholeEnvironment;
use crate::validate::{parse_json, Problem};
use crate::{jsonc, read};

/// Which format a file is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Cursor's `.cursor/environment.json`.
    Cursor,
    /// Porthole's `.porthole/environment.json`.
    Porthole,
    /// A `devcontainer.json`, imported by mapping.
    Devcontainer,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Cursor => "cursor environment file",
            Kind::Porthole => "porthole environment file",
            Kind::Devcontainer => "devcontainer.json",
        }
    }
}

/// Tells the format by where the file is, else by what it holds.
///
/// By location: `.cursor/environment.json`, `.porthole/environment.json`, and any
/// `devcontainer.json` or `.devcontainer.json`. By content: a devcontainer.json if it has a
/// devcontainer-only key (`image`, `forwardPorts`, `postCreateCommand`, ...) and no key that only
/// an environment file has; otherwise Porthole if it uses any Porthole-only field; otherwise
/// Cursor, the stricter reading.
pub fn detect_kind(path: &Path, value: &Value) -> Kind {
    kind_by_location(path).unwrap_or_else(|| kind_by_content(value))
}

fn kind_by_location(path: &Path) -> Option<Kind> {
    let file = path.file_name()?.to_str()?;
    if file == "devcontainer.json" || file == ".devcontainer.json" {
        return Some(Kind::Devcontainer);
    }
    match (file, path.parent()?.file_name()?.to_str()?) {
        ("environment.json", ".cursor") => Some(Kind::Cursor),
        ("environment.json", ".porthole") => Some(Kind::Porthole),
        _ => None,
    }
}

fn kind_by_content(value: &Value) -> Kind {
    let Some(root) = value.as_object() else {
        return Kind::Cursor;
    };
    // `name`, `build` and `image` exist in both worlds, so they say nothing either way.
    let environment_only = crate::spec::PORTHOLE_FIELDS
        .iter()
        .any(|f| !["name", "build", "image"].contains(&f.name) && root.contains_key(f.name));
    if devcontainer::has_marker(root) && !environment_only {
        Kind::Devcontainer
    } else if porthole_only_names().any(|name| root.contains_key(name)) {
        Kind::Porthole
    } else {
        Kind::Cursor
    }
}

/// The result of checking one file. Serializes as the `--json` output of `env check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The file checked, as given.
    pub file: PathBuf,
    pub kind: Kind,
    /// Every problem found; the file is valid when there are none.
    pub problems: Vec<Problem>,
    /// devcontainer.json fields that were present but not mapped.
    pub not_mapped: Vec<String>,
    /// Fields of Cursor's file that are accepted but not acted on yet (`spec::NOT_APPLIED`).
    pub not_applied: Vec<String>,
    /// The environment the file describes (Cursor's widened to Porthole's), when valid.
    pub environment: Option<PortholeEnvironment>,
}

impl CheckReport {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// The text output of `env check`: one line per problem, starting with its JSON path, then
    /// one `not mapped: <field>` line per unmapped field, then a summary line, which has no
    /// colon after its first word so that it cannot be mistaken for a problem.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for problem in &self.problems {
            let _ = writeln!(text, "{problem}");
        }
        for field in &self.not_mapped {
            let _ = writeln!(text, "not mapped: {field}");
        }
        for field in &self.not_applied {
            let _ = writeln!(text, "not applied: {field}");
        }
        let verdict = if self.is_valid() { "valid" } else { "invalid" };
        let _ = write!(text, "{verdict} {}", self.kind.describe());
        let mut notes = Vec::new();
        if !self.problems.is_empty() {
            notes.push(count(self.problems.len(), "problem"));
        }
        if !self.not_mapped.is_empty() {
            notes.push(count(self.not_mapped.len(), "field") + " not mapped");
        }
        if !self.not_applied.is_empty() {
            notes.push(count(self.not_applied.len(), "field") + " not applied");
        }
        if !notes.is_empty() {
            let _ = write!(text, " ({})", notes.join(", "));
        }
        text.push('\n');
        text
    }
}

fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// Checks the file at `path`. A file that cannot be read is reported as a problem at `$`, so the
/// caller has a single outcome to print.
pub fn check_file(path: &Path) -> CheckReport {
    match read(path) {
        Ok(text) => check_str(path, &text),
        Err(error) => CheckReport {
            file: path.to_owned(),
            kind: kind_by_location(path).unwrap_or(Kind::Cursor),
            problems: vec![Problem::new("", error.to_string())],
            not_mapped: Vec::new(),
            not_applied: Vec::new(),
            environment: None,
        },
    }
}

/// Checks `text` as the contents of a file at `path`; the path is only used to tell the format.
pub fn check_str(path: &Path, text: &str) -> CheckReport {
    // Read leniently, since JSON with comments is a superset of JSON: the format is told by
    // the keys, and that format's own parser then rejects comments where they are not allowed.
    // Text that does not parse even so is a devcontainer.json if it had comments, since only
    // that format has them.
    let kind = kind_by_location(path).unwrap_or_else(|| match jsonc::strip(text) {
        Ok(json) => match parse_json(&json) {
            Ok(value) => kind_by_content(&value),
            Err(_) if json != text => Kind::Devcontainer,
            Err(_) => Kind::Cursor,
        },
        Err(_) => Kind::Devcontainer,
    });
    let mut report = CheckReport {
        file: path.to_owned(),
        kind,
        problems: Vec::new(),
        not_mapped: Vec::new(),
        not_applied: Vec::new(),
        environment: None,
    };
    let checked = match kind {
        Kind::Cursor => crate::parse_cursor(text).map(PortholeEnvironment::from),
        Kind::Porthole => crate::parse_porthole(text),
        Kind::Devcontainer => {
            let import = import_devcontainer(text);
            report.not_mapped = import.not_mapped;
            import.environment.ok_or(import.problems)
        }
    };
    match checked {
        Ok(environment) => {
            if let Err(e) = crate::egress::Policy::from_env(
                environment.egress_mode.as_deref(),
                &environment.egress_allowlist,
            ) {
                let (path, message) = e.split_once(": ").unwrap_or(("egressMode", &e));
                report.problems.push(Problem::new(path, message));
                return report;
            }
            report.not_applied = not_applied(&environment);
            report.environment = Some(environment);
        }
        Err(problems) => report.problems = problems,
    }
    report
}

/// The accepted-but-not-acted-on fields `env` has, in `spec::NOT_APPLIED`'s order.
pub fn not_applied(env: &PortholeEnvironment) -> Vec<String> {
    let v = serde_json::to_value(env).unwrap_or_default();
    crate::spec::NOT_APPLIED
        .iter()
        .filter(|path| {
            path.split('.')
                .try_fold(&v, |node, key| node.get(key))
                .is_some()
        })
        .map(|p| p.to_string())
        .collect()
}
