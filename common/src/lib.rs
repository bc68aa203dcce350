//! Shared types of the Dojo Events receiver.
//!
//! Both services speak through these: the Dojo event as it arrives ([`event`]), the
//! versioned message that travels over RabbitMQ ([`envelope`]), the broker topology
//! names ([`topology`]), the error body Dojo expects ([`error`]), webhook signatures
//! ([`signature`]), configuration pieces ([`settings`]) and logging set-up
//! ([`telemetry`]). Nothing here knows about HTTP frameworks.

pub mod envelope;
pub mod error;
pub mod event;
pub mod settings;
pub mod signature;
pub mod telemetry;
pub mod time;
pub mod topology;

pub use envelope::{Channel, Envelope, RequestorHeaders, ENVELOPE_VERSION};
pub use error::{EposError, ErrorType};
pub use event::{CaptureMode, DojoEvent, EventType, PaymentStatus, ValidationError};
pub use time::DojoTime;
