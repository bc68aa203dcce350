//! Any bytes as a request body or a queue message: parsing never panics, and whatever
//! it accepts satisfies the contract's invariants.
#![no_main]

use common::{DojoEvent, Envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = DojoEvent::from_json(data) {
        assert!(!event.id.trim().is_empty() && event.id.len() <= 255);
        assert!(!event.account_id.trim().is_empty());
        if event.event.is_known() {
            assert!(event.data.payment_intent_id.is_some());
            assert!(event.data.payment_status.is_some());
        }
        let _ = event.created_at.epoch_nanos();
    }
    if let Ok(envelope) = Envelope::parse(data) {
        let _ = DojoEvent::from_json(envelope.event.get().as_bytes());
    }
});
