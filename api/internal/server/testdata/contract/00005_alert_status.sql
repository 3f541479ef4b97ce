ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'acknowledged', 'closed'));
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status_by text NOT NULL DEFAULT '';
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status_at timestamptz NULL;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS status_note text NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS capture_stats (
    time timestamptz NOT NULL, sensor text NOT NULL, boot text NOT NULL, seq bigint NOT NULL, source text NOT NULL,
    received bigint NOT NULL DEFAULT 0, dropped bigint NOT NULL DEFAULT 0, if_dropped bigint NOT NULL DEFAULT 0,
    ip_packets bigint NOT NULL DEFAULT 0, ip_bytes bigint NOT NULL DEFAULT 0, non_ip bigint NOT NULL DEFAULT 0,
    malformed bigint NOT NULL DEFAULT 0, ring_packets bigint NOT NULL DEFAULT 0, ring_freezes bigint NOT NULL DEFAULT 0,
    buffer_dropped bigint NOT NULL DEFAULT 0, arp bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (time, sensor, boot, seq, source)
) PARTITION BY RANGE (time);
