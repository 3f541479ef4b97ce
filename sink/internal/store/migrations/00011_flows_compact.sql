-- +goose Up
-- Compact flows and rollups out of the write transaction (issue 6: write
-- speed, bytes per flow).
--
-- 1. flows is rebuilt with
--    - id as uuid: schema.FlowID is 32 hex digits (128 bits of SHA-256);
--      16 bytes instead of 33 in the row and in the primary key. The api
--      prints it as 32 lower-case hex digits as before. (A stored id that is
--      not 32 hex digits, which the pipeline never produces, becomes
--      md5(id)::uuid.)
--    - community_id as bytea: a Community ID v1 ("1:" + base64 of a 20-byte
--      SHA-1, https://github.com/corelight/community-id-spec) is the byte 1
--      and the 20 bytes (21 bytes instead of 31); '' is empty; any other
--      text is its UTF-8 bytes, behind a 0 byte when it starts with byte 0
--      or 1. The api formats it back exactly.
--    - no inserted_at (the api's sensor lag comes from sensors.last_seen and
--      last_flow instead);
--    - batch: the write batch that inserted the row (sequence flow_batch),
--      0 for rows inserted otherwise; rollup_pending lists the batches whose
--      rows are not in the rollups yet;
--    - columns ordered by alignment (8-byte types first, then 16-byte uuid,
--      4, 2, 1, variable length), so the row has no padding.
-- 2. Indexes: only the primary key (start, id) stays a btree (idempotence per
--    row). The btrees (sensor, start), (orig_addr, start), (resp_addr, start),
--    (community_id) and the hash index on id are replaced by BRIN indexes
--    (PostgreSQL 15): minmax on start and on batch, bloom on orig_addr,
--    resp_addr, id and community_id (16 pages per range, about 500 rows;
--    autosummarize, so a filled range is summarised by autovacuum).
-- 3. rollup_pending (batch, days): written in the transaction that copies a
--    batch into flows, so exactly the committed batches are pending; the
--    sink's rollup job adds the flows of pending batches to every rollup
--    table and deletes them from rollup_pending in one transaction.
--
-- Upgrade: every stored flow is copied into the new table (partitions keep
-- their names and ranges) and the old table is dropped; on a large database
-- this reads and writes every flow once. The rollups are not touched (they
-- already hold every stored flow; batch 0 is never pending).

CREATE SEQUENCE IF NOT EXISTS flow_batch;

-- The api's sensor lag (when the newest flow was stored minus its last
-- packet) came from flows.inserted_at; now from sensors: last_flow_at is the
-- wall clock of the write that last raised last_flow.
ALTER TABLE sensors ADD COLUMN IF NOT EXISTS last_flow_at timestamptz;
UPDATE sensors s SET last_flow_at = f.inserted_at FROM (SELECT DISTINCT ON (sensor) sensor, inserted_at
    FROM flows ORDER BY sensor, "end" DESC) f WHERE f.sensor = s.sensor;

CREATE TABLE rollup_pending (
    batch  bigint PRIMARY KEY,            -- flows.batch
    days   timestamptz[] NOT NULL,        -- UTC days (partitions) of the batch's rows
    lo     timestamptz NOT NULL,          -- earliest start in the batch
    hi     timestamptz NOT NULL,          -- latest start in the batch
    queued timestamptz NOT NULL DEFAULT now()
);

DROP INDEX IF EXISTS flows_sensor_start, flows_orig_start, flows_resp_start, flows_community_id, flows_id;
ALTER TABLE flows DROP CONSTRAINT IF EXISTS flows_pkey;
ALTER TABLE flows RENAME TO flows_v10;

CREATE TABLE flows (
    start             timestamptz NOT NULL,  -- first packet of this record (packet time)
    "end"             timestamptz NOT NULL,  -- last packet of this record
    flow_start        timestamptz NOT NULL,  -- first packet of the whole flow
    orig_pkts         bigint      NOT NULL,
    orig_ip_bytes     bigint      NOT NULL,
    orig_bytes        bigint      NOT NULL,
    resp_pkts         bigint      NOT NULL,
    resp_ip_bytes     bigint      NOT NULL,
    resp_bytes        bigint      NOT NULL,
    tunnel_id         bigint      NOT NULL DEFAULT 0,
    orig_asn          bigint      NOT NULL DEFAULT 0,
    resp_asn          bigint      NOT NULL DEFAULT 0,
    batch             bigint      NOT NULL DEFAULT 0,  -- flow_batch of the write; 0: not written by a batch
    id                uuid        NOT NULL,            -- schema.FlowID (32 hex)
    orig_port         integer     NOT NULL,
    resp_port         integer     NOT NULL,
    vlan              integer     NOT NULL DEFAULT 0,
    inner_vlan        integer     NOT NULL DEFAULT 0,
    record_index      integer     NOT NULL DEFAULT 0,
    proto             smallint    NOT NULL,            -- IP protocol number
    icmp_type         smallint    NOT NULL DEFAULT 0,
    icmp_code         smallint    NOT NULL DEFAULT 0,
    orig_tcp_flags    smallint    NOT NULL DEFAULT 0,
    resp_tcp_flags    smallint    NOT NULL DEFAULT 0,
    final             boolean     NOT NULL DEFAULT true,
    direction_guessed boolean     NOT NULL DEFAULT false,
    app_from_port     boolean     NOT NULL DEFAULT false,
    orig_addr         inet        NOT NULL,
    resp_addr         inet        NOT NULL,
    sensor            text        NOT NULL,
    community_id      bytea       NOT NULL DEFAULT '',  -- see above
    end_reason        text        NOT NULL DEFAULT '',
    app               text        NOT NULL DEFAULT '',
    conn_state        text        NOT NULL DEFAULT '',
    history           text        NOT NULL DEFAULT '',
    tunnel            text        NOT NULL DEFAULT '',
    server_name       text        NOT NULL DEFAULT '',
    direction         text        NOT NULL DEFAULT '',
    orig_name         text        NOT NULL DEFAULT '',
    resp_name         text        NOT NULL DEFAULT '',
    orig_country      text        NOT NULL DEFAULT '',
    orig_city         text        NOT NULL DEFAULT '',
    orig_as_org       text        NOT NULL DEFAULT '',
    resp_country      text        NOT NULL DEFAULT '',
    resp_city         text        NOT NULL DEFAULT '',
    resp_as_org       text        NOT NULL DEFAULT '',
    ja3               text        NOT NULL DEFAULT '',
    ja4               text        NOT NULL DEFAULT '',
    http_user_agent   text        NOT NULL DEFAULT '',
    PRIMARY KEY (start, id)
) PARTITION BY RANGE (start);

-- +goose StatementBegin
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'flows_v10'::regclass ORDER BY c.relname LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', p.relname, p.relname || '_v10');
        EXECUTE format('CREATE TABLE %I PARTITION OF flows %s', p.relname, p.bound);
    END LOOP;
END $$;
-- +goose StatementEnd

INSERT INTO flows (start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
    tunnel_id, orig_asn, resp_asn, batch, id, orig_port, resp_port, vlan, inner_vlan, record_index, proto, icmp_type,
    icmp_code, orig_tcp_flags, resp_tcp_flags, final, direction_guessed, app_from_port, orig_addr, resp_addr, sensor,
    community_id, end_reason, app, conn_state, history, tunnel, server_name, direction, orig_name, resp_name,
    orig_country, orig_city, orig_as_org, resp_country, resp_city, resp_as_org, ja3, ja4, http_user_agent)
SELECT start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
    tunnel_id, orig_asn, resp_asn, 0,
    CASE WHEN id ~ '^[0-9a-fA-F]{32}$' THEN id::uuid ELSE md5(id)::uuid END,
    orig_port, resp_port, vlan, inner_vlan, record_index, proto, icmp_type,
    icmp_code, orig_tcp_flags, resp_tcp_flags, final, direction_guessed, app_from_port, orig_addr, resp_addr, sensor,
    CASE
        WHEN community_id ~ '^1:[A-Za-z0-9+/]{27}=$'
            AND encode(decode(substr(community_id, 3), 'base64'), 'base64') = substr(community_id, 3)
            THEN '\x01'::bytea || decode(substr(community_id, 3), 'base64')
        WHEN left(community_id, 1) IN (chr(1)) THEN '\x00'::bytea || convert_to(community_id, 'UTF8')
        ELSE convert_to(community_id, 'UTF8')
    END,
    end_reason, app, conn_state, history, tunnel, server_name, direction, orig_name, resp_name,
    orig_country, orig_city, orig_as_org, resp_country, resp_city, resp_as_org, ja3, ja4, http_user_agent
FROM flows_v10
ON CONFLICT DO NOTHING;

DROP TABLE flows_v10;

CREATE INDEX flows_start_brin ON flows USING brin (start) WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_batch_brin ON flows USING brin (batch) WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_orig_addr_bloom ON flows USING brin (orig_addr inet_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_resp_addr_bloom ON flows USING brin (resp_addr inet_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_id_bloom ON flows USING brin (id uuid_bloom_ops (n_distinct_per_range = 500, false_positive_rate = 0.001))
    WITH (pages_per_range = 16, autosummarize = on);
CREATE INDEX flows_community_id_bloom ON flows USING brin (community_id bytea_bloom_ops (n_distinct_per_range = 500))
    WITH (pages_per_range = 16, autosummarize = on);

-- +goose Down
ALTER TABLE sensors DROP COLUMN IF EXISTS last_flow_at;
DROP TABLE rollup_pending;
DROP SEQUENCE IF EXISTS flow_batch;
-- The compact flows table stays (its old layout is not restored).
