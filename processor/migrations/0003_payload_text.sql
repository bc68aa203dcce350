-- The exact body of an event whose JSON `jsonb` cannot hold exactly (a `\u0000` escape,
-- an unpaired surrogate escape, a number beyond `numeric`, duplicate keys): `payload`
-- then holds a copy `jsonb` can hold (see processor/src/payload.rs). NULL otherwise:
-- `payload` is then the body itself.
ALTER TABLE dojo_events ADD COLUMN IF NOT EXISTS payload_text text;
