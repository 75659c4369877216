//! roostd integration tests (one binary: `cargo test --test it`).
//!
//! Every test starts its own broker on 127.0.0.1 port 0. Clause references
//! such as `[MQTT-3.1.0-1]` point at the MQTT 3.1.1 (OASIS) normative
//! statements the test checks.

mod common;

mod config;
mod connect;
mod hostile;
mod interop;
mod publish;
mod session;
mod subscribe;
mod will;

mod auth;
mod backpressure;
mod cli;
mod fuzz;
mod hardening;
mod model;
mod observability;
mod persistence;
mod tls;
mod websocket;
