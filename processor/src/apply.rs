//! Applying a batch of events to the payment records, in one PostgreSQL transaction of
//! five statements whatever the batch size (multi-row, through `unnest`).
//!
//! 1. Transaction-level advisory locks on every payment intent of the batch, in a fixed
//!    order: two processors never work on one intent at once, even before its row
//!    exists, so the rule below sees the truth.
//! 2. Which events are already recorded (`dojo_events`' primary key is the dedupe
//!    truth): those are duplicates, whatever Redis said.
//! 3. The current state of the intents.
//! 4. The new events, folded in delivery order through [`crate::rule`] (several events
//!    of one intent in one batch included), are inserted with their outcomes...
//! 5. ...and each intent whose state changed is written once, with its final state;
//! 6. with [`Scheduling`], each of those intents gets a details fetch in the
//!    `enrichment_outbox` (one row per intent: a burst of events coalesces), in the same
//!    transaction, so no applied event ever lacks its fetch (crate::enrich).

use crate::payload::{storable, Payload};
use crate::rule::{decide, decide_repair, Change, Current, Decision, Outcome, Stamp};
use chrono::{DateTime, Utc};
use common::{Channel, DojoEvent};
use sqlx::{PgPool, Row};
use std::collections::{HashMap, HashSet};

/// Begins a batch's transaction, in the same round trip, with the statements' plans
/// reused instead of made again at every execution (the pool's connections otherwise
/// plan every execution, `force_custom_plan`: see `crate::db`). The batch's statements
/// are key lookups (`= ANY` on a primary key) and inserts from `unnest`, whose best plan
/// does not depend on the tables' sizes, so one generic plan per connection serves;
/// `enable_seqscan = off` keeps a plan made while a table was still small from being a
/// sequential scan that the table then outgrows. Both settings end with the transaction.
const BEGIN: &str =
    "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL enable_seqscan = off";

/// An event as it came off the queue.
pub struct Incoming<'a> {
    pub event: &'a DojoEvent,
    pub channel: Channel,
    pub received_at: DateTime<Utc>,
    /// The event JSON exactly as Dojo sent it.
    pub payload: &'a str,
}

/// Which applied intents get a details fetch, and after how long (letting a burst of
/// events for one payment coalesce into one fetch).
pub struct Scheduling<'a> {
    /// Whether the account has an API key (no key: enrichment off for it).
    pub has_key: &'a (dyn Fn(&str) -> bool + Send + Sync),
    pub delay: std::time::Duration,
}

/// Applies `batch`; returns one outcome per element, in order.
///
/// With `duplicates` (`Some(known)`), every delivery of an event already recorded is
/// kept in `dojo_event_duplicates` (migration 0008, for the console's timeline) in the
/// same transaction: `known`, found before it (Redis said done), and those of `batch`
/// that it finds (the key already there, or the event twice in the batch). Committed
/// with the batch, it costs no transaction of its own.
pub async fn apply(
    pool: &PgPool,
    batch: &[Incoming<'_>],
    duplicates: Option<&[Incoming<'_>]>,
    scheduling: Option<&Scheduling<'_>>,
) -> Result<Vec<Outcome>, sqlx::Error> {
    let changes: Vec<Option<Change>> = batch.iter().map(|i| Change::of(i.event)).collect();
    let mut intents: Vec<&str> = changes
        .iter()
        .flatten()
        .map(|c| c.payment_intent_id.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    intents.sort_unstable();
    let mut tx = pool.begin_with(BEGIN).await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM
           (SELECT DISTINCT hashtextextended(x, 0) AS h FROM unnest($1::text[]) AS x ORDER BY h) AS locks",
    )
    .bind(&intents)
    .execute(&mut *tx)
    .await?;

    // `= ANY` on both key columns is an index scan on the primary key, whatever the
    // table's size (a join on `unnest` may be planned as a scan of the whole table).
    // It can return pairs not in the batch (same id, other account): kept only if asked.
    let wanted: HashSet<(&str, &str)> = batch
        .iter()
        .map(|i| (i.event.account_id.as_str(), i.event.id.as_str()))
        .collect();
    let accounts: Vec<&str> = wanted
        .iter()
        .map(|k| k.0)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let ids: Vec<&str> = wanted.iter().map(|k| k.1).collect();
    let mut seen: HashSet<(String, String)> = sqlx::query(
        "SELECT account_id, event_id FROM dojo_events WHERE account_id = ANY($1) AND event_id = ANY($2)",
    )
    .bind(&accounts)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
    .filter(|k: &Result<(String, String), sqlx::Error>| {
        k.as_ref().map_or(true, |(a, e)| wanted.contains(&(a.as_str(), e.as_str())))
    })
    .collect::<Result<_, sqlx::Error>>()?;

    let mut state = load(&mut tx, &intents).await?;
    let mut changed: Vec<String> = Vec::new();
    let mut touched: HashSet<String> = HashSet::new();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh = Vec::new();
    for (i, (incoming, change)) in batch.iter().zip(&changes).enumerate() {
        let key = (incoming.event.account_id.clone(), incoming.event.id.clone());
        if !seen.insert(key) {
            outcomes.push(Outcome::Duplicate);
            continue;
        }
        let outcome = match change {
            None => Outcome::Ignored,
            Some(change) => {
                match rule_for(incoming.channel)(state.get(&change.payment_intent_id), change) {
                    Decision::Stale => Outcome::Stale,
                    Decision::Insert(next) | Decision::Update(next) => {
                        state.insert(change.payment_intent_id.clone(), next);
                        if touched.insert(change.payment_intent_id.clone()) {
                            changed.push(change.payment_intent_id.clone());
                        }
                        Outcome::Applied
                    }
                }
            }
        };
        outcomes.push(outcome);
        fresh.push(i);
    }
    insert_events(&mut tx, batch, &fresh, &outcomes).await?;
    write_intents(&mut tx, batch, &changes, &state, &changed).await?;
    if let Some(scheduling) = scheduling {
        schedule_fetches(&mut tx, batch, &changes, &state, &changed, scheduling).await?;
    }
    if let Some(known) = duplicates {
        let found = batch
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == Outcome::Duplicate)
            .map(|(i, _)| i);
        let all: Vec<&Incoming> = known.iter().chain(found).collect();
        record_duplicates(&mut tx, &all).await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Keeps `deliveries` (each of an event already recorded) in `dojo_event_duplicates`:
/// one statement, none if there are none.
pub async fn record_duplicates(
    db: &mut sqlx::PgConnection,
    deliveries: &[&Incoming<'_>],
) -> Result<(), sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Incoming) -> Option<String>| -> Vec<Option<String>> {
        deliveries.iter().map(|i| f(i)).collect()
    };
    sqlx::query(
        "INSERT INTO dojo_event_duplicates (account_id, event_id, payment_intent_id, channel, received_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])",
    )
    .bind(column(|i| Some(i.event.account_id.clone())))
    .bind(column(|i| Some(i.event.id.clone())))
    .bind(column(|i| i.event.data.payment_intent_id.clone()))
    .bind(column(|i| Some(i.channel.as_str().to_owned())))
    .bind(deliveries.iter().map(|i| i.received_at).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}

async fn load(
    tx: &mut sqlx::PgConnection,
    intents: &[&str],
) -> Result<HashMap<String, Current>, sqlx::Error> {
    sqlx::query(
        "SELECT payment_intent_id, status, capture_mode, status_changed_ns, status_stage, last_event_id
         FROM payment_intents WHERE payment_intent_id = ANY($1)",
    )
    .bind(intents)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| {
        Ok((
            r.try_get("payment_intent_id")?,
            Current {
                status: r.try_get("status")?,
                capture_mode: r.try_get("capture_mode")?,
                stamp: Stamp {
                    nanos: r.try_get("status_changed_ns")?,
                    stage: r.try_get("status_stage")?,
                    event_id: r.try_get("last_event_id")?,
                },
            },
        ))
    })
    .collect()
}

async fn insert_events(
    tx: &mut sqlx::PgConnection,
    batch: &[Incoming<'_>],
    fresh: &[usize],
    outcomes: &[Outcome],
) -> Result<(), sqlx::Error> {
    if fresh.is_empty() {
        return Ok(());
    }
    let pick = |f: &dyn Fn(&Incoming) -> Option<String>| -> Vec<Option<String>> {
        fresh.iter().map(|&i| f(&batch[i])).collect()
    };
    fn e<'x>(i: &Incoming<'x>) -> &'x DojoEvent {
        i.event
    }
    let payloads: Vec<Payload> = fresh.iter().map(|&i| storable(batch[i].payload)).collect();
    sqlx::query(
        "INSERT INTO dojo_events (account_id, event_id, event_type, payment_intent_id, payment_status,
                                  capture_mode, created_at, received_at, channel, outcome, payload,
                                  payload_text)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::text[]::jsonb[],
                              $12::text[])
         ON CONFLICT (account_id, event_id) DO NOTHING",
    )
    .bind(pick(&|i| Some(e(i).account_id.clone())))
    .bind(pick(&|i| Some(e(i).id.clone())))
    .bind(pick(&|i| Some(e(i).event.as_str().to_owned())))
    .bind(pick(&|i| e(i).data.payment_intent_id.clone()))
    .bind(pick(&|i| e(i).data.payment_status.as_ref().map(|s| s.as_str().to_owned())))
    .bind(pick(&|i| e(i).data.capture_mode.as_ref().map(|c| c.as_str().to_owned())))
    .bind(fresh.iter().map(|&i| batch[i].event.created_at.as_utc_micros()).collect::<Vec<_>>())
    .bind(fresh.iter().map(|&i| batch[i].received_at).collect::<Vec<_>>())
    .bind(pick(&|i| Some(i.channel.as_str().to_owned())))
    .bind(fresh.iter().map(|&i| outcomes[i].as_str()).collect::<Vec<_>>())
    .bind(payloads.iter().map(|p| p.jsonb.as_ref()).collect::<Vec<_>>())
    .bind(payloads.iter().map(|p| p.exact).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The account of an intent: that of the event that set its state (by event id).
fn accounts<'b>(
    batch: &'b [Incoming<'_>],
    changes: &'b [Option<Change>],
) -> HashMap<&'b str, &'b str> {
    batch
        .iter()
        .zip(changes)
        .filter_map(|(i, c)| {
            Some((
                c.as_ref()?.stamp.event_id.as_str(),
                i.event.account_id.as_str(),
            ))
        })
        .collect()
}

/// One outbox row per changed intent; an existing row (pending, or being fetched) only
/// has its generation bumped, so it is fetched again if a fetch is under way.
async fn schedule_fetches(
    tx: &mut sqlx::PgConnection,
    batch: &[Incoming<'_>],
    changes: &[Option<Change>],
    state: &HashMap<String, Current>,
    changed: &[String],
    scheduling: &Scheduling<'_>,
) -> Result<(), sqlx::Error> {
    let account = accounts(batch, changes);
    let (ids, accounts): (Vec<&str>, Vec<&str>) = changed
        .iter()
        .filter_map(|id| {
            let a = account.get(state[id].stamp.event_id.as_str()).copied()?;
            (scheduling.has_key)(a).then_some((id.as_str(), a))
        })
        .unzip();
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO enrichment_outbox AS o (payment_intent_id, account_id, due_at)
         SELECT pi, acc, now() + $3 * interval '1 millisecond'
         FROM unnest($1::text[], $2::text[]) AS t(pi, acc)
         ON CONFLICT (payment_intent_id) DO UPDATE SET
             generation = o.generation + 1, account_id = EXCLUDED.account_id",
    )
    .bind(&ids)
    .bind(&accounts)
    .bind(scheduling.delay.as_millis() as f64)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn write_intents(
    tx: &mut sqlx::PgConnection,
    batch: &[Incoming<'_>],
    changes: &[Option<Change>],
    state: &HashMap<String, Current>,
    changed: &[String],
) -> Result<(), sqlx::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let account = accounts(batch, changes);
    let rows: Vec<&Current> = changed.iter().map(|id| &state[id]).collect();
    sqlx::query(
        "INSERT INTO payment_intents AS pi (payment_intent_id, account_id, status, capture_mode,
                status_changed_at, status_changed_ns, status_stage, last_event_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                              $6::bigint[], $7::smallint[], $8::text[])
         ON CONFLICT (payment_intent_id) DO UPDATE SET
             account_id = EXCLUDED.account_id, status = EXCLUDED.status,
             capture_mode = EXCLUDED.capture_mode, status_changed_at = EXCLUDED.status_changed_at,
             status_changed_ns = EXCLUDED.status_changed_ns, status_stage = EXCLUDED.status_stage,
             last_event_id = EXCLUDED.last_event_id, updated_at = now()",
    )
    .bind(changed)
    .bind(
        rows.iter()
            .map(|r| {
                account
                    .get(r.stamp.event_id.as_str())
                    .copied()
                    .unwrap_or("")
            })
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.capture_mode.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| {
                DateTime::<Utc>::from_timestamp_micros(r.stamp.nanos.div_euclid(1000))
                    .expect("an accepted instant")
            })
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.stamp.nanos).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.stamp.stage).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.stamp.event_id.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The state rule for a delivery of `channel`: a repair (`reconcile`) must move the
/// record to a later stage ([`decide_repair`]); every other delivery follows [`decide`].
fn rule_for(channel: Channel) -> fn(Option<&Current>, &Change) -> Decision {
    if channel == Channel::Reconcile {
        decide_repair
    } else {
        decide
    }
}
