-- Repairs (docs/OPERATIONS.md, "Repairs"): a status Dojo's API shows that no delivered
-- event explains is recorded as a synthetic event on channel `reconcile`.
ALTER TABLE dojo_events DROP CONSTRAINT IF EXISTS dojo_events_channel_check;
ALTER TABLE dojo_events ADD CONSTRAINT dojo_events_channel_check
    CHECK (channel IN ('rest', 'webhook', 'ws', 'reconcile'));
