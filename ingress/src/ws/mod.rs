//! Dojo's EPOS Data API over WebSocket: the POS opens one socket per location to Dojo
//! and serves the JSON-RPC requests Dojo multiplexes over it.
//!
//! - [`rpc`]: one frame in, at most one reply out (the same `accept` path as HTTP);
//! - [`client`]: one location's socket: handshake, concurrent requests, pings,
//!   dead-peer detection, reconnects with capped exponential backoff and jitter, clean
//!   close on shutdown;
//! - [`handshakes`]: the replica-wide cap on handshakes per second;
//! - [`lease`]: which replica holds the sockets (a RabbitMQ exclusive queue);
//! - [`sockets`]: keeps one client per location with `websocket = true` while this
//!   replica holds the lease, following reloads of the locations file.

pub mod client;
pub mod handshakes;
pub mod lease;
pub mod rpc;
pub mod sockets;

pub use client::WsClient;
pub use sockets::Sockets;
