//! A walker over `serde_json::Value` that reports every problem with its JSON path.
//!
//! serde's derived `Deserialize` stops at the first error and does not say where it was, which
//! is useless to someone fixing a file by hand; so files are checked here first, against the
//! tables in `spec.rs`, and only deserialized into the typed structs once they are known good.

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{Field, Shape, Text, CURSOR_FIELDS, PORTHOLE_FIELDS};

/// One thing wrong with a file: where (`terminals[1].command`, or `$` for the whole file) and
/// what, as a plain sentence. Displays as `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: &str, message: impl Into<String>) -> Self {
        let path = if path.is_empty() { "$" } else { path };
        Problem {
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Parses strict JSON, turning a syntax error into the single problem the file has.
pub(crate) fn parse_json(text: &str) -> Result<Value, Problem> {
    // Editors on Windows like to add a byte order mark, which serde_json refuses.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Err(Problem::new(
            "",
            "the file is empty; expected a JSON object",
        ));
    }
    serde_json::from_str(text).map_err(|e| syntax_problem(text, &e))
}

fn syntax_problem(text: &str, e: &serde_json::Error) -> Problem {
    // serde_json's message ends with its own "at line L column C"; restate it in front so the
    // position reads first and the cause reads as the sentence.
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let mut cause = full.strip_suffix(&suffix).unwrap_or(&full);
    // serde_json's view of a comment ("key must be a string", "expected value") hides the
    // actual mistake, which is common in files copied from a devcontainer.json.
    let at = text
        .lines()
        .nth(e.line().saturating_sub(1))
        .and_then(|l| l.get(e.column().saturating_sub(1)..));
    if at.is_some_and(|rest| rest.starts_with("//") || rest.starts_with("/*")) {
        cause = "comments are only allowed in devcontainer.json";
    }
    Problem::new(
        "",
        format!(
            "invalid JSON at line {}, column {}: {cause}",
            e.line(),
            e.column()
        ),
    )
}

pub(crate) fn cursor(value: &Value) -> Vec<Problem> {
    let mut walker = Walker::default();
    walker.object(value, &CURSOR_FIELDS);
    let mut problems = walker.problems;
    problems.extend(build_source(value));
    problems
}

/// `build` names its Dockerfile one way or the other: a path or the contents.
fn build_source(value: &Value) -> Option<Problem> {
    let build = value.get("build")?.as_object()?;
    (!build.contains_key("dockerfile") && !build.contains_key("dockerfileContents"))
        .then(|| Problem::new("build", "needs dockerfile (a path) or dockerfileContents"))
}

/// The known name closest to an unknown one (a typo's likely meaning), if any is close.
fn closest<'a>(unknown: &str, names: &[&'a str]) -> Option<&'a str> {
    let u = unknown.to_ascii_lowercase();
    names
        .iter()
        .map(|n| (edit_distance(&u, &n.to_ascii_lowercase()), *n))
        .filter(|(d, n)| *d <= (n.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(crate) fn porthole(value: &Value) -> Vec<Problem> {
    let mut walker = Walker::default();
    walker.object(value, &PORTHOLE_FIELDS);
    let mut problems = walker.problems;
    problems.extend(build_source(value));
    // A name in both would leave it unclear which value wins, and a plain value under a secret's
    // name would not be redacted.
    if let (Some(env), Some(secrets)) = (
        value.get("env").and_then(Value::as_object),
        value.get("secrets").and_then(Value::as_array),
    ) {
        for name in env
            .keys()
            .filter(|k| secrets.iter().any(|s| s.as_str() == Some(k.as_str())))
        {
            problems.push(Problem::new(
                &key_path("env", name),
                "also listed in secrets; a secret's value comes from the vault",
            ));
        }
    }
    problems
}

/// Checks a build path: relative to the file's directory (one level below the repository root,
/// as `.cursor/` and `.porthole/` are) and never climbing out of the repository.
pub(crate) fn repo_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("expected a non-empty path");
    }
    if path.starts_with('/') {
        return Some("expected a path relative to the file's directory");
    }
    let mut depth = 1;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => return Some("path leaves the repository"),
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    None
}

/// Whether `s` is in the language of `text.pattern()`; hand-written to avoid a regex engine.
pub(crate) fn matches(text: Text, s: &str) -> bool {
    let name = |upper_only: bool| {
        let ok_start =
            |c: char| c == '_' || c.is_ascii_uppercase() || (!upper_only && c.is_ascii_lowercase());
        let mut chars = s.chars();
        chars.next().is_some_and(ok_start) && chars.all(|c| ok_start(c) || c.is_ascii_digit())
    };
    match text {
        Text::Any => true,
        Text::SecretName => name(true),
        Text::VariableName => name(false),
        Text::RepoPath => repo_path_problem(s).is_none(),
    }
}

/// Appends `.key`, or `["key"]` when the key would not read as an identifier.
pub(crate) fn push_key(path: &mut String, key: &str) {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        if path.is_empty() {
            path.push('$');
        }
        path.push('[');
        path.push_str(&Value::String(key.to_owned()).to_string());
        path.push(']');
    }
}

pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let mut path = parent.to_owned();
    push_key(&mut path, key);
    path
}

pub(crate) fn index_path(parent: &str, index: usize) -> String {
    let parent = if parent.is_empty() { "$" } else { parent };
    format!("{parent}[{index}]")
}

#[derive(Default)]
struct Walker {
    /// The current position; empty at the root. Extended and truncated around each child so the
    /// walk allocates one path string in total.
    path: String,
    problems: Vec<Problem>,
}

impl Walker {
    fn report(&mut self, message: impl Into<String>) {
        self.problems.push(Problem::new(&self.path, message));
    }

    fn at_key(&mut self, key: &str, f: impl FnOnce(&mut Self)) {
        let len = self.path.len();
        push_key(&mut self.path, key);
        f(self);
        self.path.truncate(len);
    }

    fn at_index(&mut self, index: usize, f: impl FnOnce(&mut Self)) {
        let len = self.path.len();
        if self.path.is_empty() {
            self.path.push('$');
        }
        let _ = write!(self.path, "[{index}]");
        f(self);
        self.path.truncate(len);
    }

    fn value(&mut self, value: &Value, shape: &Shape) {
        match *shape {
            Shape::String(text) => match value.as_str() {
                None => self.report("expected a string"),
                Some(s) => self.text(s, text),
            },
            Shape::Integer { min, max } => self.integer(value, min, max),
            Shape::Boolean if value.is_boolean() => {}
            Shape::Boolean => self.report("expected a boolean"),
            Shape::Array { items, unique } => self.array(value, items, unique),
            Shape::Object(fields) => self.object(value, fields),
            Shape::StringMap { keys } => self.string_map(value, keys),
        }
    }

    fn text(&mut self, s: &str, text: Text) {
        match text {
            Text::Any => {}
            Text::RepoPath => {
                if let Some(message) = repo_path_problem(s) {
                    self.report(message);
                }
            }
            Text::SecretName | Text::VariableName if matches(text, s) => {}
            Text::SecretName => self.report(format!(
                "expected a secret name matching {}",
                text.pattern().unwrap_or_default()
            )),
            Text::VariableName => self.report(format!(
                "expected a variable name matching {}",
                text.pattern().unwrap_or_default()
            )),
        }
    }

    fn integer(&mut self, value: &Value, min: i64, max: i64) {
        let in_range = match value {
            Value::Number(n) if n.is_i64() => n.as_i64().is_some_and(|i| (min..=max).contains(&i)),
            // Larger than i64::MAX: an integer, but out of any range used here.
            Value::Number(n) if n.is_u64() => false,
            _ => return self.report("expected an integer"),
        };
        if !in_range {
            self.report(format!("expected an integer from {min} to {max}"));
        }
    }

    fn array(&mut self, value: &Value, items: &Shape, unique: bool) {
        let Some(array) = value.as_array() else {
            return self.report("expected an array");
        };
        let here = self.path.clone();
        for (i, item) in array.iter().enumerate() {
            self.at_index(i, |w| {
                w.value(item, items);
                if let Some(first) = array[..i]
                    .iter()
                    .position(|earlier| unique && earlier == item)
                {
                    w.report(format!("duplicate of {}", index_path(&here, first)));
                }
            });
        }
    }

    fn object(&mut self, value: &Value, fields: &[Field]) {
        let Some(map) = value.as_object() else {
            return self.report("expected an object");
        };
        for field in fields {
            match map.get(field.name) {
                Some(v) => self.at_key(field.name, |w| w.value(v, &field.shape)),
                None if field.required => {
                    self.at_key(field.name, |w| w.report("missing required field"))
                }
                None => {}
            }
        }
        for key in map
            .keys()
            .filter(|k| !fields.iter().any(|f| f.name == k.as_str()))
        {
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let hint = closest(key, &names)
                .map(|n| format!(" (did you mean {n}?)"))
                .unwrap_or_default();
            self.at_key(key, |w| {
                w.report(format!(
                    "unknown field; expected one of {}{hint}",
                    names.join(", ")
                ))
            });
        }
    }

    fn string_map(&mut self, value: &Value, keys: Text) {
        let Some(map) = value.as_object() else {
            return self.report("expected an object");
        };
        for (key, v) in map {
            self.at_key(key, |w| {
                if !matches(keys, key) {
                    w.report(format!(
                        "invalid name; expected one matching {}",
                        keys.pattern().unwrap_or_default()
                    ));
                }
                if !v.is_string() {
                    w.report("expected a string");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(problems: Vec<Problem>) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(key_path("env", "FOO_1"), "env.FOO_1");
        assert_eq!(key_path("env", "foo-bar"), r#"env["foo-bar"]"#);
        assert_eq!(key_path("", "a b"), r#"$["a b"]"#);
        assert_eq!(index_path("", 2), "$[2]");
    }

    #[test]
    fn build_paths_stay_inside_the_repository() {
        for ok in [
            ".",
            "./",
            "..",
            "../",
            "Dockerfile",
            "../docker/Dockerfile",
            "a/../../b",
        ] {
            assert_eq!(repo_path_problem(ok), None, "{ok}");
        }
        assert_eq!(
            repo_path_problem("../.."),
            Some("path leaves the repository")
        );
        assert_eq!(
            repo_path_problem("a/../../../b"),
            Some("path leaves the repository")
        );
        assert_eq!(
            repo_path_problem("/etc"),
            Some("expected a path relative to the file's directory")
        );
        assert_eq!(repo_path_problem(""), Some("expected a non-empty path"));
    }

    #[test]
    fn names_follow_their_patterns() {
        assert!(matches(Text::SecretName, "_A1"));
        assert!(!matches(Text::SecretName, "a"));
        assert!(!matches(Text::SecretName, "1A"));
        assert!(!matches(Text::SecretName, ""));
        assert!(matches(Text::VariableName, "http_proxy"));
        assert!(!matches(Text::VariableName, "A-B"));
    }

    #[test]
    fn large_and_fractional_numbers_are_told_apart() {
        let problems = cursor(
            &json!({"ports": [{"port": 18446744073709551615u64}, {"port": 80.0}, {"port": -1}]}),
        );
        assert_eq!(
            lines(problems),
            [
                "ports[0].port: expected an integer from 1 to 65535",
                "ports[1].port: expected an integer",
                "ports[2].port: expected an integer from 1 to 65535",
            ]
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let problem = parse_json("{\n  \"name\": \"x\",\n}").unwrap_err();
        assert_eq!(
            problem.to_string(),
            "$: invalid JSON at line 3, column 1: trailing comma"
        );
    }
}
