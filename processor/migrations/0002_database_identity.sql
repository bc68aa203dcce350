-- A random identity for this database. Redis dedupe markers are scoped to it, so a
-- fresh or recreated database never trusts "done" markers written for another one.
CREATE TABLE IF NOT EXISTS database_identity (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    database_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at   timestamptz NOT NULL DEFAULT now()
);

INSERT INTO database_identity DEFAULT VALUES ON CONFLICT DO NOTHING;
