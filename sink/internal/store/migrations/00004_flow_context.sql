-- +goose Up
-- Flow context from the enricher (pb.Flow fields 42–53): GeoIP/ASN of each
-- address (MaxMind GeoLite2/GeoIP2 City and ASN; '' / 0 when unknown), whether
-- app was named from the responder port only, the TLS ClientHello
-- fingerprints JA3 (MD5 hex) and JA4, and the first HTTP/1 User-Agent of the
-- originator. Constant defaults: PostgreSQL adds them without a rewrite.
ALTER TABLE flows
    ADD COLUMN IF NOT EXISTS orig_country    text    NOT NULL DEFAULT '',  -- ISO 3166-1 alpha-2
    ADD COLUMN IF NOT EXISTS orig_city       text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS orig_asn        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS orig_as_org     text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS resp_country    text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS resp_city       text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS resp_asn        bigint  NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS resp_as_org     text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS app_from_port   boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS ja3             text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS ja4             text    NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS http_user_agent text    NOT NULL DEFAULT '';
-- The api looks flows up by Community ID (issue 6, "Indexes").
CREATE INDEX IF NOT EXISTS flows_community_id ON flows (community_id);

-- +goose Down
DROP INDEX IF EXISTS flows_community_id;
ALTER TABLE flows
    DROP COLUMN IF EXISTS http_user_agent,
    DROP COLUMN IF EXISTS ja4,
    DROP COLUMN IF EXISTS ja3,
    DROP COLUMN IF EXISTS app_from_port,
    DROP COLUMN IF EXISTS resp_as_org,
    DROP COLUMN IF EXISTS resp_asn,
    DROP COLUMN IF EXISTS resp_city,
    DROP COLUMN IF EXISTS resp_country,
    DROP COLUMN IF EXISTS orig_as_org,
    DROP COLUMN IF EXISTS orig_asn,
    DROP COLUMN IF EXISTS orig_city,
    DROP COLUMN IF EXISTS orig_country;
