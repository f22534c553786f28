//! A frame source without an X server: a moving pattern (busy) or a still picture.

use super::{poll_readable, CaptureError, Frame, FrameSource, Wake, Waker};
use std::time::{Duration, Instant};

pub struct SyntheticSource {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    /// How often the picture changes; `None` is a still screen.
    change_every: Option<Duration>,
    next_change: Option<Instant>,
    tick: u32,
}

impl SyntheticSource {
    pub fn new(width: u32, height: u32, change_every: Option<Duration>) -> Self {
        let mut s = Self {
            width,
            height,
            pixels: vec![0; (width * height * 4) as usize],
            change_every,
            next_change: change_every.map(|d| Instant::now() + d),
            tick: 0,
        };
        s.paint();
        s
    }

    /// Scrolling stripes with text-like noise: roughly what a busy terminal costs the encoder.
    fn paint(&mut self) {
        let (w, h, t) = (
            self.width as usize,
            self.height as usize,
            self.tick as usize,
        );
        for y in 0..h {
            let row = &mut self.pixels[y * w * 4..(y + 1) * w * 4];
            let line = (y + t * 3) / 16;
            for x in 0..w {
                let glyph = ((x / 8) * 31 + line * 17 + (x ^ (y + t)) % 7) % 11;
                let v = if glyph < 4 && (y + t * 3) % 16 < 12 {
                    220
                } else {
                    30
                };
                row[x * 4] = v as u8;
                row[x * 4 + 1] = (v / 2 + line * 13 % 60) as u8;
                row[x * 4 + 2] = (v / 3 + x * 255 / w.max(1)) as u8;
                row[x * 4 + 3] = 255;
            }
        }
    }
}

impl FrameSource for SyntheticSource {
    fn wait(&mut self, deadline: Option<Instant>, waker: &Waker) -> Result<Wake, CaptureError> {
        let mut wake = Wake::default();
        let until = match (deadline, self.next_change) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let r = poll_readable(&[waker.raw_fd()], until);
        wake.woken = r[0] && waker.drain();
        if let (Some(next), Some(every)) = (self.next_change, self.change_every) {
            if Instant::now() >= next {
                self.tick += 1;
                self.paint();
                self.next_change = Some(next + every);
                wake.changed = true;
            }
        }
        Ok(wake)
    }

    fn capture(&mut self) -> Result<Frame<'_>, CaptureError> {
        Ok(Frame {
            width: self.width,
            height: self.height,
            stride: self.width * 4,
            bgrx: &self.pixels,
        })
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }
}
