//! JSON Schemas (draft 2020-12) for both formats, generated from the tables in `spec.rs`.
//!
//! The committed copies under `schema/` are what editors point at; a test keeps them equal to
//! what this module generates.

use serde_json::{json, Map, Value};

use crate::spec::{Field, Shape, Text, CURSOR_FIELDS, PORTHOLE_FIELDS};

/// The schema of Cursor's `.cursor/environment.json`.
pub fn cursor_schema() -> Value {
    root(
        "Cursor environment",
        "Cursor's .cursor/environment.json, as Porthole accepts it unchanged.",
        &CURSOR_FIELDS,
    )
}

/// The schema of Porthole's `.porthole/environment.json`, a strict superset of Cursor's.
pub fn porthole_schema() -> Value {
    root(
        "Porthole environment",
        "Porthole's .porthole/environment.json: every field of Cursor's environment.json, plus secrets by name, plain variables, display and machine size, and the default agent.",
        &PORTHOLE_FIELDS,
    )
}

fn root(title: &str, description: &str, fields: &[Field]) -> Value {
    let mut schema = object(fields);
    let map = schema.as_object_mut().expect("object() builds an object");
    map.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    map.insert("title".into(), json!(title));
    map.insert("description".into(), json!(description));
    schema
}

fn object(fields: &[Field]) -> Value {
    let mut properties = Map::new();
    for field in fields {
        let mut property = shape(&field.shape);
        property["description"] = json!(field.doc);
        properties.insert(field.name.into(), property);
    }
    let required: Vec<&str> = fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": properties,
        "additionalProperties": false,
    });
    if !required.is_empty() {
        schema["required"] = json!(required);
    }
    schema
}

fn shape(shape: &Shape) -> Value {
    match *shape {
        Shape::String(text) => {
            let mut schema = json!({"type": "string"});
            if let Some(pattern) = text.pattern() {
                schema["pattern"] = json!(pattern);
            }
            if text == Text::RepoPath {
                schema["minLength"] = json!(1);
            }
            schema
        }
        Shape::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Shape::Boolean => json!({"type": "boolean"}),
        Shape::Array { items, unique } => {
            let mut schema = json!({"type": "array", "items": self::shape(items)});
            if unique {
                schema["uniqueItems"] = json!(true);
            }
            schema
        }
        Shape::Object(fields) => object(fields),
        Shape::StringMap { keys } => json!({
            "type": "object",
            "propertyNames": {"pattern": keys.pattern()},
            "additionalProperties": {"type": "string"},
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Fails when a committed schema differs from the generated one; `UPDATE_EXPECT=1`
    /// rewrites it (review the diff before keeping it).
    fn check(file: &str, schema: Value) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(file);
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is out of date; run with UPDATE_EXPECT=1 and review the diff",
            path.display()
        );
    }

    #[test]
    fn committed_schemas_are_current() {
        check("cursor-environment.schema.json", cursor_schema());
        check("porthole-environment.schema.json", porthole_schema());
    }
}
