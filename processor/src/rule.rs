//! The payment state rule (CONTRACT.md), as pure functions.
//!
//! A payment intent's status moves only to the status of an event that is *later*:
//! later `createdAt`; on a tie, later lifecycle stage; on a tie of both, the greater event
//! id. The last tie-break is ours: it makes the rule a total order, so the final record
//! never depends on the order in which events arrive. Events that cannot change a
//! record (unknown event type or status) are `ignored`; earlier ones are `stale`.

use common::{DojoEvent, EventType};

/// The outcome of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Applied,
    Stale,
    Ignored,
    /// Already recorded: nothing done.
    Duplicate,
}

impl Outcome {
    /// The `dojo_events.outcome` value (duplicates are never stored).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Ignored => "ignored",
            Self::Duplicate => "duplicate",
        }
    }
}

/// What orders status changes: compared field by field, bytes of the id last
/// (the same order as PostgreSQL's `COLLATE "C"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub nanos: i64,
    pub stage: i16,
    pub event_id: String,
}

/// The status change an event asks for, if it can change a record at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub payment_intent_id: String,
    pub status: String,
    pub capture_mode: Option<String>,
    pub capture_mode_known: bool,
    pub stamp: Stamp,
}

impl Change {
    /// `None` for events this version must keep but not act on.
    pub fn of(event: &DojoEvent) -> Option<Self> {
        if !matches!(event.event, EventType::Created | EventType::StatusUpdated) {
            return None;
        }
        let status = event.data.payment_status.as_ref()?;
        let stage = status.stage()?;
        Some(Self {
            payment_intent_id: event.data.payment_intent_id.clone()?,
            status: status.as_str().to_owned(),
            capture_mode: event
                .data
                .capture_mode
                .as_ref()
                .map(|c| c.as_str().to_owned()),
            capture_mode_known: event
                .data
                .capture_mode
                .as_ref()
                .is_some_and(|c| c.is_known()),
            stamp: Stamp {
                nanos: event.created_at.epoch_nanos(),
                stage,
                event_id: event.id.clone(),
            },
        })
    }
}

/// The parts of a stored payment intent the rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub status: String,
    pub capture_mode: Option<String>,
    pub stamp: Stamp,
}

/// What to do with a payment intent given a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No record yet: this event creates it (even if it is not the `created` event).
    Insert(Current),
    /// The event is later: the record becomes this.
    Update(Current),
    /// The record already reflects a later event.
    Stale,
}

pub fn decide(current: Option<&Current>, change: &Change) -> Decision {
    let next = |previous_mode: Option<&String>| Current {
        status: change.status.clone(),
        // A known capture mode always wins; an unknown one never overwrites a known one.
        capture_mode: if change.capture_mode_known {
            change.capture_mode.clone()
        } else {
            previous_mode
                .cloned()
                .or_else(|| change.capture_mode.clone())
        },
        stamp: change.stamp.clone(),
    };
    match current {
        None => Decision::Insert(next(None)),
        Some(cur) if change.stamp > cur.stamp => Decision::Update(next(cur.capture_mode.as_ref())),
        Some(_) => Decision::Stale,
    }
}

/// [`decide`] for a repair (a synthetic event on channel `reconcile`, crate::reconcile):
/// it applies only if it moves the record to a later lifecycle stage, judged here,
/// under the intent's lock. A delivery committed between the repair's first look at the
/// record and this moment (same stage, or later) already explains Dojo's status, so the
/// repair is stale: no repair is recorded for a status an applied event explains.
pub fn decide_repair(current: Option<&Current>, change: &Change) -> Decision {
    match current {
        Some(cur) if change.stamp.stage <= cur.stamp.stage => Decision::Stale,
        _ => decide(current, change),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STATUSES: [&str; 6] = [
        "Created",
        "Authorized",
        "Captured",
        "Reversed",
        "Refunded",
        "Canceled",
    ];

    fn event(id: &str, kind: &str, status: &str, at: &str) -> DojoEvent {
        let body = serde_json::json!({
            "id": id, "event": kind, "accountId": "acc", "createdAt": at,
            "data": {"paymentIntentId": "pi_1", "paymentStatus": status, "captureMode": "Manual"}
        });
        DojoEvent::from_json(body.to_string().as_bytes()).unwrap()
    }

    /// Applies events one by one, as the processor does, returning the final record.
    fn fold(events: &[DojoEvent]) -> Option<Current> {
        let mut record = None;
        for e in events {
            let Some(change) = Change::of(e) else {
                continue;
            };
            match decide(record.as_ref(), &change) {
                Decision::Insert(r) | Decision::Update(r) => record = Some(r),
                Decision::Stale => {}
            }
        }
        record
    }

    #[test]
    fn a_repair_only_moves_the_stage_forward_even_if_a_delivery_just_won_the_race() {
        let captured = event(
            "evt_1",
            "payment_intent.status_updated",
            "Captured",
            "2024-01-01T00:00:02Z",
        );
        let repair = event(
            "reconcile:pi_1:Captured:2024-01-01T00:00:02.000000Z",
            "payment_intent.status_updated",
            "Captured",
            "2024-01-01T00:00:02Z",
        );
        let later_repair = event(
            "reconcile:pi_1:Captured:2024-01-01T00:00:09.000000Z",
            "payment_intent.status_updated",
            "Captured",
            "2024-01-01T00:00:09Z",
        );
        let record = fold(std::slice::from_ref(&captured));
        let change = |e: &DojoEvent| Change::of(e).unwrap();
        // The delivery was applied first: the repair of the same stage is stale, even at
        // the same instant (where its id would win the plain rule's tie) or later.
        assert_eq!(
            decide(record.as_ref(), &change(&repair)),
            Decision::Update(Current {
                stamp: change(&repair).stamp,
                ..record.clone().unwrap()
            })
        );
        assert_eq!(
            decide_repair(record.as_ref(), &change(&repair)),
            Decision::Stale
        );
        assert_eq!(
            decide_repair(record.as_ref(), &change(&later_repair)),
            Decision::Stale
        );
        // Behind: the repair moves it forward; with no record, it creates one.
        let created = event(
            "evt_0",
            "payment_intent.created",
            "Created",
            "2024-01-01T00:00:01Z",
        );
        let behind = fold(&[created]);
        assert!(
            matches!(decide_repair(behind.as_ref(), &change(&repair)), Decision::Update(c) if c.status == "Captured")
        );
        assert!(matches!(
            decide_repair(None, &change(&repair)),
            Decision::Insert(_)
        ));
        // The delivery arriving after the repair is stale, as before.
        let repaired = fold(&[repair]);
        assert_eq!(
            decide(repaired.as_ref(), &change(&captured)),
            Decision::Stale
        );
    }

    #[test]
    fn status_update_before_created_creates_the_record() {
        let captured = event(
            "e2",
            "payment_intent.status_updated",
            "Captured",
            "2024-01-01T00:00:02Z",
        );
        let created = event(
            "e1",
            "payment_intent.created",
            "Created",
            "2024-01-01T00:00:01Z",
        );
        let record = fold(&[captured, created]).unwrap();
        assert_eq!(record.status, "Captured");
    }

    #[test]
    fn an_older_event_is_stale() {
        let captured = Change::of(&event(
            "e2",
            "payment_intent.status_updated",
            "Captured",
            "2024-01-01T00:00:02Z",
        ))
        .unwrap();
        let authorized = Change::of(&event(
            "e1",
            "payment_intent.status_updated",
            "Authorized",
            "2024-01-01T00:00:01Z",
        ))
        .unwrap();
        let Decision::Insert(record) = decide(None, &captured) else {
            panic!()
        };
        assert_eq!(decide(Some(&record), &authorized), Decision::Stale);
        assert_eq!(
            decide(Some(&record), &captured),
            Decision::Stale,
            "a replay changes nothing"
        );
    }

    #[test]
    fn a_tie_goes_to_the_later_stage() {
        let at = "2024-01-01T00:00:01.1234567Z";
        let a = Change::of(&event(
            "zzz",
            "payment_intent.status_updated",
            "Authorized",
            at,
        ))
        .unwrap();
        let c = Change::of(&event(
            "aaa",
            "payment_intent.status_updated",
            "Captured",
            at,
        ))
        .unwrap();
        let Decision::Insert(record) = decide(None, &a) else {
            panic!()
        };
        assert!(matches!(decide(Some(&record), &c), Decision::Update(r) if r.status == "Captured"));
    }

    #[test]
    fn sub_microsecond_order_is_kept() {
        let early = Change::of(&event(
            "b",
            "payment_intent.status_updated",
            "Canceled",
            "2024-01-01T00:00:01.0000001Z",
        ))
        .unwrap();
        let late = Change::of(&event(
            "a",
            "payment_intent.status_updated",
            "Created",
            "2024-01-01T00:00:01.0000002Z",
        ))
        .unwrap();
        let Decision::Insert(record) = decide(None, &early) else {
            panic!()
        };
        assert!(matches!(decide(Some(&record), &late), Decision::Update(_)));
    }

    #[test]
    fn unknown_types_and_statuses_change_nothing() {
        assert!(Change::of(&event(
            "e",
            "payment_intent.amount_updated",
            "Captured",
            "2024-01-01T00:00:01Z"
        ))
        .is_none());
        assert!(Change::of(&event(
            "e",
            "payment_intent.status_updated",
            "Disputed",
            "2024-01-01T00:00:01Z"
        ))
        .is_none());
    }

    #[test]
    fn an_unknown_capture_mode_does_not_overwrite_a_known_one() {
        let first = Change::of(&event(
            "e1",
            "payment_intent.created",
            "Created",
            "2024-01-01T00:00:01Z",
        ))
        .unwrap();
        let mut second = Change::of(&event(
            "e2",
            "payment_intent.status_updated",
            "Authorized",
            "2024-01-01T00:00:02Z",
        ))
        .unwrap();
        second.capture_mode = Some("Deferred".into());
        second.capture_mode_known = false;
        let Decision::Insert(record) = decide(None, &first) else {
            panic!()
        };
        let Decision::Update(record) = decide(Some(&record), &second) else {
            panic!()
        };
        assert_eq!(record.capture_mode.as_deref(), Some("Manual"));
        assert_eq!(record.status, "Authorized");
    }

    fn arb_events() -> impl Strategy<Value = Vec<DojoEvent>> {
        // Few distinct timestamps so that ties are frequent; duplicates included.
        prop::collection::vec((0usize..6, 0u32..4, 0usize..8, any::<bool>()), 1..12).prop_map(
            |specs| {
                specs
                    .into_iter()
                    .map(|(status, second, id, created)| {
                        let kind = if created {
                            "payment_intent.created"
                        } else {
                            "payment_intent.status_updated"
                        };
                        event(
                            &format!("evt_{id}"),
                            kind,
                            STATUSES[status],
                            &format!("2024-01-01T00:00:0{second}.5Z"),
                        )
                    })
                    .collect()
            },
        )
    }

    #[test]
    fn dates_that_used_to_saturate_are_refused_before_the_rule() {
        // 2263 and 2300 both saturated to 2262-04-11 and tied; 1400 and 1500 to 1677.
        for at in [
            "2263-01-01T00:00:00Z",
            "2300-01-01T00:00:00Z",
            "1400-01-01T00:00:00Z",
            "1500-01-01T00:00:00Z",
        ] {
            let body = serde_json::json!({
                "id": "e", "event": "payment_intent.status_updated", "accountId": "acc", "createdAt": at,
                "data": {"paymentIntentId": "pi_1", "paymentStatus": "Captured"}
            });
            assert!(
                DojoEvent::from_json(body.to_string().as_bytes()).is_err(),
                "{at}"
            );
        }
    }

    fn at(secs: i64, nanos: u32) -> String {
        chrono::DateTime::from_timestamp(secs, nanos)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
    }

    proptest! {
        /// Anywhere in the accepted range (1970 to 2262), the event with the latest
        /// instant sets the status, whatever the order and however far apart they are.
        #[test]
        fn the_latest_instant_wins_across_the_whole_range(
            times in prop::collection::vec((0i64..9_214_646_400, 0u32..1_000_000_000, 0usize..6), 1..8),
            seed in any::<u64>(),
        ) {
            let mut events: Vec<DojoEvent> = times
                .iter()
                .enumerate()
                .map(|(i, (s, n, status))| {
                    event(&format!("evt_{i}"), "payment_intent.status_updated", STATUSES[*status], &at(*s, *n))
                })
                .collect();
            let latest = times.iter().enumerate().max_by_key(|(i, (s, n, _))| {
                (*s, *n, events[*i].data.payment_status.as_ref().unwrap().stage(), format!("evt_{i}"))
            }).map(|(i, _)| i).unwrap();
            let winner = events[latest].clone();
            let mut s = seed;
            for i in (1..events.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                events.swap(i, (s >> 33) as usize % (i + 1));
            }
            let record = fold(&events).unwrap();
            prop_assert_eq!(record.stamp.event_id, winner.id);
            prop_assert_eq!(record.stamp.nanos, winner.created_at.epoch_nanos());
        }

        #[test]
        fn any_order_gives_the_same_record_as_sorted_order(
            events in arb_events(), seed in any::<u64>()
        ) {
            // Same id means same event: keep the first version of each id, as Dojo would.
            let mut seen = std::collections::HashSet::new();
            let mut distinct: Vec<DojoEvent> = events.into_iter().filter(|e| seen.insert(e.id.clone())).collect();
            let mut sorted = distinct.clone();
            sorted.sort_by_key(|e| Change::of(e).map(|c| c.stamp));
            // A deterministic shuffle from the seed; duplicates re-added.
            let mut s = seed;
            for i in (1..distinct.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                distinct.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut shuffled = distinct.clone();
            shuffled.extend(distinct.iter().take(3).cloned());
            prop_assert_eq!(fold(&shuffled), fold(&sorted));
        }
    }
}
