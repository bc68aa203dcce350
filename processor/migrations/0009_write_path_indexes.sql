-- Fewer index entries per delivery (docs/PERFORMANCE.md, "Fewer index entries per
-- delivery"). Every applied event inserts a dojo_events row and updates or inserts a
-- payment_intents row; each index on them is one more entry written (and WAL-logged) per
-- delivery. Same uniqueness, same searches, fewer entries.

-- The key's columns swap places so that it serves the console's search by event id
-- too (event ids are Dojo's, unique across locations in practice; the pair stays the
-- key): one index instead of two. ON CONFLICT (account_id, event_id) infers it by its
-- set of columns. On an existing database this rebuilds the key under a lock (seconds
-- per million events).
ALTER TABLE dojo_events
    DROP CONSTRAINT dojo_events_pkey,
    ADD CONSTRAINT dojo_events_pkey PRIMARY KEY (event_id, account_id);
DROP INDEX IF EXISTS dojo_events_event;

-- No index on a column that every update changes (`updated_at`), so that a status
-- change can be a heap-only tuple update (no index entry at all) when its page has
-- room; the fill factor leaves that room. The location's records stay reachable by
-- (account_id, created_at).
DROP INDEX IF EXISTS payment_intents_account;
CREATE INDEX IF NOT EXISTS payment_intents_account_created
    ON payment_intents (account_id, created_at);
ALTER TABLE payment_intents SET (fillfactor = 80);

-- Reference and order id arrive with the details (or never): records without them
-- need no entry.
DROP INDEX IF EXISTS payment_intents_reference;
CREATE INDEX IF NOT EXISTS payment_intents_reference ON payment_intents (reference)
    WHERE reference IS NOT NULL;
DROP INDEX IF EXISTS payment_intents_order;
CREATE INDEX IF NOT EXISTS payment_intents_order ON payment_intents (order_id)
    WHERE order_id IS NOT NULL;
