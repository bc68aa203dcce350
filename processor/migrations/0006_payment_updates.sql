-- The payment feed's outbox (docs/FEED.md): one row per change of a payment record,
-- written by a trigger on `payment_intents`, so in the very transaction of the change
-- whoever makes it (an applied event, a repair, a newer snapshot of details): a rolled
-- back change leaves no row, a committed one always has one.
--
-- Ordering: a `bigserial` is drawn before commit, so two transactions could commit out
-- of `seq` order and a reader past the higher one would skip the lower one for good.
-- Every writer takes the transaction-level advisory lock FEED_LOCK (below, and
-- explicitly in the processor just before its first write of `payment_intents`, after
-- its per-intent locks and the rows' locks, so the lock order is always intents, rows,
-- feed: no deadlock, and a row a POS holds stalls only its own writer) and holds it to
-- commit: rows become visible in `seq` order, and a reader can trust that nothing below
-- the highest `seq` it sees will still appear.

-- Which location an account belongs to (the processor's locations, upserted at start).
CREATE TABLE IF NOT EXISTS feed_locations (
    account_id   text PRIMARY KEY,
    location_id  text NOT NULL
);

CREATE TABLE IF NOT EXISTS payment_updates (
    seq                bigserial PRIMARY KEY,
    -- NULL never: `default` when the account is not in the locations.
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
    -- The event id that set the status (`reconcile:...` for a repair), or
    -- `snapshot:{pi}:{dojoUpdatedAt}` for a newer snapshot of details.
    cause              text NOT NULL,
    committed_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS payment_updates_location ON payment_updates (location_id, seq);
CREATE INDEX IF NOT EXISTS payment_updates_intent ON payment_updates (payment_intent_id, seq);
CREATE INDEX IF NOT EXISTS payment_updates_order ON payment_updates (order_id, seq);
CREATE INDEX IF NOT EXISTS payment_updates_committed ON payment_updates (committed_at);

-- The highest `seq` pruned by retention: a cursor below it has missed updates.
CREATE TABLE IF NOT EXISTS payment_updates_pruned (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    upto      bigint NOT NULL
);
INSERT INTO payment_updates_pruned (upto) VALUES (0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION payment_updates_record() RETURNS trigger AS $$
DECLARE
    next_seq bigint;
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
    -- FEED_LOCK (hashtext('payment_updates')): reentrant, held until commit.
    PERFORM pg_advisory_xact_lock(7310577158493101312);
    IF TG_OP = 'UPDATE' AND NEW.last_event_id IS NOT DISTINCT FROM OLD.last_event_id THEN
        why := 'snapshot:' || NEW.payment_intent_id || ':'
               || COALESCE(to_char(NEW.dojo_updated_at AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '');
    ELSE
        why := NEW.last_event_id;
    END IF;
    INSERT INTO payment_updates (location_id, account_id, payment_intent_id, status,
                                 capture_mode, amount_value, amount_currency, total_value,
                                 total_currency, refunded_amount, reference, order_id, cause,
                                 committed_at)
    VALUES (COALESCE((SELECT location_id FROM feed_locations WHERE account_id = NEW.account_id),
                     'default'),
            NEW.account_id, NEW.payment_intent_id, NEW.status, NEW.capture_mode,
            NEW.amount_value, NEW.amount_currency, NEW.total_value, NEW.total_currency,
            NEW.refunded_amount, NEW.reference, NEW.order_id, why,
            -- The time of the write, at the end of the transaction (now() is its start).
            clock_timestamp())
    RETURNING seq INTO next_seq;
    -- Only a pointer: listeners read the rows from the table.
    PERFORM pg_notify('payment_updates', next_seq::text);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS payment_updates_record ON payment_intents;
CREATE TRIGGER payment_updates_record
    AFTER INSERT OR UPDATE ON payment_intents
    FOR EACH ROW EXECUTE FUNCTION payment_updates_record();
