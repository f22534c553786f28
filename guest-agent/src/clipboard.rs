//! The guest's X clipboard (the CLIPBOARD selection), for a human who holds control: text a
//! viewer sends becomes the guest's clipboard, and text copied in the guest goes back to the
//! viewers. One thread with its own X connection and an unmapped window: it owns the
//! selection when we set it (answering other clients' requests), and hears about other owners
//! through XFixes, then asks them for UTF-8 text.

use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::broadcast;
use x11rb::connection::Connection;
use x11rb::protocol::xfixes::{self, ConnectionExt as _};
use x11rb::protocol::xproto::{self, ConnectionExt as _};
use x11rb::protocol::Event;
use x11rb::wrapper::ConnectionExt as _;

/// Clipboard text above this is not taken from the guest (it would need INCR transfers).
pub const MAX_TEXT: usize = 256 * 1024;

#[derive(Clone)]
pub struct Clipboard {
    set_tx: mpsc::Sender<String>,
    changes: broadcast::Sender<String>,
}

struct Atoms {
    clipboard: u32,
    utf8: u32,
    targets: u32,
    text: u32,
    string: u32,
    prop: u32,
    incr: u32,
}

impl Clipboard {
    /// Starts the thread; it retries the display every second until it can connect.
    pub fn spawn(display: String) -> Self {
        let (set_tx, set_rx) = mpsc::channel::<String>();
        let (changes, _) = broadcast::channel(16);
        let tx = changes.clone();
        std::thread::Builder::new()
            .name("clipboard".into())
            .spawn(move || loop {
                if let Err(e) = run(&display, &set_rx, &tx) {
                    tracing::debug!(error = %e, "clipboard: X connection lost; retrying");
                }
                if matches!(
                    set_rx.recv_timeout(Duration::from_secs(1)),
                    Err(mpsc::RecvTimeoutError::Disconnected)
                ) {
                    return;
                }
            })
            .expect("spawn clipboard thread");
        Self { set_tx, changes }
    }

    /// Makes `text` the guest's clipboard.
    pub fn set(&self, text: String) {
        let _ = self.set_tx.send(text);
    }

    /// Text copied in the guest by its applications (not what we set ourselves).
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }
}

fn run(
    display: &str,
    set_rx: &mpsc::Receiver<String>,
    changes: &broadcast::Sender<String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (conn, screen) = x11rb::connect(Some(display))?;
    let root = conn.setup().roots[screen].root;
    let win = conn.generate_id()?;
    conn.create_window(
        0,
        win,
        root,
        -1,
        -1,
        1,
        1,
        0,
        xproto::WindowClass::INPUT_ONLY,
        0,
        &xproto::CreateWindowAux::new().event_mask(xproto::EventMask::PROPERTY_CHANGE),
    )?;
    let atom = |name: &str| -> Result<u32, Box<dyn std::error::Error>> {
        Ok(conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
    };
    let a = Atoms {
        clipboard: atom("CLIPBOARD")?,
        utf8: atom("UTF8_STRING")?,
        targets: atom("TARGETS")?,
        text: atom("TEXT")?,
        string: u32::from(xproto::AtomEnum::STRING),
        prop: atom("PORTHOLE_CLIPBOARD")?,
        incr: atom("INCR")?,
    };
    conn.xfixes_query_version(5, 0)?.reply()?;
    conn.xfixes_select_selection_input(
        win,
        a.clipboard,
        xfixes::SelectionEventMask::SET_SELECTION_OWNER,
    )?;
    conn.flush()?;
    let mut ours: Option<String> = None;
    loop {
        match set_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(text) => {
                conn.set_selection_owner(win, a.clipboard, x11rb::CURRENT_TIME)?;
                conn.flush()?;
                ours = Some(text);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
        }
        while let Some(ev) = conn.poll_for_event()? {
            match ev {
                Event::SelectionRequest(r) => answer(&conn, &a, &r, ours.as_deref())?,
                Event::SelectionClear(_) => ours = None,
                Event::XfixesSelectionNotify(n)
                    if n.selection == a.clipboard && n.owner != win && n.owner != x11rb::NONE =>
                {
                    conn.convert_selection(
                        win,
                        a.clipboard,
                        a.utf8,
                        a.prop,
                        n.selection_timestamp,
                    )?;
                    conn.flush()?;
                }
                Event::SelectionNotify(n) if n.requestor == win && n.property == a.prop => {
                    let p = conn
                        .get_property(
                            true,
                            win,
                            a.prop,
                            xproto::AtomEnum::ANY,
                            0,
                            (MAX_TEXT / 4) as u32,
                        )?
                        .reply()?;
                    if p.type_ != a.incr && p.bytes_after == 0 && !p.value.is_empty() {
                        let _ = changes.send(String::from_utf8_lossy(&p.value).into_owned());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Gives a requesting client our text (or the list of forms we offer), then tells it so.
fn answer(
    conn: &impl Connection,
    a: &Atoms,
    r: &xproto::SelectionRequestEvent,
    ours: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let property = if r.property == x11rb::NONE {
        r.target
    } else {
        r.property
    };
    let ok = match ours {
        Some(_) if r.target == a.targets => {
            conn.change_property32(
                xproto::PropMode::REPLACE,
                r.requestor,
                property,
                xproto::AtomEnum::ATOM,
                &[a.targets, a.utf8, a.text, a.string],
            )?;
            true
        }
        Some(text) if r.target == a.utf8 || r.target == a.text || r.target == a.string => {
            let ty = if r.target == a.string {
                a.string
            } else {
                a.utf8
            };
            conn.change_property8(
                xproto::PropMode::REPLACE,
                r.requestor,
                property,
                ty,
                text.as_bytes(),
            )?;
            true
        }
        _ => false,
    };
    let notify = xproto::SelectionNotifyEvent {
        response_type: xproto::SELECTION_NOTIFY_EVENT,
        sequence: 0,
        time: r.time,
        requestor: r.requestor,
        selection: r.selection,
        target: r.target,
        property: if ok { property } else { x11rb::NONE },
    };
    conn.send_event(false, r.requestor, xproto::EventMask::NO_EVENT, notify)?;
    conn.flush()?;
    Ok(())
}
