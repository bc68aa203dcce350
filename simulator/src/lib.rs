//! A stand-in for Dojo, for tests, demos and load runs. Dojo's servers cannot be reached
//! from a test machine; this speaks Dojo's real protocols instead:
//!
//! - [`event`]: events as Dojo writes them (7-digit `createdAt`, the documented example);
//! - [`client`]: delivery over signed webhooks and Basic-authenticated REST;
//! - [`ws`]: Dojo's WebSocket endpoint, pushing JSON-RPC `HandleEventV1` requests to a
//!   connected POS and matching its replies;
//! - [`fake_api`]: Dojo's API: capability registration (`PUT /epos/integrations/...`)
//!   and payment intents (`GET /payment-intents/{id}`, `POST /payment-intents/search`),
//!   with faults (429, 500, slow answers, refused keys);
//! - [`locations`]: many location accounts, their locations file and their lifecycles;
//! - [`scenario`]: payment lifecycles with duplicates and disorder, and the final states
//!   they must produce; [`truth`]: what Dojo's API says about each (money, order link);
//! - [`run`]: drives a scenario over the channels at a rate and reports what was
//!   acknowledged; [`verify`] checks the outcome against the processor's read API;
//! - [`till`]: a till following the payment feed, and whether every final status reached it.

pub mod client;
pub mod event;
pub mod fake_api;
pub mod locations;
pub mod payment_intents;
pub mod run;
pub mod scenario;
pub mod till;
pub mod truth;
pub mod verify;
pub mod ws;

pub use client::Dojo;
pub use event::Event;
