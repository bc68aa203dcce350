-- The POS payment records (CONTRACT.md). Columns may be added, never removed or renamed.

CREATE TABLE IF NOT EXISTS payment_intents (
    payment_intent_id  text PRIMARY KEY,
    account_id         text NOT NULL,
    status             text NOT NULL,
    capture_mode       text,
    -- Dojo's createdAt of the event that set `status` (microseconds, as PostgreSQL keeps them).
    status_changed_at  timestamptz NOT NULL,
    -- The same instant to the nanosecond (Dojo sends 100 ns ticks): what the state rule orders on.
    status_changed_ns  bigint NOT NULL,
    -- Lifecycle stage of `status` (Created 1 < Authorized 2 < Captured 3 < Reversed = Refunded = Canceled 4).
    status_stage       smallint NOT NULL,
    -- Final tie-break of the state rule, so the outcome never depends on arrival order.
    last_event_id      text COLLATE "C" NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS payment_intents_account ON payment_intents (account_id, updated_at);

CREATE TABLE IF NOT EXISTS dojo_events (
    account_id         text NOT NULL,
    event_id           text NOT NULL,
    event_type         text NOT NULL,
    payment_intent_id  text,
    payment_status     text,
    capture_mode       text,
    created_at         timestamptz NOT NULL,
    received_at        timestamptz NOT NULL,
    channel            text NOT NULL CHECK (channel IN ('rest', 'webhook', 'ws')),
    outcome            text NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored')),
    payload            jsonb NOT NULL,
    processed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, event_id)
);

CREATE INDEX IF NOT EXISTS dojo_events_payment_intent ON dojo_events (payment_intent_id, created_at);
