-- The outbox triggers (0007) notify `payment_updates_pending` unless the writing
-- transaction says it wakes a sequencer itself: `SET LOCAL dojo.outbox_notify = off`.
-- The processor's `apply` transactions do (processor::apply, `BEGIN`): a batch wakes its
-- own process's sequencer right after the commit, a repair notifies after its commit. A transaction that called NOTIFY holds
-- PostgreSQL's notify lock (an exclusive lock on the database's notification queue)
-- from its commit until its commit record is flushed, so the batch commits of the
-- processor's channels queued behind each other on it: without it they share WAL
-- flushes (docs/PERFORMANCE.md, "Batch commits without NOTIFY"). Every other writer (a
-- newer snapshot of details, a hand-made change) notifies as before, and every
-- sequencer also polls every `FEED_POLL_MS`.

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
    IF FOUND AND current_setting('dojo.outbox_notify', true) IS DISTINCT FROM 'off' THEN
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
    IF FOUND AND current_setting('dojo.outbox_notify', true) IS DISTINCT FROM 'off' THEN
        -- No payload: one notification per transaction (PostgreSQL folds equal ones).
        PERFORM pg_notify('payment_updates_pending', '');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
