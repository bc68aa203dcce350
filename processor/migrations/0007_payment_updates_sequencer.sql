-- The payment feed's sequencer (docs/FEED.md, "Ordering"), replacing 0006's ordering
-- lock, which made every batch transaction hold one advisory lock from its first write
-- of `payment_intents` to its commit, so commits ran one after another.
--
-- Now writers take no lock: the trigger inserts the update into
-- `payment_updates_pending` (its `id` drawn in write order, no `seq`) and notifies
-- `payment_updates_pending`. A sequencer (every processor runs one; they take turns on
-- a transaction-level advisory lock) moves committed pending rows into
-- `payment_updates`, numbering them from `payment_updates_sequence` in `id` order, and
-- notifies `payment_updates` with the highest `seq`. Numbers are given only to committed
-- rows, by one transaction at a time, so rows still become visible in `seq` order: a
-- reader can trust that nothing below the highest `seq` it sees will still appear.
-- Two updates of one payment are numbered in the order of their commits: the second
-- writer waited for the first's row lock on `payment_intents`, so its `id` is higher.

CREATE TABLE IF NOT EXISTS payment_updates_pending (
    id                 bigserial PRIMARY KEY,
    location_id        text NOT NULL,
    account_id         text NOT NULL,
    payment_intent_id  text NOT NULL,
    status             text NOT NULL,
    capture_mode       text,
    amount_value       bigint,
    amount_currency    text,
    total_value        bigint,
    total_currency     text,
    refunded_amount    bigint,
    reference          text,
    order_id           text,
    cause              text NOT NULL,
    committed_at       timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The last `seq` given (only the sequencer, under its lock, moves it).
CREATE TABLE IF NOT EXISTS payment_updates_sequence (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last      bigint NOT NULL
);
INSERT INTO payment_updates_sequence (last)
SELECT GREATEST(COALESCE((SELECT max(seq) FROM payment_updates), 0),
                (SELECT upto FROM payment_updates_pruned))
ON CONFLICT DO NOTHING;

-- Only the sequencer numbers updates.
ALTER TABLE payment_updates ALTER COLUMN seq DROP DEFAULT;

CREATE OR REPLACE FUNCTION payment_updates_record() RETURNS trigger AS $$
DECLARE
    why text;
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.status IS NOT DISTINCT FROM OLD.status
       AND NEW.last_event_id IS NOT DISTINCT FROM OLD.last_event_id
       AND NEW.capture_mode IS NOT DISTINCT FROM OLD.capture_mode
       AND NEW.amount_value IS NOT DISTINCT FROM OLD.amount_value
       AND NEW.total_value IS NOT DISTINCT FROM OLD.total_value
       AND NEW.refunded_amount IS NOT DISTINCT FROM OLD.refunded_amount
       AND NEW.reference IS NOT DISTINCT FROM OLD.reference
       AND NEW.order_id IS NOT DISTINCT FROM OLD.order_id THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.last_event_id IS NOT DISTINCT FROM OLD.last_event_id THEN
        why := 'snapshot:' || NEW.payment_intent_id || ':'
               || COALESCE(to_char(NEW.dojo_updated_at AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '');
    ELSE
        why := NEW.last_event_id;
    END IF;
    INSERT INTO payment_updates_pending (location_id, account_id, payment_intent_id, status,
                                         capture_mode, amount_value, amount_currency,
                                         total_value, total_currency, refunded_amount,
                                         reference, order_id, cause)
    VALUES (COALESCE((SELECT location_id FROM feed_locations WHERE account_id = NEW.account_id),
                     'default'),
            NEW.account_id, NEW.payment_intent_id, NEW.status, NEW.capture_mode,
            NEW.amount_value, NEW.amount_currency, NEW.total_value, NEW.total_currency,
            NEW.refunded_amount, NEW.reference, NEW.order_id, why);
    -- No payload: one notification per transaction (PostgreSQL folds equal ones).
    PERFORM pg_notify('payment_updates_pending', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
