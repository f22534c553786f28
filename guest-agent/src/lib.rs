//! The Porthole guest agent: everything that runs inside a VM or sandbox.
//!
//! It owns the X display's picture and input: capture (MIT-SHM, on X Damage), conversion and
//! H.264/VP8 encoding, WebRTC fan-out to viewers (WHEP), input injection (XTEST) under a
//! control lock, computer-use actions, exec, and the session timeline of events. It is the only
//! part of Porthole that links X11 and the encoder; the app talks to it over HTTP and WebRTC
//! only (see `guest-agent/openapi.yaml`).

pub mod app;
pub mod capture;
pub mod clipboard;
pub mod computer;
pub mod control;
pub mod display;
pub mod egress;
pub mod encode;
pub mod environment;
pub mod events;
pub mod exec;
pub mod http;
pub mod input;
pub mod keys;
pub mod mcp;
pub mod pipeline;
#[cfg(test)]
mod props;
pub mod recorder;
pub mod serve;
pub mod stream;
pub mod tls;
pub mod vendors;
pub mod watch;
pub mod workload;
