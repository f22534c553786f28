//! Input injection into the X display through XTEST (enigo), on a thread of its own.
//!
//! Every input, whoever sends it (a viewer's data channel, a computer-use action), becomes one
//! [`InputAction`] and goes through this one queue, so actions from different sources never
//! interleave half-way (a drag cannot be split by a click).
//!
//! The control lock is enforced **here**, where input is injected, not only where an action is
//! accepted: the agent's batches carry the control generation they were admitted at
//! ([`crate::control::Control::agent_admission`]), and before each action of such a batch (each
//! chunk of [`TYPE_CHUNK`] characters of a `type`) the thread compares it with the current one
//! ([`Gate`]). A stale batch is dropped from that point on, and every key and button the agent
//! still holds is released; a control change releases them too ([`Input::revoke`]). So nothing the
//! agent queued lands after a `take` beyond the chunk being typed at that moment.

use enigo::{Axis, Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};
use std::sync::{mpsc, Arc};
use tokio::sync::{oneshot, watch};

/// Characters of an agent's `type` injected between two checks of the control generation.
pub const TYPE_CHUNK: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MouseButton {
    Left,
    Middle,
    Right,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InputAction {
    MoveTo {
        x: i32,
        y: i32,
    },
    Button {
        button: MouseButton,
        down: bool,
    },
    /// Wheel notches: positive `dy` scrolls down, positive `dx` right.
    Scroll {
        dx: i32,
        dy: i32,
    },
    Key {
        keysym: u32,
        down: bool,
    },
    Text(String),
    Location,
}

/// Who sent a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A human at the controls (the data channel checked their viewer before sending).
    Human,
    /// The coding agent, admitted at this control generation.
    Agent(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input injection unavailable on {display}: {message}")]
    Unavailable { display: String, message: String },
    #[error("input injection failed: {0}")]
    Failed(String),
    /// Control changed after the agent's action was admitted: the rest of it was dropped.
    #[error("control changed while the action ran (generation {admitted} → {current}); the rest of it was dropped")]
    Refused { admitted: u64, current: u64 },
}

/// The current control generation, shared by the app (which publishes it under the control
/// lock) and the injection thread (which reads it before each agent action).
pub struct Gate {
    tx: watch::Sender<u64>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            tx: watch::channel(0).0,
        }
    }
}

impl Gate {
    pub fn current(&self) -> u64 {
        *self.tx.borrow()
    }

    /// Publishes a new generation (stored even with nobody waiting).
    pub fn set(&self, generation: u64) {
        self.tx.send_replace(generation);
    }

    /// Whether a batch from `origin` may still be injected.
    pub fn admits(&self, origin: Origin) -> Result<(), InputError> {
        match origin {
            Origin::Human => Ok(()),
            Origin::Agent(g) => {
                let current = self.current();
                if g == current {
                    Ok(())
                } else {
                    Err(InputError::Refused {
                        admitted: g,
                        current,
                    })
                }
            }
        }
    }

    /// Resolves once the generation is no longer `generation`.
    pub async fn changed_from(&self, generation: u64) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so this only ends on a change.
        let _ = rx.wait_for(|g| *g != generation).await;
    }
}

/// What the agent holds down right now, released when control leaves it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Held {
    pub keys: Vec<u32>,
    pub buttons: Vec<MouseButton>,
}

impl Held {
    fn note(&mut self, a: &InputAction) {
        match *a {
            InputAction::Key { keysym, down } => {
                self.keys.retain(|k| *k != keysym);
                if down {
                    self.keys.push(keysym);
                }
            }
            InputAction::Button { button, down } => {
                self.buttons.retain(|b| *b != button);
                if down {
                    self.buttons.push(button);
                }
            }
            _ => {}
        }
    }

    /// The actions that let go of everything held (keys last pressed first), emptying it.
    pub fn release_all(&mut self) -> Vec<InputAction> {
        let mut out: Vec<InputAction> = self
            .keys
            .drain(..)
            .rev()
            .map(|keysym| InputAction::Key {
                keysym,
                down: false,
            })
            .collect();
        out.extend(self.buttons.drain(..).map(|button| InputAction::Button {
            button,
            down: false,
        }));
        out
    }
}

/// Where actions go: the X display, or a recorder in tests.
pub trait Sink {
    /// One primitive action (a `Text` here is one chunk).
    fn apply(&mut self, a: &InputAction) -> Result<(), InputError>;
    /// The pointer position; a round trip, so everything sent before has been processed.
    fn location(&mut self) -> Result<(i32, i32), InputError>;
}

/// Splits text into chunks of at most `n` characters (never inside a character).
pub fn chunks(text: &str, n: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest
            .char_indices()
            .nth(n.max(1))
            .map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// Releases what the agent holds; errors are ignored (the display may be gone).
pub fn release_agent<S: Sink>(sink: &mut S, held: &mut Held) {
    for a in held.release_all() {
        let _ = sink.apply(&a);
    }
}

/// Runs one batch: an agent's is checked against the gate before each action and each chunk of
/// text, and cut short (with everything it holds released) once the gate has moved on.
pub fn execute<S: Sink>(
    sink: &mut S,
    gate: &Gate,
    held: &mut Held,
    origin: Origin,
    actions: &[InputAction],
) -> Result<(i32, i32), InputError> {
    let agent = matches!(origin, Origin::Agent(_));
    fn check<S: Sink>(
        sink: &mut S,
        gate: &Gate,
        held: &mut Held,
        origin: Origin,
    ) -> Result<(), InputError> {
        gate.admits(origin)
            .inspect_err(|_| release_agent(sink, held))
    }
    for a in actions {
        match a {
            InputAction::Text(t) if agent => {
                for c in chunks(t, TYPE_CHUNK) {
                    check(sink, gate, held, origin)?;
                    sink.apply(&InputAction::Text(c.to_string()))?;
                    // Wait for the server to take this chunk before deciding on the next one.
                    sink.location()?;
                }
            }
            InputAction::Text(t) if t.is_empty() => {}
            _ => {
                check(sink, gate, held, origin)?;
                sink.apply(a)?;
                if agent {
                    held.note(a);
                }
            }
        }
    }
    sink.location()
}

type Reply = oneshot::Sender<Result<(i32, i32), InputError>>;

enum Job {
    Run {
        origin: Origin,
        actions: Vec<InputAction>,
        reply: Reply,
    },
    /// Control changed: let go of whatever the agent holds.
    ReleaseAgent,
}

#[derive(Clone)]
pub struct Input {
    tx: mpsc::Sender<Job>,
    gate: Arc<Gate>,
}

/// The X display through enigo, connected on first use and again after an error.
struct X11 {
    display: String,
    enigo: Option<Enigo>,
}

impl X11 {
    fn enigo(&mut self) -> Result<&mut Enigo, InputError> {
        if self.enigo.is_none() {
            let settings = Settings {
                x11_display: Some(self.display.clone()),
                linux_delay: 1,
                ..Default::default()
            };
            self.enigo = Some(Enigo::new(&settings).map_err(|e| InputError::Unavailable {
                display: self.display.clone(),
                message: e.to_string(),
            })?);
        }
        Ok(self.enigo.as_mut().expect("set above"))
    }
}

/// The unshifted key of a character that a US keymap (what Xvfb and Xvnc start with) types
/// with Shift held.
pub fn us_shifted(c: char) -> Option<char> {
    Some(match c {
        'A'..='Z' => c.to_ascii_lowercase(),
        '!' => '1',
        '@' => '2',
        '#' => '3',
        '$' => '4',
        '%' => '5',
        '^' => '6',
        '&' => '7',
        '*' => '8',
        '(' => '9',
        ')' => '0',
        '_' => '-',
        '+' => '=',
        '{' => '[',
        '}' => ']',
        '|' => '\\',
        ':' => ';',
        '"' => '\'',
        '<' => ',',
        '>' => '.',
        '?' => '/',
        '~' => '`',
        _ => return None,
    })
}

/// Types text. Shifted ASCII goes as Shift + its key: enigo's `text` maps a character the
/// keymap lacks at that level onto a spare keycode and moves on, and a client that reads the
/// key after the mapping changed again sees nothing (`\u{0}` for `A`, `@`, `%` under load in
/// computer.test). Unshifted characters and everything else keep enigo's path.
fn type_text(e: &mut Enigo, t: &str) -> Result<(), enigo::InputError> {
    let mut plain = String::new();
    for c in t.chars() {
        match us_shifted(c) {
            Some(base) => {
                if !plain.is_empty() {
                    e.text(&plain)?;
                    plain.clear();
                }
                e.key(Key::Shift, Direction::Press)?;
                let r = e.key(Key::Unicode(base), Direction::Click);
                e.key(Key::Shift, Direction::Release)?;
                r?;
            }
            None => plain.push(c),
        }
    }
    if !plain.is_empty() {
        e.text(&plain)?;
    }
    Ok(())
}

fn dir(down: bool) -> Direction {
    if down {
        Direction::Press
    } else {
        Direction::Release
    }
}

impl Sink for X11 {
    fn apply(&mut self, a: &InputAction) -> Result<(), InputError> {
        let e = self.enigo()?;
        let f = |r: Result<(), enigo::InputError>| r.map_err(|e| InputError::Failed(e.to_string()));
        match a {
            InputAction::MoveTo { x, y } => f(e.move_mouse(*x, *y, Coordinate::Abs)),
            InputAction::Button { button, down } => {
                let b = match button {
                    MouseButton::Left => Button::Left,
                    MouseButton::Middle => Button::Middle,
                    MouseButton::Right => Button::Right,
                };
                f(e.button(b, dir(*down)))
            }
            InputAction::Scroll { dx, dy } => {
                if *dy != 0 {
                    f(e.scroll(*dy, Axis::Vertical))?;
                }
                if *dx != 0 {
                    f(e.scroll(*dx, Axis::Horizontal))?;
                }
                Ok(())
            }
            InputAction::Key { keysym, down } => f(e.key(Key::Other(*keysym), dir(*down))),
            InputAction::Text(t) if t.is_empty() => Ok(()),
            InputAction::Text(t) => type_text(e, t).map_err(|m| InputError::Failed(m.to_string())),
            InputAction::Location => Ok(()),
        }
    }

    fn location(&mut self) -> Result<(i32, i32), InputError> {
        self.enigo()?
            .location()
            .map_err(|e| InputError::Failed(e.to_string()))
    }
}

impl Input {
    pub fn spawn(display: String) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        std::thread::Builder::new()
            .name("input".into())
            .spawn(move || {
                let mut x = X11 {
                    display,
                    enigo: None,
                };
                let mut held = Held::default();
                for job in rx {
                    match job {
                        Job::Run {
                            origin,
                            actions,
                            reply,
                        } => {
                            let r = execute(&mut x, &g, &mut held, origin, &actions);
                            if matches!(
                                r,
                                Err(InputError::Unavailable { .. } | InputError::Failed(_))
                            ) {
                                // The display may have gone away: reconnect on the next action.
                                x.enigo = None;
                            }
                            let _ = reply.send(r);
                        }
                        Job::ReleaseAgent => release_agent(&mut x, &mut held),
                    }
                }
            })
            .expect("spawn input thread");
        Self { tx, gate }
    }

    async fn send(
        &self,
        origin: Origin,
        actions: Vec<InputAction>,
    ) -> Result<(i32, i32), InputError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Run {
                origin,
                actions,
                reply,
            })
            .map_err(|_| InputError::Failed("input thread stopped".into()))?;
        rx.await
            .map_err(|_| InputError::Failed("input thread stopped".into()))?
    }

    /// Runs a human's actions in order, as one unit; returns the pointer position afterwards.
    pub async fn run(&self, actions: Vec<InputAction>) -> Result<(i32, i32), InputError> {
        self.send(Origin::Human, actions).await
    }

    /// Runs the agent's actions, admitted at `generation`: dropped from the first action at
    /// which that is no longer the current generation ([`InputError::Refused`]).
    pub async fn run_agent(
        &self,
        generation: u64,
        actions: Vec<InputAction>,
    ) -> Result<(i32, i32), InputError> {
        self.send(Origin::Agent(generation), actions).await
    }

    /// Control changed to `generation` (call under the control lock, so generations are
    /// published in order): the agent's pending input is stale from now on, and whatever it
    /// holds is released.
    pub fn revoke(&self, generation: u64) {
        self.gate.set(generation);
        let _ = self.tx.send(Job::ReleaseAgent);
    }

    pub fn generation(&self) -> u64 {
        self.gate.current()
    }

    /// Resolves once control has changed from `generation` (ends a `hold_key` early).
    pub async fn changed_from(&self, generation: u64) {
        self.gate.changed_from(generation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what would have been injected; bumps the gate after `bump_after` applies, as a
    /// `take` arriving in the middle of a batch would.
    struct Rec {
        log: Vec<InputAction>,
        gate: Arc<Gate>,
        bump_after: Option<usize>,
    }

    impl Sink for Rec {
        fn apply(&mut self, a: &InputAction) -> Result<(), InputError> {
            self.log.push(a.clone());
            if self.bump_after == Some(self.log.len()) {
                self.gate.set(self.gate.current() + 1);
            }
            Ok(())
        }
        fn location(&mut self) -> Result<(i32, i32), InputError> {
            Ok((1, 2))
        }
    }

    fn rec(gate: &Arc<Gate>, bump_after: Option<usize>) -> Rec {
        Rec {
            log: vec![],
            gate: gate.clone(),
            bump_after,
        }
    }

    const SHIFT: u32 = 0xffe1;
    fn key(keysym: u32, down: bool) -> InputAction {
        InputAction::Key { keysym, down }
    }
    fn btn(down: bool) -> InputAction {
        InputAction::Button {
            button: MouseButton::Left,
            down,
        }
    }

    #[test]
    fn shifted_ascii_goes_as_shift_and_its_key() {
        for (c, want) in [
            ('A', Some('a')),
            ('Z', Some('z')),
            ('!', Some('1')),
            ('@', Some('2')),
            ('%', Some('5')),
            (':', Some(';')),
            ('"', Some('\'')),
            ('|', Some('\\')),
            ('?', Some('/')),
            ('~', Some('`')),
            ('a', None),
            ('1', None),
            ('-', None),
            (' ', None),
            ('é', None),
        ] {
            assert_eq!(us_shifted(c), want, "{c:?}");
        }
    }

    #[test]
    fn chunking() {
        let cases: &[(&str, usize, &[&str])] = &[
            ("", 4, &[]),
            ("abc", 4, &["abc"]),
            ("abcd", 4, &["abcd"]),
            ("abcdefghij", 4, &["abcd", "efgh", "ij"]),
            ("ééééé", 2, &["éé", "éé", "é"]),
            ("a€b", 1, &["a", "€", "b"]),
        ];
        for (text, n, want) in cases {
            assert_eq!(
                chunks(text, *n).collect::<Vec<_>>(),
                *want,
                "{text:?} by {n}"
            );
        }
    }

    /// Each row: the gate's generation, the batch's origin, the actions, where a take lands
    /// (after that many injected primitives), and what must have been injected, in order.
    #[test]
    fn gated_injection() {
        let long: String = "x".repeat(TYPE_CHUNK * 5);
        let chunk = "x".repeat(TYPE_CHUNK);
        type Row = (
            &'static str,
            u64,
            Origin,
            Vec<InputAction>,
            Option<usize>,
            Vec<InputAction>,
            bool,
        );
        let rows: Vec<Row> = vec![
            (
                "current agent batch runs whole",
                3,
                Origin::Agent(3),
                vec![
                    key(SHIFT, true),
                    key(0x61, true),
                    key(0x61, false),
                    key(SHIFT, false),
                ],
                None,
                vec![
                    key(SHIFT, true),
                    key(0x61, true),
                    key(0x61, false),
                    key(SHIFT, false),
                ],
                true,
            ),
            (
                "stale agent batch injects nothing",
                4,
                Origin::Agent(3),
                vec![InputAction::MoveTo { x: 5, y: 5 }, btn(true), btn(false)],
                None,
                vec![],
                false,
            ),
            (
                "human batches are never gated here",
                9,
                Origin::Human,
                vec![InputAction::Text(long.clone())],
                Some(1),
                vec![InputAction::Text(long.clone())],
                true,
            ),
            (
                "a long type stops within one chunk of the take",
                0,
                Origin::Agent(0),
                vec![InputAction::Text(long.clone())],
                Some(2),
                vec![
                    InputAction::Text(chunk.clone()),
                    InputAction::Text(chunk.clone()),
                ],
                false,
            ),
            (
                "take mid-chord: the held key is released, nothing else lands",
                0,
                Origin::Agent(0),
                vec![
                    key(SHIFT, true),
                    key(0x61, true),
                    key(0x61, false),
                    key(SHIFT, false),
                ],
                Some(1),
                vec![key(SHIFT, true), key(SHIFT, false)],
                false,
            ),
            (
                "take mid-drag: the button is let go",
                0,
                Origin::Agent(0),
                vec![
                    InputAction::MoveTo { x: 1, y: 1 },
                    btn(true),
                    InputAction::MoveTo { x: 9, y: 9 },
                    btn(false),
                ],
                Some(2),
                vec![InputAction::MoveTo { x: 1, y: 1 }, btn(true), btn(false)],
                false,
            ),
        ];
        for (name, gen, origin, actions, bump_after, want, ok) in rows {
            let gate = Arc::new(Gate::default());
            gate.set(gen);
            let mut sink = rec(&gate, bump_after);
            let mut held = Held::default();
            let r = execute(&mut sink, &gate, &mut held, origin, &actions);
            assert_eq!(sink.log, want, "{name}");
            match (r, ok) {
                (Ok(p), true) => assert_eq!(p, (1, 2), "{name}"),
                (Err(InputError::Refused { admitted, current }), false) => {
                    assert_ne!(admitted, current, "{name}")
                }
                (r, _) => panic!("{name}: got {r:?}"),
            }
            assert_eq!(held, Held::default(), "{name}: nothing left held");
        }
    }

    /// Keys and buttons the agent leaves down across batches (hold_key, left_mouse_down) are
    /// tracked, and released in reverse order when control changes.
    #[test]
    fn held_across_batches_released_on_revoke() {
        let gate = Arc::new(Gate::default());
        let mut sink = rec(&gate, None);
        let mut held = Held::default();
        let ctrl = 0xffe3;
        execute(
            &mut sink,
            &gate,
            &mut held,
            Origin::Agent(0),
            &[key(ctrl, true), key(SHIFT, true), btn(true)],
        )
        .unwrap();
        assert_eq!(held.keys, vec![ctrl, SHIFT]);
        assert_eq!(held.buttons, vec![MouseButton::Left]);
        // A human's batch does not change what the agent holds.
        execute(
            &mut sink,
            &gate,
            &mut held,
            Origin::Human,
            &[key(SHIFT, false)],
        )
        .unwrap();
        assert_eq!(held.keys, vec![ctrl, SHIFT]);
        // The take: gate moves on, the thread releases.
        gate.set(1);
        sink.log.clear();
        release_agent(&mut sink, &mut held);
        assert_eq!(
            sink.log,
            vec![key(SHIFT, false), key(ctrl, false), btn(false)]
        );
        assert_eq!(held, Held::default());
        // The agent's release of the hold, sent later with its old generation, is dropped.
        sink.log.clear();
        let r = execute(
            &mut sink,
            &gate,
            &mut held,
            Origin::Agent(0),
            &[key(ctrl, false)],
        );
        assert!(
            matches!(
                r,
                Err(InputError::Refused {
                    admitted: 0,
                    current: 1
                })
            ),
            "{r:?}"
        );
        assert!(sink.log.is_empty());
    }

    #[tokio::test]
    async fn changed_from_wakes_on_a_change_only() {
        let gate = Arc::new(Gate::default());
        gate.set(5);
        // Already different: resolves at once.
        tokio::time::timeout(std::time::Duration::from_millis(100), gate.changed_from(4))
            .await
            .expect("generation 5 is not 4");
        let g = gate.clone();
        let waiter = tokio::spawn(async move { g.changed_from(5).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "no change yet");
        gate.set(6);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken by the change")
            .unwrap();
    }
}
