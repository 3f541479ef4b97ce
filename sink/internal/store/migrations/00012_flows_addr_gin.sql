-- +goose Up
-- Flows by address (issue 6: a flows search by address and time range under
-- 100 ms): the BRIN bloom indexes on orig_addr and resp_addr of 00011 are
-- scanned whole for every search (about 14 MB each per 10 million flows of a
-- day partition: 125 / 172 ms p50 / p99 for one address and hour over 10 M
-- flows). They are replaced by one GIN index over both ends,
-- ARRAY[orig_addr, resp_addr] (array_ops: one posting list per address,
-- compressed item pointers, a few bytes per flow; fastupdate collects new
-- entries in a pending list merged in bulk, so an insert costs little). The
-- api adds ARRAY[orig_addr, resp_addr] @> ARRAY[address] to its condition
-- (orig_addr = address OR resp_addr = address) when the index exists. A CIDR
-- search (addr=10.0.0.0/8) is not served by it: it reads the time range
-- (BRIN on start).
DROP INDEX IF EXISTS flows_orig_addr_bloom, flows_resp_addr_bloom;
CREATE INDEX flows_addrs_gin ON flows USING gin ((ARRAY[orig_addr, resp_addr]));

-- +goose Down
DROP INDEX IF EXISTS flows_addrs_gin;
CREATE INDEX flows_orig_addr_bloom ON flows USING brin (orig_addr inet_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_resp_addr_bloom ON flows USING brin (resp_addr inet_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);
