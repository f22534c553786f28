//! Input injection into the X display through XTEST (enigo), on a thread of its own.
//!
//! Every input, whoever sends it (a viewer's data channel, a computer-use action), becomes one
//! [`InputAction`] and goes through this one queue, so actions from different sources never
//! interleave half-way (a drag cannot be split by a click).

use enigo::{Axis, Button, Coordinate, Direction, Enigo, Key, Keyboard, Mouse, Settings};
use std::sync::mpsc;
use tokio::sync::oneshot;

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

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("input injection unavailable on {display}: {message}")]
    Unavailable { display: String, message: String },
    #[error("input injection failed: {0}")]
    Failed(String),
}

type Reply = oneshot::Sender<Result<(i32, i32), InputError>>;

#[derive(Clone)]
pub struct Input {
    tx: mpsc::Sender<(Vec<InputAction>, Reply)>,
}

impl Input {
    pub fn spawn(display: String) -> Self {
        let (tx, rx) = mpsc::channel::<(Vec<InputAction>, Reply)>();
        std::thread::Builder::new()
            .name("input".into())
            .spawn(move || {
                let mut enigo: Option<Enigo> = None;
                for (actions, reply) in rx {
                    let r = run(&display, &mut enigo, &actions);
                    if r.is_err() {
                        // The display may have gone away: reconnect on the next action.
                        enigo = None;
                    }
                    let _ = reply.send(r);
                }
            })
            .expect("spawn input thread");
        Self { tx }
    }

    /// Runs the actions in order, as one unit; returns the pointer position afterwards.
    pub async fn run(&self, actions: Vec<InputAction>) -> Result<(i32, i32), InputError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((actions, tx))
            .map_err(|_| InputError::Failed("input thread stopped".into()))?;
        rx.await
            .map_err(|_| InputError::Failed("input thread stopped".into()))?
    }
}

fn run(
    display: &str,
    enigo: &mut Option<Enigo>,
    actions: &[InputAction],
) -> Result<(i32, i32), InputError> {
    if enigo.is_none() {
        let settings = Settings {
            x11_display: Some(display.to_string()),
            linux_delay: 1,
            ..Default::default()
        };
        *enigo = Some(Enigo::new(&settings).map_err(|e| InputError::Unavailable {
            display: display.to_string(),
            message: e.to_string(),
        })?);
    }
    let e = enigo.as_mut().expect("set above");
    let f = |r: Result<(), enigo::InputError>| r.map_err(|e| InputError::Failed(e.to_string()));
    for a in actions {
        match a {
            InputAction::MoveTo { x, y } => f(e.move_mouse(*x, *y, Coordinate::Abs))?,
            InputAction::Button { button, down } => {
                let b = match button {
                    MouseButton::Left => Button::Left,
                    MouseButton::Middle => Button::Middle,
                    MouseButton::Right => Button::Right,
                };
                f(e.button(
                    b,
                    if *down {
                        Direction::Press
                    } else {
                        Direction::Release
                    },
                ))?
            }
            InputAction::Scroll { dx, dy } => {
                if *dy != 0 {
                    f(e.scroll(*dy, Axis::Vertical))?;
                }
                if *dx != 0 {
                    f(e.scroll(*dx, Axis::Horizontal))?;
                }
            }
            InputAction::Key { keysym, down } => f(e.key(
                Key::Other(*keysym),
                if *down {
                    Direction::Press
                } else {
                    Direction::Release
                },
            ))?,
            InputAction::Text(t) => {
                if !t.is_empty() {
                    f(e.text(t))?
                }
            }
            InputAction::Location => {}
        }
    }
    e.location().map_err(|e| InputError::Failed(e.to_string()))
}
