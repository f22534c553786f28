//! Frame sources: where pictures come from before they are encoded.
//!
//! The live path uses [`x11::X11Source`] (MIT-SHM, driven by X Damage). Tests and benchmarks use
//! [`synthetic::SyntheticSource`], which implements the same trait without an X server, so the
//! pipeline, the encoder and the stream can be exercised exactly as in production.

pub mod synthetic;
pub mod x11;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The X display could not be opened or went away.
    #[error("X display {display}: {message}")]
    Display { display: String, message: String },
    /// The X server lacks an extension the capture needs.
    #[error("X display {display} lacks the {extension} extension")]
    MissingExtension {
        display: String,
        extension: &'static str,
    },
    #[error("shared memory: {0}")]
    Shm(String),
}

/// One captured picture: tightly described BGRx rows (X's native 32-bit layout).
pub struct Frame<'a> {
    pub width: u32,
    pub height: u32,
    /// Bytes per row.
    pub stride: u32,
    pub bgrx: &'a [u8],
}

/// What ended a [`FrameSource::wait`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    /// The picture (or the pointer) may have changed since the last capture.
    pub changed: bool,
    /// The screen size changed; the next capture has the new size.
    pub resized: bool,
    /// Another thread called [`Waker::wake`].
    pub woken: bool,
}

pub trait FrameSource: Send {
    /// Blocks until the picture may have changed, `waker` is woken, or `deadline` passes.
    fn wait(&mut self, deadline: Option<Instant>, waker: &Waker) -> Result<Wake, CaptureError>;
    /// Grabs the current picture, pointer included.
    fn capture(&mut self) -> Result<Frame<'_>, CaptureError>;
    /// Current screen size in pixels.
    fn size(&self) -> (u32, u32);
}

/// Wakes a pipeline thread blocked in [`FrameSource::wait`] (an eventfd, so it can sit in the
/// same `poll` as the X connection).
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is valid and owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.fd.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    /// Clears pending wake-ups; returns whether there were any.
    pub fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a valid u64 from our non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), &mut v as *mut u64 as *mut _, 8) };
        n == 8 && v > 0
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Polls `fds` for readability until `deadline`; returns which were readable.
pub(crate) fn poll_readable(fds: &[i32], deadline: Option<Instant>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_ms = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so we never wake a hair early and spin.
            (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as i32
        }
    };
    // SAFETY: pfds is a valid array of pollfd for the duration of the call.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}

/// Alpha-blends a premultiplied ARGB cursor image onto BGRx pixels at (x, y), clipped.
pub fn draw_cursor(
    bgrx: &mut [u8],
    stride: usize,
    (width, height): (u32, u32),
    cursor: &[u32],
    (cw, ch): (u32, u32),
    (x, y): (i32, i32),
) {
    for cy in 0..ch as i32 {
        let py = y + cy;
        if py < 0 || py >= height as i32 {
            continue;
        }
        for cx in 0..cw as i32 {
            let px = x + cx;
            if px < 0 || px >= width as i32 {
                continue;
            }
            let argb = cursor[(cy as u32 * cw + cx as u32) as usize];
            let a = argb >> 24;
            if a == 0 {
                continue;
            }
            let off = py as usize * stride + px as usize * 4;
            let inv = 255 - a;
            for (i, shift) in [(0usize, 0u32), (1, 8), (2, 16)] {
                let src = (argb >> shift) & 0xff;
                let dst = bgrx[off + i] as u32;
                bgrx[off + i] = (src + (dst * inv + 127) / 255).min(255) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_is_blended_and_clipped() {
        let (w, h) = (4u32, 3u32);
        let mut px = vec![100u8; (w * h * 4) as usize];
        // 2x2 cursor: opaque red, transparent, half-transparent white (premultiplied), opaque blue.
        let cursor = [0xffff0000, 0x00000000, 0x80808080, 0xff0000ff];
        draw_cursor(&mut px, (w * 4) as usize, (w, h), &cursor, (2, 2), (3, 2));
        // Only the top-left cursor pixel lands on screen, at (3, 2).
        let off = (2 * w as usize + 3) * 4;
        assert_eq!(&px[off..off + 3], &[0, 0, 255]);
        assert_eq!(px[0], 100);
        draw_cursor(&mut px, (w * 4) as usize, (w, h), &cursor, (2, 2), (0, 0));
        let off = (w as usize) * 4; // (0, 1): half-transparent white over 100
        assert_eq!(px[off], (0x80 + (100 * 127 + 127) / 255) as u8);
        let off = (w as usize + 1) * 4; // (1, 1): opaque blue
        assert_eq!(&px[off..off + 3], &[255, 0, 0]);
    }

    #[test]
    fn waker_wakes_poll() {
        let w = Waker::new().unwrap();
        assert!(!w.drain());
        w.wake();
        let r = poll_readable(
            &[w.raw_fd()],
            Some(Instant::now() + std::time::Duration::from_secs(5)),
        );
        assert_eq!(r, vec![true]);
        assert!(w.drain());
        assert!(!w.drain());
    }
}
