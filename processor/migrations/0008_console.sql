-- The ops console (docs/CONSOLE.md).

-- Deliveries of an event already recorded (the outcome `duplicate`): `dojo_events` keeps
-- one row per distinct event, this keeps every later delivery of it, for the payment's
-- timeline. Written after the batch is acked, best effort (a lost row loses no event);
-- pruned past FEED_RETENTION.
CREATE TABLE IF NOT EXISTS dojo_event_duplicates (
    id                 bigserial PRIMARY KEY,
    account_id         text NOT NULL,
    event_id           text NOT NULL,
    payment_intent_id  text,
    channel            text NOT NULL,
    received_at        timestamptz NOT NULL,
    processed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS dojo_event_duplicates_intent
    ON dojo_event_duplicates (payment_intent_id, received_at);
CREATE INDEX IF NOT EXISTS dojo_event_duplicates_received
    ON dojo_event_duplicates (received_at);

-- The event list's order (newest first, keyset pagination; rows of one instant are
-- sorted as read) and the overview's window. The time alone: an 8-byte entry per event
-- on the ingestion path, not the whole key.
CREATE INDEX IF NOT EXISTS dojo_events_received ON dojo_events (received_at);
-- Search by event id (the primary key starts with account_id).
CREATE INDEX IF NOT EXISTS dojo_events_event ON dojo_events (event_id);
-- Search by order reference.
CREATE INDEX IF NOT EXISTS payment_intents_reference ON payment_intents (reference);
CREATE INDEX IF NOT EXISTS payment_intents_order ON payment_intents (order_id);

-- Every completed sweep of a location (processor::sweep), for the overview.
CREATE TABLE IF NOT EXISTS sweep_runs (
    id            bigserial PRIMARY KEY,
    location_id   text NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    seen          integer NOT NULL,
    repaired      integer NOT NULL,
    stored        integer NOT NULL
);
CREATE INDEX IF NOT EXISTS sweep_runs_finished ON sweep_runs (finished_at DESC);

-- Who did what in the console, and when.
CREATE TABLE IF NOT EXISTS console_audit (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    role    text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL DEFAULT '',
    detail  text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS console_audit_at ON console_audit (at DESC);
