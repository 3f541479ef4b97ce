-- +goose Up
-- Alert triage status (issue 6: open, acknowledged, closed, and who/when),
-- set by the api. The sink inserts alerts with ON CONFLICT DO NOTHING and a
-- new row of an alert id already stored (same id, another time) takes the
-- status of that id's newest row, so a redelivered or updated alert never
-- resets the status.
ALTER TABLE alerts
    ADD COLUMN IF NOT EXISTS status      text        NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'acknowledged', 'closed')),
    ADD COLUMN IF NOT EXISTS status_by   text        NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS status_at   timestamptz NULL,
    ADD COLUMN IF NOT EXISTS status_note text        NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS alerts_id ON alerts (id);

-- Capture statistics of each sample (pb.Metrics.captures), one row per
-- capture source; counters are cumulative since the agent's boot.
CREATE TABLE capture_stats (
    time           timestamptz NOT NULL,  -- wall clock of the sample (pb.Metrics.time_ns)
    sensor         text        NOT NULL,
    boot           text        NOT NULL,
    seq            bigint      NOT NULL,
    source         text        NOT NULL,  -- interface name or file path
    received       bigint      NOT NULL,  -- frames read from the capture
    dropped        bigint      NOT NULL,  -- dropped by the kernel / ring (ps_drop)
    if_dropped     bigint      NOT NULL,  -- dropped by the interface (ps_ifdrop)
    ip_packets     bigint      NOT NULL,
    ip_bytes       bigint      NOT NULL,
    non_ip         bigint      NOT NULL,
    malformed      bigint      NOT NULL,
    ring_packets   bigint      NOT NULL,  -- AF_PACKET tp_packets
    ring_freezes   bigint      NOT NULL,  -- AF_PACKET TPACKET_V3 tp_freeze_q_cnt
    buffer_dropped bigint      NOT NULL,  -- summaries dropped on a full agent publish buffer
    arp            bigint      NOT NULL,  -- ARP frames summarized
    inserted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (time, sensor, boot, seq, source)
) PARTITION BY RANGE (time);
CREATE INDEX capture_stats_sensor_time ON capture_stats (sensor, time);

-- +goose Down
DROP TABLE capture_stats;
DROP INDEX IF EXISTS alerts_id;
ALTER TABLE alerts
    DROP COLUMN IF EXISTS status_note,
    DROP COLUMN IF EXISTS status_at,
    DROP COLUMN IF EXISTS status_by,
    DROP COLUMN IF EXISTS status;
