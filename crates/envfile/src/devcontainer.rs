//! Importing a `devcontainer.json` as a Porthole environment.
//!
//! Only fields with a faithful counterpart are mapped; every other field is named in
//! [`Import::not_mapped`] so that nothing is dropped without the user hearing of it.
//!
//! | devcontainer.json | Porthole |
//! |---|---|
//! | `name` | `name` |
//! | `remoteUser` | `user` |
//! | `postCreateCommand` | `install` |
//! | `postStartCommand` | `start` |
//! | `forwardPorts` (`3000` or `"db:5432"`) | `ports` (`3000`, `5432`) |
//! | `containerEnv`, then `remoteEnv` (which wins) | `env` |
//!
//! A command may be a string (run by a shell, kept as is), an array (run without a shell, so
//! each argument is shell-quoted and joined with spaces) or an object of named commands. The
//! devcontainer spec runs named commands in parallel; here they run one after another, joined
//! with ` && ` in key order, which is sorted by name because that is the only order serde_json
//! keeps. A named command containing shell operators is wrapped in parentheses so that `&&`
//! applies to it as a whole.
//!
//! Environment values that use `${...}` substitution, and `remoteEnv` entries set to `null`
//! (which unset a variable), have no counterpart and are listed as not mapped, by path.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::spec::Text;
use crate::types::{Port, PortholeEnvironment};
use crate::validate::{index_path, key_path, matches, Problem};

/// The outcome of importing a devcontainer.json.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Import {
    /// The mapped environment, when there were no problems.
    pub environment: Option<PortholeEnvironment>,
    /// Problems with the mapped fields, by their path in the devcontainer.json.
    pub problems: Vec<Problem>,
    /// Paths of fields present but not mapped, top-level names or `remoteEnv.NAME`.
    pub not_mapped: Vec<String>,
}

/// Imports a devcontainer.json given as text (JSON with comments and trailing commas).
pub fn import_devcontainer(text: &str) -> Import {
    let value = crate::jsonc::strip(text).and_then(|json| crate::validate::parse_json(&json));
    match value {
        Ok(value) => import_value(&value),
        Err(problem) => Import {
            problems: vec![problem],
            ..Import::default()
        },
    }
}

pub(crate) fn import_value(value: &Value) -> Import {
    let mut import = Import::default();
    let Some(root) = value.as_object() else {
        import.problems.push(Problem::new("", "expected an object"));
        return import;
    };
    let mut env = PortholeEnvironment::default();
    for (key, value) in root {
        let problems = &mut import.problems;
        match key.as_str() {
            "name" => env.name = string(value, key, problems),
            "remoteUser" => env.user = string(value, key, problems),
            "postCreateCommand" => env.install = command(value, key, problems),
            "postStartCommand" => env.start = command(value, key, problems),
            "forwardPorts" => env.ports = ports(value, key, problems),
            "containerEnv" | "remoteEnv" => {
                variables(value, key, &mut env.env, problems, &mut import.not_mapped)
            }
            _ => import.not_mapped.push(key_path("", key)),
        }
    }
    if import.problems.is_empty() {
        import.environment = Some(env);
    }
    import
}

fn string(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        _ => {
            problems.push(Problem::new(path, "expected a string"));
            None
        }
    }
}

fn command(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let line = match value {
        Value::Object(named) => {
            let parts: Vec<String> = named
                .iter()
                .filter_map(|(name, v)| match v {
                    Value::String(s) if needs_grouping(s) => Some(group(s)),
                    Value::String(s) => Some(s.clone()),
                    Value::Array(_) => argv(v, &key_path(path, name), problems),
                    _ => {
                        let message = "expected a string or an array of strings";
                        problems.push(Problem::new(&key_path(path, name), message));
                        None
                    }
                })
                .filter(|s| !s.trim().is_empty())
                .collect();
            parts.join(" && ")
        }
        Value::Array(_) => argv(value, path, problems)?,
        Value::String(s) => s.clone(),
        _ => {
            problems.push(Problem::new(
                path,
                "expected a string, an array of strings or an object",
            ));
            return None;
        }
    };
    // An empty command means "nothing to run", which an absent field says better.
    (!line.trim().is_empty()).then_some(line)
}

fn argv(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Option<String> {
    let items = value.as_array()?;
    let before = problems.len();
    let words: Vec<Cow<str>> = items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match item {
            Value::String(s) => Some(shell_quote(s)),
            _ => {
                problems.push(Problem::new(&index_path(path, i), "expected a string"));
                None
            }
        })
        .collect();
    (problems.len() == before).then(|| words.join(" "))
}

/// Quotes one argument for a POSIX shell, leaving plain words readable.
fn shell_quote(arg: &str) -> Cow<'_, str> {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c));
    if plain {
        Cow::Borrowed(arg)
    } else {
        Cow::Owned(format!("'{}'", arg.replace('\'', r"'\''")))
    }
}

/// Whether joining with `&&` would bind to only part of the command, or (for `#`) swallow the
/// commands after it as a comment.
fn needs_grouping(command: &str) -> bool {
    command.contains([';', '&', '|', '\n', '#'])
}

fn group(command: &str) -> String {
    // A comment would also swallow the closing parenthesis on the same line.
    let end = if command.contains('#') { "\n)" } else { ")" };
    format!("({command}{end}")
}

fn ports(value: &Value, path: &str, problems: &mut Vec<Problem>) -> Vec<Port> {
    let Some(items) = value.as_array() else {
        problems.push(Problem::new(path, "expected an array"));
        return Vec::new();
    };
    let mut ports: Vec<Port> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = index_path(path, i);
        let port = match item {
            Value::Number(n) => match n
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p > 0)
            {
                Some(p) => p,
                None if n.is_f64() => {
                    problems.push(Problem::new(&here, "expected an integer"));
                    continue;
                }
                None => {
                    problems.push(Problem::new(&here, "expected an integer from 1 to 65535"));
                    continue;
                }
            },
            Value::String(s) => match host_port(s) {
                Some(p) => p,
                None => {
                    problems.push(Problem::new(
                        &here,
                        r#"expected a "host:port" string with a port from 1 to 65535"#,
                    ));
                    continue;
                }
            },
            _ => {
                problems.push(Problem::new(
                    &here,
                    r#"expected a port number or a "host:port" string"#,
                ));
                continue;
            }
        };
        // `3000` and `"localhost:3000"` are the same port to a machine that has one host.
        if !ports.iter().any(|p| p.port == port) {
            ports.push(Port { port, name: None });
        }
    }
    ports
}

fn host_port(s: &str) -> Option<u16> {
    let (host, port) = s.rsplit_once(':')?;
    let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    (!host.is_empty() && digits)
        .then(|| port.parse().ok())
        .flatten()
        .filter(|&p| p > 0)
}

fn variables(
    value: &Value,
    path: &str,
    env: &mut BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
    not_mapped: &mut Vec<String>,
) {
    let Some(vars) = value.as_object() else {
        problems.push(Problem::new(path, "expected an object"));
        return;
    };
    for (name, v) in vars {
        let here = key_path(path, name);
        if !matches(Text::VariableName, name) {
            let pattern = Text::VariableName.pattern().unwrap_or_default();
            problems.push(Problem::new(
                &here,
                format!("invalid name; expected one matching {pattern}"),
            ));
            continue;
        }
        match v {
            Value::String(s) if s.contains("${") => not_mapped.push(here),
            Value::String(s) => {
                env.insert(name.clone(), s.clone());
            }
            Value::Null if path == "remoteEnv" => not_mapped.push(here),
            _ => problems.push(Problem::new(&here, "expected a string")),
        }
    }
}

/// Keys a devcontainer.json has and an environment file does not; finding one (and no
/// environment-only key) marks content as a devcontainer.json.
const MARKERS: &[&str] = &[
    "image",
    "dockerFile",
    "dockerComposeFile",
    "features",
    "customizations",
    "forwardPorts",
    "portsAttributes",
    "onCreateCommand",
    "updateContentCommand",
    "postCreateCommand",
    "postStartCommand",
    "postAttachCommand",
    "initializeCommand",
    "containerEnv",
    "remoteEnv",
    "remoteUser",
    "containerUser",
    "mounts",
    "runArgs",
    "workspaceFolder",
];

pub(crate) fn has_marker(root: &Map<String, Value>) -> bool {
    MARKERS.iter().any(|m| root.contains_key(*m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn install(command: Value) -> Result<Option<String>, Vec<String>> {
        let import = import_value(&json!({ "postCreateCommand": command }));
        match import.environment {
            Some(env) => Ok(env.install),
            None => Err(import.problems.iter().map(ToString::to_string).collect()),
        }
    }

    #[test]
    fn commands_in_each_form() {
        assert_eq!(
            install(json!("npm ci && npm run build")),
            Ok(Some("npm ci && npm run build".into()))
        );
        assert_eq!(
            install(json!(["echo", "it's", "a b", "", "--x=1"])),
            Ok(Some(r#"echo 'it'\''s' 'a b' '' --x=1"#.into()))
        );
        assert_eq!(
            install(
                json!({"web": "npm ci", "api": ["pip", "install", "-e", "."], "db": "make db || true"})
            ),
            Ok(Some(
                "pip install -e . && (make db || true) && npm ci".into()
            ))
        );
        assert_eq!(
            install(json!({"a": "echo hi # note", "b": "ls"})),
            Ok(Some("(echo hi # note\n) && ls".into()))
        );
        assert_eq!(install(json!([])), Ok(None));
    }

    #[test]
    fn bad_commands_name_the_part_at_fault() {
        assert_eq!(
            install(json!({"a": ["ok", 1], "b": {"c": "d"}})),
            Err(vec![
                "postCreateCommand.a[1]: expected a string".to_owned(),
                "postCreateCommand.b: expected a string or an array of strings".to_owned(),
            ])
        );
        assert_eq!(
            install(json!(true)),
            Err(vec![
                "postCreateCommand: expected a string, an array of strings or an object".to_owned()
            ])
        );
    }

    #[test]
    fn host_port_strings_map_the_port() {
        assert_eq!(host_port("db:5432"), Some(5432));
        assert_eq!(host_port("[::1]:8080"), Some(8080));
        assert_eq!(host_port("db:"), None);
        assert_eq!(host_port(":80"), None);
        assert_eq!(host_port("db:70000"), None);
        assert_eq!(host_port("8080"), None);
    }
}
