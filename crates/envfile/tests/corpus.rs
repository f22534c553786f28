//! One data-driven test over `tests/corpus/`: every `X.json` below it (at any depth, so that
//! files can sit at the locations that decide their format, like `.cursor/environment.json`) is
//! checked with `check_file`, and `to_text()` must equal `X.expected` beside it.
//!
//! `UPDATE_EXPECT=1 cargo test -p porthole-envfile` rewrites the `.expected` files; read each
//! changed one before keeping it, since the test then passes whatever they say.

use std::path::{Path, PathBuf};

use porthole_envfile::check_file;

#[test]
fn corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    assert!(
        files.len() >= 10,
        "the corpus went missing: {} files",
        files.len()
    );

    let failures: Vec<String> = files.iter().filter_map(|file| check(&root, file)).collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus files differ:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

/// Returns a description of the mismatch, or `None` when the file checks as expected.
fn check(root: &Path, file: &Path) -> Option<String> {
    let actual = check_file(file).to_text();
    let expected_path = file.with_extension("expected");
    if std::env::var_os("UPDATE_EXPECT").is_some_and(|v| v == "1") {
        std::fs::write(&expected_path, &actual).unwrap();
        return None;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    (actual != expected).then(|| {
        let name = file.strip_prefix(root).unwrap_or(file).display();
        format!("--- {name}\nexpected:\n{expected}\nactual:\n{actual}")
    })
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, files);
        } else if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
}
