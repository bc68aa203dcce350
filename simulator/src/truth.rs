//! What Dojo's API says about a simulated payment: the money and the order link of a
//! lifecycle (amount, tips, total, captures, full or partial refund, reference, order id,
//! waiter, masked card and auth code), deterministic for a seed.

use chrono::{DateTime, Utc};
use common::dojo_api::{Amount, Capture, Card, Money, OrderDetails, PaymentDetails, PaymentIntent};
use rand::rngs::StdRng;
use rand::Rng;

fn gbp(value: i64) -> Money {
    Money {
        value,
        currency_code: "GBP".into(),
    }
}

/// The intent `pi` (the `n`th of its scenario) after `steps`, first event at `created`,
/// last at `updated`.
pub fn intent(
    rng: &mut StdRng,
    pi: &str,
    n: usize,
    steps: &[&str],
    manual: bool,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
) -> PaymentIntent {
    let amount = rng.random_range(100..20_000i64);
    let tips = if rng.random_bool(0.5) {
        rng.random_range(0..1_000i64)
    } else {
        0
    };
    let total = amount + tips;
    let captured = steps.contains(&"Captured");
    let refunded = match steps.last() {
        Some(&"Refunded") if rng.random_bool(0.5) => total / 2,
        Some(&"Refunded") => total,
        _ => 0,
    };
    let authorised = steps
        .iter()
        .any(|s| matches!(*s, "Authorized" | "Captured"));
    let captures = if captured {
        vec![Capture {
            id: Some(format!("cap_{pi}")),
            amount: Some(Amount::Minor(total)),
            tips_amount: Some(Amount::Minor(tips)),
            status: Some("Successful".into()),
            created_at: Some(updated),
        }]
    } else {
        Vec::new()
    };
    let payment_details = authorised.then(|| PaymentDetails {
        transaction_id: Some(format!("txn_{pi}")),
        transaction_date_time: Some(created.to_rfc3339()),
        auth_code: Some(format!("AC{:04}", rng.random_range(0..10_000))),
        card: Some(Card {
            card_number: Some(format!("************{:04}", rng.random_range(0..10_000))),
            card_type: Some(if n % 3 == 0 { "MASTERCARD" } else { "VISA" }.into()),
            expiry_date: Some("12/29".into()),
            entry_mode: Some("Contactless".into()),
        }),
    });
    PaymentIntent {
        id: Some(pi.into()),
        status: steps.last().map(|s| s.to_string()),
        capture_mode: Some(if manual { "Manual" } else { "Auto" }.into()),
        amount: Some(gbp(amount)),
        tips_amount: Some(gbp(tips)),
        total_amount: Some(gbp(total)),
        requested_amount: Some(gbp(amount)),
        refunded_amount: Some(refunded),
        captures,
        reference: Some(format!("Order {n}")),
        description: None,
        metadata: [("waiterId".to_owned(), format!("w{}", n % 7))].into(),
        order_details: Some(OrderDetails {
            external_id: Some(format!("ord_{pi}")),
        }),
        payment_details,
        created_at: Some(created),
        updated_at: Some(updated),
    }
}
