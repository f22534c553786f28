//! JSON with comments, as devcontainer.json allows: `//` and `/* */` comments and trailing
//! commas.
//!
//! Rather than parse a dialect, the text is rewritten into plain JSON of the same shape: each
//! comment and each trailing comma becomes spaces (newlines are kept), so serde_json's line and
//! column numbers still point into the original file.

use crate::validate::Problem;

pub(crate) fn strip(text: &str) -> Result<String, Problem> {
    #[derive(PartialEq)]
    enum State {
        Code,
        Str { escaped: bool },
        LineComment,
        BlockComment { start: usize },
    }

    let mut out = String::with_capacity(text.len());
    let mut state = State::Code;
    // Byte offset in `out` of a comma that is trailing if the next code is `}` or `]`.
    let mut comma: Option<usize> = None;
    let mut chars = text.char_indices().peekable();

    while let Some((at, c)) = chars.next() {
        match state {
            State::Code => match c {
                '/' if chars.peek().is_some_and(|&(_, n)| n == '/') => {
                    chars.next();
                    out.push_str("  ");
                    state = State::LineComment;
                }
                '/' if chars.peek().is_some_and(|&(_, n)| n == '*') => {
                    chars.next();
                    out.push_str("  ");
                    state = State::BlockComment { start: at };
                }
                c if c.is_whitespace() => out.push(c),
                c => {
                    if let Some(i) = comma.take() {
                        if c == '}' || c == ']' {
                            out.replace_range(i..i + 1, " ");
                        }
                    }
                    if c == ',' {
                        comma = Some(out.len());
                    }
                    if c == '"' {
                        state = State::Str { escaped: false };
                    }
                    out.push(c);
                }
            },
            State::Str { escaped } => {
                out.push(c);
                state = match c {
                    '"' if !escaped => State::Code,
                    '\\' => State::Str { escaped: !escaped },
                    _ => State::Str { escaped: false },
                };
            }
            State::LineComment if c == '\n' => {
                out.push(c);
                state = State::Code;
            }
            State::BlockComment { .. }
                if c == '*' && chars.peek().is_some_and(|&(_, n)| n == '/') =>
            {
                chars.next();
                out.push_str("  ");
                state = State::Code;
            }
            State::LineComment | State::BlockComment { .. } => out.push(blank(c)),
        }
    }

    if let State::BlockComment { start } = state {
        let (line, column) = position(text, start);
        return Err(Problem::new(
            "",
            format!("invalid JSON at line {line}, column {column}: comment is never closed"),
        ));
    }
    Ok(out)
}

/// Keeps line breaks (so line numbers hold) and turns anything else into one space per
/// character (so columns, which serde_json counts in bytes, hold for ASCII lines at least).
fn blank(c: char) -> char {
    if c == '\n' || c == '\r' {
        c
    } else {
        ' '
    }
}

fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |nl| nl + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(text: &str) -> Value {
        serde_json::from_str(&strip(text).unwrap()).unwrap()
    }

    #[test]
    fn comments_and_trailing_commas_go() {
        let text = r#"{
            // a comment
            "a": [1, 2, /* inline */ ],
            /* block
               over lines */
            "b": {"c": true,},
        }"#;
        assert_eq!(parse(text), json!({"a": [1, 2], "b": {"c": true}}));
    }

    #[test]
    fn strings_keep_what_looks_like_comments() {
        let text = r#"{"url": "http://x/*y*/", "q": "say \"//\", ]", "e": "\\"}// end"#;
        assert_eq!(
            parse(text),
            json!({"url": "http://x/*y*/", "q": "say \"//\", ]", "e": "\\"})
        );
    }

    #[test]
    fn positions_survive_stripping() {
        let text = "{\n  /* x */ \"a\": 1,\n  \"b\" 2\n}";
        let stripped = strip(text).unwrap();
        let err = serde_json::from_str::<Value>(&stripped).unwrap_err();
        assert_eq!((err.line(), err.column()), (3, 7));
    }

    #[test]
    fn an_unclosed_comment_is_a_problem() {
        let problem = strip("{\n  \"a\": 1 /* oops\n}").unwrap_err();
        assert_eq!(
            problem.to_string(),
            "$: invalid JSON at line 2, column 10: comment is never closed"
        );
    }
}
