//! The guest's screen size: read it, and change it through RandR so the display can follow a
//! viewer's window.
//!
//! Only X servers that let a client create modes can follow: TigerVNC's Xvnc does (any size up to
//! 32768²), Debian's Xvfb does not (its screen is fixed at the size it started with, RandR's
//! maximum equals the current size). Capture notices the new size by itself (ConfigureNotify on
//! the root window), restarts the encoder with a keyframe, and the recorder starts a new part.

use porthole_proto::DisplayState;
use x11rb::connection::Connection;
use x11rb::protocol::randr::{self, ConnectionExt as _};
use x11rb::protocol::xproto::ConnectionExt as _;
use x11rb::rust_connection::RustConnection;

/// Sizes a viewer may ask for. The lower bound keeps menus usable; the upper one keeps the
/// software encode (x264 on the guest's own cores) within a frame time.
pub const MIN: (u32, u32) = (320, 240);
pub const MAX: (u32, u32) = (3840, 2160);

#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The requested size is outside what the agent accepts.
    #[error("display size {0}x{1} is out of range: width {min_w}..={max_w}, height {min_h}..={max_h}", min_w = MIN.0, max_w = MAX.0, min_h = MIN.1, max_h = MAX.1)]
    OutOfRange(u32, u32),
    /// The X server cannot change its screen size.
    #[error("{0}")]
    Fixed(String),
    /// Talking to the X server failed.
    #[error("X display {display}: {message}")]
    X { display: String, message: String },
}

type Result<T> = std::result::Result<T, DisplayError>;

struct Screen {
    conn: RustConnection,
    root: u32,
    display: String,
}

impl Screen {
    fn open(display: &str) -> Result<Self> {
        let (conn, n) = RustConnection::connect(Some(display)).map_err(|e| DisplayError::X {
            display: display.into(),
            message: e.to_string(),
        })?;
        let root = conn.setup().roots[n].root;
        Ok(Self {
            conn,
            root,
            display: display.into(),
        })
    }

    fn x(&self, e: impl std::fmt::Display) -> DisplayError {
        DisplayError::X {
            display: self.display.clone(),
            message: e.to_string(),
        }
    }

    fn size(&self) -> Result<(u32, u32)> {
        let g = self
            .conn
            .get_geometry(self.root)
            .map_err(|e| self.x(e))?
            .reply()
            .map_err(|e| self.x(e))?;
        Ok((g.width as u32, g.height as u32))
    }

    /// Why this server cannot follow a window, or None when it can.
    fn fixed_reason(&self, now: (u32, u32)) -> Result<Option<String>> {
        let v = self
            .conn
            .randr_query_version(1, 3)
            .map_err(|e| self.x(e))?
            .reply();
        let new_enough = matches!(&v, Ok(v) if (v.major_version, v.minor_version) >= (1, 2));
        if !new_enough {
            return Ok(Some(format!(
                "the X server on {} has no RandR 1.2, so its screen size is fixed",
                self.display
            )));
        }
        let r = self
            .conn
            .randr_get_screen_size_range(self.root)
            .map_err(|e| self.x(e))?
            .reply()
            .map_err(|e| self.x(e))?;
        if (r.max_width as u32, r.max_height as u32) == now {
            return Ok(Some(format!(
                "the X server on {} has a fixed {}x{} screen (Xvfb cannot add RandR modes); run the \
                 display under Xvnc (tigervnc-standalone-server) to let it follow the window",
                self.display, now.0, now.1
            )));
        }
        Ok(None)
    }

    fn resize(&self, w: u32, h: u32) -> Result<()> {
        let c = &self.conn;
        let x = |e: &dyn std::fmt::Display| self.x(e);
        let res = c
            .randr_get_screen_resources_current(self.root)
            .map_err(|e| x(&e))?
            .reply()
            .map_err(|e| x(&e))?;
        // The first connected output that drives a CRTC is the screen we show.
        let mut found = None;
        for &o in &res.outputs {
            let info = c
                .randr_get_output_info(o, res.config_timestamp)
                .map_err(|e| x(&e))?
                .reply()
                .map_err(|e| x(&e))?;
            if info.connection == randr::Connection::CONNECTED && info.crtc != 0 {
                found = Some((o, info));
                break;
            }
        }
        let (output, info) = found.ok_or_else(|| {
            DisplayError::Fixed(format!(
                "the X server on {} has no active output",
                self.display
            ))
        })?;
        let mode = match res
            .modes
            .iter()
            .find(|m| (m.width as u32, m.height as u32) == (w, h))
        {
            Some(m) if info.modes.contains(&m.id) => m.id,
            Some(m) => {
                c.randr_add_output_mode(output, m.id).map_err(|e| x(&e))?;
                m.id
            }
            None => {
                let name = format!("{w}x{h}");
                // Timings matter to no virtual server; a 60 Hz dot clock keeps xrandr's listing sane.
                let mi = randr::ModeInfo {
                    id: 0,
                    width: w as u16,
                    height: h as u16,
                    dot_clock: w * h * 60,
                    hsync_start: w as u16,
                    hsync_end: w as u16,
                    htotal: w as u16,
                    hskew: 0,
                    vsync_start: h as u16,
                    vsync_end: h as u16,
                    vtotal: h as u16,
                    name_len: name.len() as u16,
                    mode_flags: Default::default(),
                };
                let id = c
                    .randr_create_mode(self.root, mi, name.as_bytes())
                    .map_err(|e| x(&e))?
                    .reply()
                    .map_err(|e| {
                        DisplayError::Fixed(format!(
                            "the X server on {} refused a new {name} mode: {e}",
                            self.display
                        ))
                    })?
                    .mode;
                c.randr_add_output_mode(output, id).map_err(|e| x(&e))?;
                id
            }
        };
        let crtc = c
            .randr_get_crtc_info(info.crtc, res.config_timestamp)
            .map_err(|e| x(&e))?
            .reply()
            .map_err(|e| x(&e))?;
        let now = self.size()?;
        // Like xrandr: the framebuffer first grows to hold both sizes, the CRTC switches, then the
        // framebuffer shrinks to fit; a CRTC may never hang outside the screen.
        let both = (now.0.max(w), now.1.max(h));
        let mm = |px: u32| px * 254 / 960; // 96 dpi
        if both != now {
            c.randr_set_screen_size(
                self.root,
                both.0 as u16,
                both.1 as u16,
                mm(both.0),
                mm(both.1),
            )
            .map_err(|e| x(&e))?
            .check()
            .map_err(|e| {
                DisplayError::Fixed(format!(
                    "the X server on {} refused {}x{}: {e}",
                    self.display, both.0, both.1
                ))
            })?;
        }
        // Mode creation and the size change bumped the configuration time: read it afresh.
        let res = c
            .randr_get_screen_resources_current(self.root)
            .map_err(|e| x(&e))?
            .reply()
            .map_err(|e| x(&e))?;
        let st = c
            .randr_set_crtc_config(
                info.crtc,
                x11rb::CURRENT_TIME,
                res.config_timestamp,
                0,
                0,
                mode,
                crtc.rotation,
                &[output],
            )
            .map_err(|e| x(&e))?
            .reply()
            .map_err(|e| x(&e))?;
        if st.status != randr::SetConfig::SUCCESS {
            return Err(DisplayError::Fixed(format!(
                "the X server on {} refused mode {w}x{h} ({:?})",
                self.display, st.status
            )));
        }
        if (w, h) != both {
            c.randr_set_screen_size(self.root, w as u16, h as u16, mm(w), mm(h))
                .map_err(|e| x(&e))?
                .check()
                .map_err(|e| x(&e))?;
        }
        Ok(())
    }
}

/// The current size and whether it can change.
pub fn info(display: &str) -> Result<DisplayState> {
    let s = Screen::open(display)?;
    let (width, height) = s.size()?;
    let reason = s.fixed_reason((width, height))?;
    Ok(DisplayState {
        width,
        height,
        resizable: reason.is_none(),
        reason,
    })
}

/// What a request for `w`x`h` becomes: even sizes (4:2:0 video needs them), within range.
pub fn normalize(w: u32, h: u32) -> Result<(u32, u32)> {
    let (w2, h2) = (w & !1, h & !1);
    if w2 < MIN.0 || h2 < MIN.1 || w2 > MAX.0 || h2 > MAX.1 {
        return Err(DisplayError::OutOfRange(w, h));
    }
    Ok((w2, h2))
}

/// Sets the screen to `w`x`h` (normalized); returns the size before and after. Blocking.
pub fn resize(display: &str, w: u32, h: u32) -> Result<((u32, u32), DisplayState)> {
    let (w, h) = normalize(w, h)?;
    let s = Screen::open(display)?;
    let before = s.size()?;
    if before != (w, h) {
        if let Some(reason) = s.fixed_reason(before)? {
            return Err(DisplayError::Fixed(reason));
        }
        s.resize(w, h)?;
    }
    let (width, height) = s.size()?;
    Ok((
        before,
        DisplayState {
            width,
            height,
            resizable: true,
            reason: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_rounds_down_to_even_and_bounds() {
        #[track_caller]
        fn check(w: u32, h: u32, want: Option<(u32, u32)>) {
            assert_eq!(normalize(w, h).ok(), want, "{w}x{h}");
        }
        check(1280, 800, Some((1280, 800)));
        check(1281, 801, Some((1280, 800)));
        check(320, 240, Some((320, 240)));
        check(321, 241, Some((320, 240)));
        check(319, 600, None);
        check(800, 239, None);
        check(3840, 2160, Some((3840, 2160)));
        check(3841, 2160, Some((3840, 2160)));
        check(3842, 2160, None);
        check(0, 0, None);
    }

    #[test]
    fn out_of_range_names_the_limits() {
        let e = normalize(100, 100).unwrap_err().to_string();
        assert!(e.contains("100x100") && e.contains("320..=3840"), "{e}");
    }
}
