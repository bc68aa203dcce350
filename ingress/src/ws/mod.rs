//! Dojo's EPOS Data API over WebSocket: the POS opens one socket to Dojo and serves the
//! JSON-RPC requests Dojo multiplexes over it.
//!
//! - [`rpc`]: one frame in, at most one reply out (the same `accept` path as HTTP);
//! - [`client`]: the socket: handshake, concurrent requests, pings, dead-peer detection,
//!   reconnects with capped exponential backoff and jitter, clean close on shutdown.

pub mod client;
pub mod rpc;

pub use client::WsClient;
