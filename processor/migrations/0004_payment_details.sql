-- Payment details from Dojo's API (GET /payment-intents/{id}; docs/OPERATIONS.md,
-- "Payment details"). Columns only added: NULL until a snapshot is stored.
-- Amounts are integers in minor units with their ISO 4217 currency.
ALTER TABLE payment_intents
    ADD COLUMN IF NOT EXISTS amount_value        bigint,
    ADD COLUMN IF NOT EXISTS amount_currency     text,
    ADD COLUMN IF NOT EXISTS tips_value          bigint,
    ADD COLUMN IF NOT EXISTS tips_currency       text,
    ADD COLUMN IF NOT EXISTS total_value         bigint,
    ADD COLUMN IF NOT EXISTS total_currency      text,
    -- Dojo's `refundedAmount`: minor units of the payment's currency.
    ADD COLUMN IF NOT EXISTS refunded_amount     bigint,
    ADD COLUMN IF NOT EXISTS reference           text,
    -- `orderDetails.externalId`: the POS's order id.
    ADD COLUMN IF NOT EXISTS order_id            text,
    -- `metadata.waiterId`.
    ADD COLUMN IF NOT EXISTS waiter_id           text,
    -- `captures[]` as Dojo lists them: [{id, amount, tipsAmount, status, createdAt}].
    ADD COLUMN IF NOT EXISTS captures            jsonb,
    -- `VISA ****4242`: card type and the last four digits of Dojo's masked number only.
    ADD COLUMN IF NOT EXISTS card_summary        text,
    ADD COLUMN IF NOT EXISTS auth_code           text,
    -- The status the snapshot showed (the record's `status` follows the state rule).
    ADD COLUMN IF NOT EXISTS dojo_status         text,
    ADD COLUMN IF NOT EXISTS dojo_created_at     timestamptz,
    -- Orders snapshots: an older one never overwrites a newer one.
    ADD COLUMN IF NOT EXISTS dojo_updated_at     timestamptz,
    ADD COLUMN IF NOT EXISTS details_fetched_at  timestamptz;

-- The durable path of fetches: one row per intent that needs one (coalesced), written in
-- the transaction that applied its event, deleted once the snapshot is stored. Retries
-- and their backoff live in the row, so a crash or a Dojo outage loses no fetch.
CREATE TABLE IF NOT EXISTS enrichment_outbox (
    payment_intent_id  text PRIMARY KEY,
    account_id         text NOT NULL,
    -- Bumped by each new request: a fetch started before it does not delete the row.
    generation         bigint NOT NULL DEFAULT 1,
    -- When the row may next be taken (also the lease of a row being fetched).
    due_at             timestamptz NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    last_error         text,
    requested_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS enrichment_outbox_due ON enrichment_outbox (due_at);
