-- +goose Up
-- The BRIN bloom indexes on id and community_id (00011) were sized for 500
-- distinct values a page range (16 pages): flows of about 300 bytes. Since
-- 00013 a flow's row is smaller (200-270 bytes: unknown values are NULL), so
-- a range holds 590-650 rows (592 in the api benchmark's 10 M flows), more
-- than its filter was sized for: the false-positive rate grew from the
-- 0.001 / 0.01 configured to about 0.003 (id) and 0.022 (community_id), and a
-- Community ID search over 10 M flows rechecked 216,000 rows (280-320 ms,
-- against 77-85 ms before 00013). Sized now for 1,000 values a range (up to
-- 8,192 B / 16 pages of 131-byte rows) at a 0.001 rate for both: about 1.8 kB
-- a range (3 bytes a flow) each. (A BRIN bloom filter's rate follows
-- Bloom, "Space/time trade-offs in hash coding with allowable errors",
-- CACM 13(7), 1970: p = (1 - e^(-kn/m))^k for n values in m bits.)
-- The upgrade rebuilds both indexes: it reads every stored flow twice.
DROP INDEX IF EXISTS flows_id_bloom, flows_community_id_bloom;
CREATE INDEX flows_id_bloom ON flows USING brin (id uuid_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_community_id_bloom ON flows USING brin (community_id bytea_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
    WITH (pages_per_range = 16, autosummarize = on);

-- +goose Down
DROP INDEX IF EXISTS flows_id_bloom, flows_community_id_bloom;
CREATE INDEX flows_id_bloom ON flows USING brin (id uuid_bloom_ops (n_distinct_per_range = 500, false_positive_rate = 0.001))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_community_id_bloom ON flows USING brin (community_id bytea_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);
