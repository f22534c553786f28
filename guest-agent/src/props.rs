//! Property tests over every parser a caller reaches: random and mutated inputs, a bounded
//! number of cases from a seed (printed on failure; `PORTHOLE_PROP_SEED=N` replays one,
//! `PORTHOLE_PROP_CASES=N` runs more). What must hold for any input: no panic, no unbounded
//! work, and either a value that satisfies the parser's own invariants or an error that names
//! the problem. Stable Rust and `rand` only: cargo-fuzz needs nightly, which is not here.

use crate::computer::parse_action;
use crate::environment::StreamRedactor;
use crate::events::SeqIndex;
use crate::keys::parse_chords;
use crate::recorder::parse_range;
use crate::vendors::{anthropic_action, openai_actions};
use porthole_proto::ViewerMessage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::collections::HashMap;

fn cases() -> usize {
    std::env::var("PORTHOLE_PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// Runs `f` over `cases()` generated inputs, saying the seed and the case when one fails.
fn check(name: &str, mut f: impl FnMut(&mut StdRng)) {
    let seed = std::env::var("PORTHOLE_PROP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..cases() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut rng)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{name}: case {i} failed (PORTHOLE_PROP_SEED={seed}): {msg}");
        }
    }
}

const WORDS: &[&str] = &[
    "action",
    "coordinate",
    "text",
    "key",
    "scroll_direction",
    "scroll_amount",
    "duration",
    "region",
    "start_coordinate",
    "type",
    "x",
    "y",
    "button",
    "keys",
    "path",
    "scroll_x",
    "scroll_y",
    "name",
    "input",
    "actions",
    "left",
    "right",
    "wheel",
    "ctrl+c",
    "shift",
    "super+l",
    "Return",
    "up",
    "down",
    "left_click",
    "mouse_move",
    "screenshot",
    "zoom",
    "click",
    "double_click",
    "drag",
    "keypress",
    "move",
    "scroll",
    "wait",
    "hold_key",
    "computer",
    "pointer",
    "kind",
    "dy",
    "dx",
    "code",
    "é",
    "\u{0}",
    "ctrl+",
    "+",
];

fn word(rng: &mut StdRng) -> String {
    WORDS[rng.gen_range(0..WORDS.len())].to_string()
}

fn number(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..8) {
        0 => json!(rng.gen_range(-3i64..3)),
        1 => json!(rng.gen_range(0u32..2000)),
        2 => json!(i64::MAX),
        3 => json!(u64::MAX),
        4 => json!(-1e300),
        5 => json!(rng.gen::<f64>() * 1e6),
        6 => json!(1e12),
        _ => json!(rng.gen_range(0u32..100) as f64 + 0.5),
    }
}

/// A JSON value shaped like the requests these parsers take, often almost right.
fn value(rng: &mut StdRng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 3 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.gen::<bool>()),
        2 => number(rng),
        3 => json!(word(rng)),
        4 => Value::Array(
            (0..rng.gen_range(0..4))
                .map(|_| value(rng, depth + 1))
                .collect(),
        ),
        5 => json!([number(rng), number(rng)]),
        _ => Value::Object(object(rng, depth + 1)),
    }
}

fn object(rng: &mut StdRng, depth: u32) -> Map<String, Value> {
    (0..rng.gen_range(0..6))
        .map(|_| (word(rng), value(rng, depth)))
        .collect()
}

/// A request for `name` with random fields, the action name usually right.
fn request(rng: &mut StdRng, action_key: &str) -> Value {
    let mut o = object(rng, 1);
    if rng.gen_bool(0.9) {
        o.insert(action_key.into(), json!(word(rng)));
    }
    Value::Object(o)
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    let n = rng.gen_range(0..max);
    (0..n)
        .map(|_| match rng.gen_range(0..4) {
            0 => rng.gen_range(' '..='~'),
            1 => ['+', '-', '=', ',', ' ', '\n'][rng.gen_range(0..6)],
            2 => char::from_u32(rng.gen_range(0..0x11000)).unwrap_or('x'),
            _ => rng.gen_range('a'..='z'),
        })
        .collect()
}

#[test]
fn computer_actions_parse_or_name_the_field() {
    check("parse_action", |rng| {
        let v = request(rng, "action");
        let size = (rng.gen_range(1..4000), rng.gen_range(1..4000));
        if let Err(e) = parse_action(&v, size) {
            assert!(e.status.is_client_error(), "{v}: {e:?}");
            assert!(!e.message.is_empty(), "{v}: empty message");
        }
    });
}

#[test]
fn vendor_shapes_parse_or_name_the_field() {
    check("anthropic_action", |rng| {
        let mut o = object(rng, 1);
        o.insert("name".into(), json!(word(rng)));
        o.insert("input".into(), request(rng, "action"));
        let b = Value::Object(o);
        if let Err(e) = anthropic_action(&b, "[0]") {
            assert!(
                e.status.is_client_error() && !e.message.is_empty(),
                "{b}: {e:?}"
            );
        }
    });
    check("openai_actions", |rng| {
        let a = request(rng, "type");
        match openai_actions(&a, "action") {
            // One OpenAI action expands to a bounded number of steps.
            Ok(steps) => assert!(steps.len() <= 256, "{a}: {} steps", steps.len()),
            Err(e) => assert!(
                e.status.is_client_error() && !e.message.is_empty(),
                "{a}: {e:?}"
            ),
        }
    });
}

#[test]
fn key_chords_parse_or_say_which_key() {
    check("parse_chords", |rng| {
        let t = if rng.gen_bool(0.5) {
            (0..rng.gen_range(1..5))
                .map(|_| word(rng))
                .collect::<Vec<_>>()
                .join(["+", " ", "++"][rng.gen_range(0..3)])
        } else {
            random_text(rng, 40)
        };
        match parse_chords(&t) {
            Ok(chords) => assert!(chords.iter().all(|c| !c.is_empty()), "{t:?}: empty chord"),
            Err(e) => assert!(!e.is_empty(), "{t:?}"),
        }
    });
}

#[test]
fn ranges_stay_inside_the_file() {
    check("parse_range", |rng| {
        let len = [0, 1, 2, 100, u64::MAX][rng.gen_range(0..5)];
        let n = |rng: &mut StdRng| match rng.gen_range(0..5) {
            0 => String::new(),
            1 => rng.gen_range(0..300u64).to_string(),
            2 => u64::MAX.to_string(),
            3 => "18446744073709551616".into(),
            _ => random_text(rng, 4),
        };
        let h = format!(
            "{}{}-{}{}",
            ["bytes=", "bytes = ", "", "items="][rng.gen_range(0..4)],
            n(rng),
            n(rng),
            ["", ",0-1", " "][rng.gen_range(0..3)]
        );
        if let Some((a, b)) = parse_range(&h, len) {
            assert!(a <= b && b < len, "{h:?} of {len}: {a}-{b}");
        }
    });
}

#[test]
fn viewer_messages_parse_or_are_refused_whole() {
    check("ViewerMessage", |rng| {
        let v = request(rng, "type");
        let text = if rng.gen_bool(0.2) {
            random_text(rng, 60)
        } else {
            v.to_string()
        };
        // Whatever parses also serializes back: no message is half-understood.
        if let Ok(m) = serde_json::from_str::<ViewerMessage>(&text) {
            serde_json::to_string(&m).expect("serializes");
        }
    });
}

#[test]
fn no_secret_comes_out_of_any_chunking_of_any_bytes() {
    check("StreamRedactor", |rng| {
        let secret: String = (0..rng.gen_range(2..12))
            .map(|_| rng.gen_range('a'..='e'))
            .collect();
        // Sometimes a second secret that starts or ends the first, or extends it.
        let other: String = match rng.gen_range(0..4) {
            0 => secret[..rng.gen_range(1..secret.len())].to_string(),
            1 => format!("{secret}{}", rng.gen_range('a'..='e')),
            2 => secret[rng.gen_range(1..secret.len())..].to_string(),
            _ => String::new(),
        };
        let secrets = HashMap::from([
            ("S".to_string(), secret.clone()),
            ("T".to_string(), other.clone()),
        ]);
        let mut input = Vec::new();
        for _ in 0..rng.gen_range(0..6) {
            match rng.gen_range(0..4) {
                0 => input.extend_from_slice(secret.as_bytes()),
                1 => input.extend_from_slice(&secret.as_bytes()[..rng.gen_range(0..secret.len())]),
                2 => input.push(rng.gen()),
                _ => input.extend(random_text(rng, 6).bytes()),
            }
        }
        let mut r = StreamRedactor::new(&secrets);
        let mut out = String::new();
        let mut rest = &input[..];
        let mut cuts = Vec::new();
        while !rest.is_empty() {
            let k = rng.gen_range(1..=rest.len());
            out += &r.push(&rest[..k]);
            cuts.push(k);
            rest = &rest[k..];
        }
        out += &r.flush();
        // Streamed in any chunks, no value comes out, and every occurrence of the longer one is
        // replaced as redacting the whole would (a shorter secret inside it must not take a
        // part and show the rest). Where adjacent occurrences of the shorter one are grouped
        // may differ ("aaa" → "[T]a" or "a[T]"): that shows nothing.
        let whole = StreamRedactor::new(&secrets).flush_all(&input);
        let long = if other.len() > secret.len() { "T" } else { "S" };
        let marker = format!("[REDACTED:{long}]");
        assert_eq!(out.matches(&marker).count(), whole.matches(&marker).count(),
            "{secret:?}/{other:?}, chunks {cuts:?}: {input:?}\n streamed {out:?}\n whole    {whole:?}");
        for v in [&secret, &other] {
            assert!(
                v.is_empty() || !out.contains(v.as_str()),
                "{v:?} came out ({secret:?}/{other:?}, chunks {cuts:?}): {:?} → {out:?}",
                String::from_utf8_lossy(&input)
            );
        }
    });
}

#[test]
fn an_events_file_of_any_bytes_pages_in_order() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("events.jsonl");
    check("SeqIndex", |rng| {
        let mut text = Vec::new();
        let mut seq = 0u64;
        for _ in 0..rng.gen_range(0..200) {
            match rng.gen_range(0..10) {
                0 => text.extend(random_text(rng, 30).bytes()),
                1 => text.push(b'\n'),
                2 => text.extend_from_slice(br#"{"seq":"#),
                3 => {
                    seq = seq.saturating_sub(rng.gen_range(0..3));
                    text.extend(
                        format!(
                            r#"{{"seq":{seq},"t_ms":0,"actor":"system","kind":"k","data":{{}}}}"#
                        )
                        .bytes(),
                    );
                    text.push(b'\n');
                }
                _ => {
                    seq += rng.gen_range(1..100);
                    text.extend(
                        format!(
                            r#"{{"seq":{seq},"t_ms":1,"actor":"agent","kind":"k","data":null}}"#
                        )
                        .bytes(),
                    );
                    text.push(b'\n');
                }
            }
        }
        std::fs::write(&path, &text).unwrap();
        let mut ix = SeqIndex::default();
        ix.extend(&path).unwrap();
        assert!(ix.len <= text.len() as u64);
        let after = rng.gen_range(0..seq.max(1) * 2);
        let page = ix.read(&path, after, 50, |_| true).unwrap();
        assert!(page.len() <= 50);
        assert!(
            page.iter().all(|e| e.seq > after),
            "a page after {after} holds older events"
        );
        assert!(page.windows(2).all(|w| w[0].seq < w[1].seq), "out of order");
    });
}
