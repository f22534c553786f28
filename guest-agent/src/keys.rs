//! Key names → X keysyms: DOM `KeyboardEvent` (`code`, `key`) from viewers, and xdotool-style
//! chords (`ctrl+shift+t`, `Return`) from computer-use actions.
//!
//! Keysyms, not keycodes, cross this boundary: the injector finds (or maps) a keycode for each
//! keysym on the guest's own keymap, so a viewer's keyboard layout never has to match the guest's.

/// Named keysyms, by X name (as xdotool and the Anthropic tool spell them) and aliases.
const NAMED: &[(&str, u32)] = &[
    ("BackSpace", 0xff08),
    ("Tab", 0xff09),
    ("Return", 0xff0d),
    ("Enter", 0xff0d),
    ("Escape", 0xff1b),
    ("Esc", 0xff1b),
    ("Delete", 0xffff),
    ("Home", 0xff50),
    ("Left", 0xff51),
    ("Up", 0xff52),
    ("Right", 0xff53),
    ("Down", 0xff54),
    ("Page_Up", 0xff55),
    ("Prior", 0xff55),
    ("Page_Down", 0xff56),
    ("Next", 0xff56),
    ("End", 0xff57),
    ("Insert", 0xff63),
    ("Menu", 0xff67),
    ("Pause", 0xff13),
    ("Print", 0xff61),
    ("Scroll_Lock", 0xff14),
    ("Num_Lock", 0xff7f),
    ("Caps_Lock", 0xffe5),
    ("space", 0x20),
    ("Shift_L", 0xffe1),
    ("Shift_R", 0xffe2),
    ("Control_L", 0xffe3),
    ("Control_R", 0xffe4),
    ("Alt_L", 0xffe9),
    ("Alt_R", 0xffea),
    ("Super_L", 0xffeb),
    ("Super_R", 0xffec),
    ("Meta_L", 0xffe7),
    ("Meta_R", 0xffe8),
    ("shift", 0xffe1),
    ("ctrl", 0xffe3),
    ("control", 0xffe3),
    ("alt", 0xffe9),
    ("super", 0xffeb),
    ("cmd", 0xffeb),
    ("win", 0xffeb),
    ("meta", 0xffe7),
    ("minus", 0x2d),
    ("plus", 0x2b),
    ("equal", 0x3d),
    ("comma", 0x2c),
    ("period", 0x2e),
    ("slash", 0x2f),
    ("backslash", 0x5c),
    ("semicolon", 0x3b),
    ("apostrophe", 0x27),
    ("grave", 0x60),
    ("bracketleft", 0x5b),
    ("bracketright", 0x5d),
    ("KP_Enter", 0xff8d),
    ("KP_Add", 0xffab),
    ("KP_Subtract", 0xffad),
    ("KP_Multiply", 0xffaa),
    ("KP_Divide", 0xffaf),
    ("KP_Decimal", 0xffae),
    ("XF86AudioMute", 0x1008ff12),
    ("XF86AudioLowerVolume", 0x1008ff11),
    ("XF86AudioRaiseVolume", 0x1008ff13),
];

/// Keysym of a single character (X's Latin-1 range maps directly, the rest via 0x0100_0000).
pub fn char_keysym(c: char) -> u32 {
    let cp = c as u32;
    match cp {
        0x20..=0x7e | 0xa0..=0xff => cp,
        0x0a | 0x0d => 0xff0d,
        0x09 => 0xff09,
        _ => 0x0100_0000 + cp,
    }
}

fn named(name: &str) -> Option<u32> {
    if let Some(&(_, k)) = NAMED.iter().find(|(n, _)| *n == name) {
        return Some(k);
    }
    // Case-insensitive second pass, so "return", "PAGE_DOWN" and "Ctrl" work as models write them.
    if let Some(&(_, k)) = NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(k);
    }
    let f = name.strip_prefix('F').or_else(|| name.strip_prefix('f'))?;
    match f.parse::<u32>() {
        Ok(n @ 1..=24) => Some(0xffbe + n - 1),
        _ => None,
    }
}

/// One xdotool key name: a named key, F1–F24, or a single character.
pub fn xdotool_keysym(name: &str) -> Option<u32> {
    let mut chars = name.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(char_keysym(c)),
        _ => named(name),
    }
}

/// Parses an xdotool chord (`ctrl+s`, `ctrl+shift+Tab`, `Return`); several chords separated by
/// spaces are pressed one after the other. Errors name the bad key.
pub fn parse_chords(text: &str) -> Result<Vec<Vec<u32>>, String> {
    let mut out = Vec::new();
    for chord in text.split_whitespace() {
        let mut keys = Vec::new();
        // A trailing '+' is the plus key itself ("ctrl++").
        let parts: Vec<&str> = if chord.ends_with("++") {
            let mut p: Vec<&str> = chord[..chord.len() - 2].split('+').collect();
            p.push("+");
            p
        } else if chord == "+" {
            vec!["+"]
        } else {
            chord.split('+').collect()
        };
        for part in parts {
            match xdotool_keysym(part) {
                Some(k) if !part.is_empty() => keys.push(k),
                _ => {
                    return Err(format!(
                        "unknown key name '{part}' in '{chord}'; use X keysym names such as Return, Tab, \
                         Escape, BackSpace, Delete, Up, Down, Left, Right, Home, End, Page_Up, Page_Down, \
                         F1-F24, modifiers ctrl, shift, alt, super, or a single character"
                    ))
                }
            }
        }
        out.push(keys);
    }
    if out.is_empty() {
        return Err("empty key chord".into());
    }
    Ok(out)
}

/// DOM `KeyboardEvent.code` → keysym for keys that do not print; `None` for printing keys.
fn dom_code_keysym(code: &str) -> Option<u32> {
    let name = match code {
        "Enter" | "NumpadEnter" => "Return",
        "Backspace" => "BackSpace",
        "Tab" => "Tab",
        "Escape" => "Escape",
        "Delete" => "Delete",
        "Insert" => "Insert",
        "Home" => "Home",
        "End" => "End",
        "PageUp" => "Page_Up",
        "PageDown" => "Page_Down",
        "ArrowLeft" => "Left",
        "ArrowRight" => "Right",
        "ArrowUp" => "Up",
        "ArrowDown" => "Down",
        "ShiftLeft" => "Shift_L",
        "ShiftRight" => "Shift_R",
        "ControlLeft" => "Control_L",
        "ControlRight" => "Control_R",
        "AltLeft" => "Alt_L",
        "AltRight" => "Alt_R",
        "MetaLeft" | "OSLeft" => "Super_L",
        "MetaRight" | "OSRight" => "Super_R",
        "CapsLock" => "Caps_Lock",
        "ContextMenu" => "Menu",
        "PrintScreen" => "Print",
        "Pause" => "Pause",
        "ScrollLock" => "Scroll_Lock",
        "NumLock" => "Num_Lock",
        c if c.starts_with('F') && c[1..].parse::<u32>().is_ok() => c,
        _ => return None,
    };
    named(name)
}

/// Keysym for a DOM key event. Printing keys use `key` (the character the viewer's layout
/// produced, so "é" and "Z" arrive as typed); the rest use the layout-independent `code`.
pub fn dom_keysym(code: &str, key: &str) -> Option<u32> {
    if let Some(k) = dom_code_keysym(code) {
        return Some(k);
    }
    let mut chars = key.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(char_keysym(c)),
        _ => match key {
            // Keys a browser reports by name with an unfamiliar code (e.g. a remapped key).
            "Enter" => Some(0xff0d),
            "Backspace" => Some(0xff08),
            "Tab" => Some(0xff09),
            "Escape" => Some(0xff1b),
            _ => None,
        },
    }
}

/// The name a viewer's key may be recorded under when it does not print: its DOM `code`
/// (`Enter`, `Backspace`, `ArrowLeft`, `F5`, `ShiftLeft`, ...), or for the few keys a browser
/// names with an unfamiliar code, its `key`. `None` for keys that print: what they typed never
/// reaches the timeline (a human's password would be readable there by the agent).
pub fn dom_special_name<'a>(code: &'a str, key: &'a str) -> Option<&'a str> {
    if dom_code_keysym(code).is_some() {
        return Some(code);
    }
    match key {
        "Enter" | "Backspace" | "Tab" | "Escape" => Some(key),
        _ => None,
    }
}

/// The modifier a DOM `code` is, by the name events record it under.
pub fn dom_modifier(code: &str) -> Option<&'static str> {
    Some(match code {
        "ControlLeft" | "ControlRight" => "ctrl",
        "ShiftLeft" | "ShiftRight" => "shift",
        "AltLeft" | "AltRight" => "alt",
        "MetaLeft" | "MetaRight" | "OSLeft" | "OSRight" => "meta",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dom_keys() {
        let cases: &[(&str, &str, Option<u32>)] = &[
            ("KeyA", "a", Some(0x61)),
            ("KeyA", "A", Some(0x41)),
            ("Digit1", "!", Some(0x21)),
            ("Enter", "Enter", Some(0xff0d)),
            ("NumpadEnter", "Enter", Some(0xff0d)),
            ("ShiftLeft", "Shift", Some(0xffe1)),
            ("ControlRight", "Control", Some(0xffe4)),
            ("ArrowUp", "ArrowUp", Some(0xff52)),
            ("F5", "F5", Some(0xffc2)),
            ("Space", " ", Some(0x20)),
            ("KeyE", "é", Some(0xe9)),
            ("KeyQ", "€", Some(0x0100_20ac)),
            ("Unidentified", "Dead", None),
        ];
        for (code, key, want) in cases {
            assert_eq!(dom_keysym(code, key), *want, "code={code} key={key}");
        }
    }

    #[test]
    fn xdotool_chords() {
        assert_eq!(parse_chords("ctrl+s").unwrap(), vec![vec![0xffe3, 0x73]]);
        assert_eq!(parse_chords("Return").unwrap(), vec![vec![0xff0d]]);
        assert_eq!(
            parse_chords("ctrl+shift+Tab").unwrap(),
            vec![vec![0xffe3, 0xffe1, 0xff09]]
        );
        assert_eq!(parse_chords("ctrl++").unwrap(), vec![vec![0xffe3, 0x2b]]);
        assert_eq!(
            parse_chords("Page_Down F12").unwrap(),
            vec![vec![0xff56], vec![0xffc9]]
        );
        assert_eq!(parse_chords("RETURN").unwrap(), vec![vec![0xff0d]]);
        let e = parse_chords("ctrl+frobnicate").unwrap_err();
        assert!(e.contains("'frobnicate'") && e.contains("Return"), "{e}");
        assert!(parse_chords("ctrl+").is_err());
        assert!(parse_chords("  ").is_err());
    }
}
