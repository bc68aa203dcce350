-- The payment feed's sequencer (docs/FEED.md, "Ordering"), replacing 0006's ordering
-- lock, which made every batch transaction hold one advisory lock from its first write
-- of `payment_intents` to its commit, so commits ran one after another.
--
-- Now writers take no lock: the triggers insert the update into
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

-- The trigger becomes two statement-level triggers with transition tables: one
-- set-based INSERT per statement of the processor's batches (which write many intents
-- in one statement), instead of a PL/pgSQL call per row.
DROP TRIGGER IF EXISTS payment_updates_record ON payment_intents;
DROP FUNCTION IF EXISTS payment_updates_record();

CREATE OR REPLACE FUNCTION payment_updates_inserted() RETURNS trigger AS $$
BEGIN
    INSERT INTO payment_updates_pending (location_id, account_id, payment_intent_id, status,
                                         capture_mode, amount_value, amount_currency,
                                         total_value, total_currency, refunded_amount,
                                         reference, order_id, cause)
    SELECT COALESCE(f.location_id, 'default'), n.account_id, n.payment_intent_id, n.status,
           n.capture_mode, n.amount_value, n.amount_currency, n.total_value,
           n.total_currency, n.refunded_amount, n.reference, n.order_id, n.last_event_id
    FROM new_rows n LEFT JOIN feed_locations f ON f.account_id = n.account_id;
    IF FOUND THEN
        -- No payload: one notification per transaction (PostgreSQL folds equal ones).
        PERFORM pg_notify('payment_updates_pending', '');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION payment_updates_updated() RETURNS trigger AS $$
BEGIN
    INSERT INTO payment_updates_pending (location_id, account_id, payment_intent_id, status,
                                         capture_mode, amount_value, amount_currency,
                                         total_value, total_currency, refunded_amount,
                                         reference, order_id, cause)
    SELECT COALESCE(f.location_id, 'default'), n.account_id, n.payment_intent_id, n.status,
           n.capture_mode, n.amount_value, n.amount_currency, n.total_value,
           n.total_currency, n.refunded_amount, n.reference, n.order_id,
           CASE WHEN n.last_event_id IS NOT DISTINCT FROM o.last_event_id
                THEN 'snapshot:' || n.payment_intent_id || ':'
                     || COALESCE(to_char(n.dojo_updated_at AT TIME ZONE 'UTC',
                                         'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), '')
                ELSE n.last_event_id END
    FROM new_rows n
    JOIN old_rows o ON o.payment_intent_id = n.payment_intent_id
    LEFT JOIN feed_locations f ON f.account_id = n.account_id
    -- Only a change a till cares about is an update.
    WHERE (n.status, n.last_event_id, n.capture_mode, n.amount_value, n.total_value,
           n.refunded_amount, n.reference, n.order_id)
          IS DISTINCT FROM
          (o.status, o.last_event_id, o.capture_mode, o.amount_value, o.total_value,
           o.refunded_amount, o.reference, o.order_id);
    IF FOUND THEN
        PERFORM pg_notify('payment_updates_pending', '');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER payment_updates_inserted
    AFTER INSERT ON payment_intents
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION payment_updates_inserted();
CREATE TRIGGER payment_updates_updated
    AFTER UPDATE ON payment_intents
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION payment_updates_updated();

-- Pruning walks `seq` (processor::feed::store::prune): no index on `committed_at`.
DROP INDEX IF EXISTS payment_updates_committed;

-- Most updates have no order (until details arrive): those need no index entry.
DROP INDEX IF EXISTS payment_updates_order;
CREATE INDEX IF NOT EXISTS payment_updates_order ON payment_updates (order_id, seq)
    WHERE order_id IS NOT NULL;

-- One turn of a sequencer (processor::feed::sequencer): one call, one round trip, in the
-- caller's statement transaction. Each statement of a volatile function takes a new
-- snapshot, so after the lock it sees every earlier turn's commit. Returns the updates
-- it numbered (in no particular order) and notifies `payment_updates` with the highest.
CREATE OR REPLACE FUNCTION payment_updates_number(batch bigint) RETURNS SETOF payment_updates AS $$
DECLARE
    numbered bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7310577158493101313);
    RETURN QUERY
    WITH picked AS (
        -- `= ANY(ARRAY(...))`: an index lookup of these ids (`IN (...)` was planned as
        -- a scan of the whole table: 250 ms at 70,000 pending).
        DELETE FROM payment_updates_pending
        WHERE id = ANY(ARRAY(SELECT id FROM payment_updates_pending ORDER BY id LIMIT batch))
        RETURNING *
    ), counter AS (
        UPDATE payment_updates_sequence SET last = last + (SELECT count(*) FROM picked)
        WHERE EXISTS (SELECT 1 FROM picked)
        RETURNING last - (SELECT count(*) FROM picked) AS start
    )
    INSERT INTO payment_updates (seq, location_id, account_id, payment_intent_id, status,
                                 capture_mode, amount_value, amount_currency, total_value,
                                 total_currency, refunded_amount, reference, order_id, cause,
                                 committed_at)
    SELECT counter.start + row_number() OVER (ORDER BY p.id), p.location_id, p.account_id,
           p.payment_intent_id, p.status, p.capture_mode, p.amount_value, p.amount_currency,
           p.total_value, p.total_currency, p.refunded_amount, p.reference, p.order_id,
           p.cause, p.committed_at
    FROM picked p, counter
    RETURNING *;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    IF numbered > 0 THEN
        -- Only a pointer: listeners read the rows from the table.
        PERFORM pg_notify('payment_updates', (SELECT last FROM payment_updates_sequence)::text);
    END IF;
END;
$$ LANGUAGE plpgsql;
