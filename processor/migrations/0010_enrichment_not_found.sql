-- 404s of a payment-details fetch counted apart from its other failures
-- (processor::enrich): a fetch is dropped after ENRICH_NOT_FOUND_ATTEMPTS answers of
-- 404, however many 5xx, 429 or refused-key failures it had before (those used to count
-- towards the limit, so after an outage one 404 dropped it).
ALTER TABLE enrichment_outbox
    ADD COLUMN IF NOT EXISTS not_found_attempts integer NOT NULL DEFAULT 0;
