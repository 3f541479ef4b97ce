-- +goose Up
-- Faster dashboard statistics and exact country counts (issues 6 and 7).
--
-- 1. Hourly and daily rollups next to the per-minute ones: <rollup>_1h keyed
--    by the UTC hour of the records' start (column hour), <rollup>_1d by the
--    UTC day (column day), same counters. The sink adds to all three tiers in
--    the transaction that inserts the flows, so each tier equals a GROUP BY
--    over flows; the api sums whole days from _1d, whole hours from _1h and
--    the minutes at the ends of a range from _1m. Partitioned by day like
--    the per-minute tables.
-- 2. countries_*: a record adds its traffic once to each distinct country of
--    its ends: in the originator's role (sent orig_*, received resp_*), and
--    in the responder's role only when the responder's country differs.
--    Before, a record within one country was added in both roles, so the
--    country's sent + received held its traffic twice.
-- 3. A hash index on flows (id): GET /api/v1/flows/{id} has only the id (a
--    SHA-256 prefix, no time in it), so it probes each day's index.
--
-- Upgrade: countries_1m loses the responder's role of the stored flows whose
-- two ends have the same country (minutes whose flows retention already
-- dropped keep the double count). The hourly and daily tiers are filled from
-- the per-minute ones, partitions included. The id index is built over every
-- stored flow. On a large database this takes a while (it reads every rollup
-- row and every flow).

CREATE INDEX IF NOT EXISTS flows_id ON flows USING hash (id);

-- +goose StatementBegin
DO $$
DECLARE
    base text;
    tier record;
    p record;
    pname text;
BEGIN
    FOREACH base IN ARRAY ARRAY['flows', 'talkers', 'pairs', 'ports', 'countries'] LOOP
        FOR tier IN SELECT * FROM (VALUES ('_1h', 'hour'), ('_1d', 'day')) v(suffix, col) LOOP
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS) PARTITION BY RANGE (minute)',
                base || tier.suffix, base || '_1m');
            EXECUTE format('ALTER TABLE %I RENAME COLUMN minute TO %I', base || tier.suffix, tier.col);
        END LOOP;
    END LOOP;
END $$;
-- +goose StatementEnd

ALTER TABLE flows_1h ADD PRIMARY KEY (hour, sensor, proto, app);
ALTER TABLE flows_1d ADD PRIMARY KEY (day, sensor, proto, app);
ALTER TABLE talkers_1h ADD PRIMARY KEY (hour, sensor, addr);
ALTER TABLE talkers_1d ADD PRIMARY KEY (day, sensor, addr);
ALTER TABLE pairs_1h ADD PRIMARY KEY (hour, sensor, orig_addr, resp_addr, proto);
ALTER TABLE pairs_1d ADD PRIMARY KEY (day, sensor, orig_addr, resp_addr, proto);
ALTER TABLE ports_1h ADD PRIMARY KEY (hour, sensor, proto, resp_port);
ALTER TABLE ports_1d ADD PRIMARY KEY (day, sensor, proto, resp_port);
ALTER TABLE countries_1h ADD PRIMARY KEY (hour, sensor, country);
ALTER TABLE countries_1d ADD PRIMARY KEY (day, sensor, country);

-- Backfill: countries_1m without the responder's role of same-country
-- records, then the partitions and rows of the new tiers from the
-- per-minute rollups.
UPDATE countries_1m c SET sent_pkts = c.sent_pkts - s.rp, sent_ip_bytes = c.sent_ip_bytes - s.rb,
    recv_pkts = c.recv_pkts - s.op, recv_ip_bytes = c.recv_ip_bytes - s.ob
FROM (SELECT date_bin('1 minute', start, timestamptz '2000-01-01 00:00:00+00') AS minute, sensor, orig_country AS country,
        sum(orig_pkts) op, sum(orig_ip_bytes) ob, sum(resp_pkts) rp, sum(resp_ip_bytes) rb
    FROM flows WHERE orig_country = resp_country GROUP BY 1, 2, 3) s
WHERE c.minute = s.minute AND c.sensor = s.sensor AND c.country = s.country;

-- +goose StatementBegin
DO $$
DECLARE
    base text;
    tier record;
    p record;
    pname text;
BEGIN
    FOREACH base IN ARRAY ARRAY['flows', 'talkers', 'pairs', 'ports', 'countries'] LOOP
        FOR tier IN SELECT * FROM (VALUES ('_1h', 'hour'), ('_1d', 'day')) v(suffix, col) LOOP
            FOR p IN SELECT * FROM partitions WHERE parent = base || '_1m' ORDER BY range_start LOOP
                pname := base || tier.suffix || '_p' || to_char(p.range_start AT TIME ZONE 'UTC', 'YYYYMMDD');
                EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                    pname, base || tier.suffix, p.range_start, p.range_end);
                INSERT INTO partitions (name, parent, range_start, range_end, last_write)
                    VALUES (pname, base || tier.suffix, p.range_start, p.range_end, p.last_write)
                    ON CONFLICT (name) DO NOTHING;
            END LOOP;
        END LOOP;
    END LOOP;
END $$;
-- +goose StatementEnd

INSERT INTO flows_1h SELECT date_trunc('hour', minute, 'UTC'), sensor, proto, app, sum(records), sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes) FROM flows_1m GROUP BY 1, 2, 3, 4;
INSERT INTO flows_1d SELECT date_trunc('day', hour, 'UTC'), sensor, proto, app, sum(records), sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes) FROM flows_1h GROUP BY 1, 2, 3, 4;
INSERT INTO talkers_1h SELECT date_trunc('hour', minute, 'UTC'), sensor, addr, sum(sent_pkts), sum(sent_ip_bytes),
    sum(recv_pkts), sum(recv_ip_bytes), sum(records) FROM talkers_1m GROUP BY 1, 2, 3;
INSERT INTO talkers_1d SELECT date_trunc('day', hour, 'UTC'), sensor, addr, sum(sent_pkts), sum(sent_ip_bytes),
    sum(recv_pkts), sum(recv_ip_bytes), sum(records) FROM talkers_1h GROUP BY 1, 2, 3;
INSERT INTO pairs_1h SELECT date_trunc('hour', minute, 'UTC'), sensor, orig_addr, resp_addr, proto, sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM pairs_1m GROUP BY 1, 2, 3, 4, 5;
INSERT INTO pairs_1d SELECT date_trunc('day', hour, 'UTC'), sensor, orig_addr, resp_addr, proto, sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM pairs_1h GROUP BY 1, 2, 3, 4, 5;
INSERT INTO ports_1h SELECT date_trunc('hour', minute, 'UTC'), sensor, proto, resp_port, sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM ports_1m GROUP BY 1, 2, 3, 4;
INSERT INTO ports_1d SELECT date_trunc('day', hour, 'UTC'), sensor, proto, resp_port, sum(orig_pkts), sum(resp_pkts),
    sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM ports_1h GROUP BY 1, 2, 3, 4;
INSERT INTO countries_1h SELECT date_trunc('hour', minute, 'UTC'), sensor, country, sum(sent_pkts), sum(sent_ip_bytes),
    sum(recv_pkts), sum(recv_ip_bytes), sum(records) FROM countries_1m GROUP BY 1, 2, 3;
INSERT INTO countries_1d SELECT date_trunc('day', hour, 'UTC'), sensor, country, sum(sent_pkts), sum(sent_ip_bytes),
    sum(recv_pkts), sum(recv_ip_bytes), sum(records) FROM countries_1h GROUP BY 1, 2, 3;

-- +goose Down
DROP TABLE flows_1h, flows_1d, talkers_1h, talkers_1d, pairs_1h, pairs_1d, ports_1h, ports_1d, countries_1h, countries_1d;
DELETE FROM partitions WHERE parent LIKE '%\_1h' OR parent LIKE '%\_1d';
DROP INDEX IF EXISTS flows_id;
