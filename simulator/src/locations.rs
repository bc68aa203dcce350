//! Many Dojo location accounts at once: each with its own `accountId`, API key (its own
//! WebSocket), webhook secret, REST credentials and till token, as a POS vendor serving
//! many restaurants holds them (docs/LOCATIONS.md). [`to_toml`] writes the matching
//! locations file for ingress (`DOJO_LOCATIONS_FILE`).

use crate::client::Dojo;
use crate::run::LocationTarget;
use crate::scenario::{self, Scenario};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use std::fmt::Write;

/// One simulated location account.
#[derive(Debug, Clone)]
pub struct SimLocation {
    /// `loc-0001`, ...
    pub id: String,
    pub account_id: String,
    pub api_key: String,
    pub webhook_secret: String,
    pub rest_username: String,
    pub rest_password: String,
    pub feed_token: String,
}

/// `count` locations whose names and secrets derive from `seed` (two runs with the same
/// seed describe the same locations).
pub fn generate(count: usize, seed: u64) -> Vec<SimLocation> {
    (1..=count)
        .map(|n| SimLocation {
            id: format!("loc-{n:04}"),
            account_id: format!("acc_{seed}_{n:04}"),
            api_key: format!("sk_sandbox_{seed}_{n:04}"),
            webhook_secret: format!("whsec_{seed}_{n:04}"),
            rest_username: format!("dojo-{n:04}"),
            rest_password: format!("pw_{seed}_{n:04}"),
            feed_token: format!("till_{seed}_{n:04}"),
        })
        .collect()
}

/// The locations file describing `locations` (`websocket` for every one of them).
pub fn to_toml(locations: &[SimLocation], websocket: bool) -> String {
    let mut out = String::new();
    for l in locations {
        let _ = writeln!(
            out,
            "[[location]]\nid = \"{}\"\naccount_id = \"{}\"\napi_keys = [\"{}\"]\n\
             webhook_secrets = [\"{}\"]\nrest_username = \"{}\"\nrest_password = \"{}\"\n\
             feed_tokens = [\"{}\"]\nwebsocket = {websocket}\n",
            l.id,
            l.account_id,
            l.api_key,
            l.webhook_secret,
            l.rest_username,
            l.rest_password,
            l.feed_token
        );
    }
    out
}

impl SimLocation {
    /// Where and how this location's deliveries go: its own socket key, and its own
    /// routes (`{ingress}/locations/{id}/v1/...`) with its own secret and credentials.
    pub fn target(&self, ingress: Option<&str>) -> LocationTarget {
        LocationTarget {
            ws_key: Some(self.api_key.clone()),
            http: ingress.map(|url| {
                Dojo::new(
                    &format!("{}/locations/{}", url.trim_end_matches('/'), self.id),
                    &self.webhook_secret,
                    &self.rest_username,
                    &self.rest_password,
                )
            }),
        }
    }
}

/// `per_location` payment lifecycles for each location (its own account and ids),
/// duplicates included, every location's deliveries shuffled together.
pub fn lifecycles(
    locations: &[SimLocation],
    per_location: usize,
    duplicate_ratio: f64,
    seed: u64,
) -> Scenario {
    let mut all = Scenario {
        deliveries: Vec::new(),
        distinct: 0,
        expected: Default::default(),
        truth: Default::default(),
        lost: Vec::new(),
    };
    for (i, l) in locations.iter().enumerate() {
        let one = scenario::lifecycles(
            &l.account_id,
            per_location,
            duplicate_ratio,
            seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1),
        );
        all.deliveries.extend(one.deliveries);
        all.distinct += one.distinct;
        all.expected.extend(one.expected);
        all.truth.extend(one.truth);
    }
    let mut rng: StdRng = rand::SeedableRng::seed_from_u64(seed);
    all.deliveries.shuffle(&mut rng);
    all
}
