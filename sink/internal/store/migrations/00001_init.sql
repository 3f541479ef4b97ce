-- +goose Up
-- Flows, alerts and host metrics, partitioned by time (DESIGN.md "Storage").
-- Partitions are created on demand by the sink (one per UTC day), so a replayed
-- 2010 capture is stored. Column names are the api's JSON names.

CREATE TABLE flows (
    id             text        NOT NULL,  -- schema.FlowID, 32 hex
    sensor         text        NOT NULL,
    community_id   text        NOT NULL,
    proto          smallint    NOT NULL,  -- IP protocol number
    orig_addr      inet        NOT NULL,
    orig_port      integer     NOT NULL,
    resp_addr      inet        NOT NULL,
    resp_port      integer     NOT NULL,
    vlan           integer     NOT NULL DEFAULT 0,
    inner_vlan     integer     NOT NULL DEFAULT 0,
    icmp_type      smallint    NOT NULL DEFAULT 0,
    icmp_code      smallint    NOT NULL DEFAULT 0,
    start          timestamptz NOT NULL,  -- first packet of this record (packet time)
    "end"          timestamptz NOT NULL,  -- last packet of this record
    flow_start     timestamptz NOT NULL,  -- first packet of the whole flow
    orig_pkts      bigint      NOT NULL,
    orig_ip_bytes  bigint      NOT NULL,
    orig_bytes     bigint      NOT NULL,
    resp_pkts      bigint      NOT NULL,
    resp_ip_bytes  bigint      NOT NULL,
    resp_bytes     bigint      NOT NULL,
    orig_tcp_flags smallint    NOT NULL DEFAULT 0,
    resp_tcp_flags smallint    NOT NULL DEFAULT 0,
    record_index   integer     NOT NULL DEFAULT 0,
    final          boolean     NOT NULL DEFAULT true,
    end_reason     text        NOT NULL DEFAULT '',
    direction_guessed boolean  NOT NULL DEFAULT false,
    app            text        NOT NULL DEFAULT '',
    conn_state     text        NOT NULL DEFAULT '',
    history        text        NOT NULL DEFAULT '',
    tunnel         text        NOT NULL DEFAULT '',
    tunnel_id      bigint      NOT NULL DEFAULT 0,
    server_name    text        NOT NULL DEFAULT '',
    direction      text        NOT NULL DEFAULT '',
    inserted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (start, id)
) PARTITION BY RANGE (start);
CREATE INDEX flows_sensor_start ON flows (sensor, start);
CREATE INDEX flows_orig_start ON flows (orig_addr, start);
CREATE INDEX flows_resp_start ON flows (resp_addr, start);

CREATE TABLE alerts (
    id              text        NOT NULL,  -- schema.AlertID, 32 hex
    time            timestamptz NOT NULL,  -- packet time of the evidence
    sensor          text        NOT NULL,
    severity        text        NOT NULL,  -- info, low, medium, high, critical
    category        text        NOT NULL,
    technique       text        NOT NULL DEFAULT '',
    orig_addr       inet,                  -- NULL when spoofed or many
    resp_addr       inet,
    summary         text        NOT NULL,
    evidence        jsonb       NOT NULL DEFAULT '{}',
    rule            text        NOT NULL DEFAULT '',
    window_start    timestamptz,
    window_end      timestamptz,
    score           double precision NOT NULL DEFAULT 0,
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (time, id)
) PARTITION BY RANGE (time);
CREATE INDEX alerts_sensor_time ON alerts (sensor, time);

CREATE TABLE host_metrics (
    sensor          text        NOT NULL,
    boot            text        NOT NULL,
    seq             bigint      NOT NULL,
    time            timestamptz NOT NULL,  -- wall clock of the sample
    host            text        NOT NULL,
    cpu_percent     double precision NOT NULL,
    mem_total_bytes bigint      NOT NULL,
    mem_used_bytes  bigint      NOT NULL,
    load1           double precision NOT NULL DEFAULT 0,
    uptime_s        bigint      NOT NULL DEFAULT 0,
    disks           jsonb       NOT NULL DEFAULT '[]',  -- [{mount,total_bytes,used_bytes}]
    interfaces      jsonb       NOT NULL DEFAULT '[]',  -- [{name,rx_bytes,...}]
    captures        jsonb       NOT NULL DEFAULT '[]',  -- [{source,received,dropped,...}]
    inserted_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (time, sensor, boot, seq)
) PARTITION BY RANGE (time);
CREATE INDEX host_metrics_sensor_time ON host_metrics (sensor, time);

-- One row per sensor ever seen, kept current by the sink.
CREATE TABLE sensors (
    sensor      text PRIMARY KEY,
    host        text        NOT NULL DEFAULT '',
    first_seen  timestamptz NOT NULL DEFAULT now(),  -- wall clock
    last_seen   timestamptz NOT NULL DEFAULT now(),  -- wall clock
    last_flow   timestamptz                          -- packet time of the newest flow stored
);

-- Partitions the sink created, with their last write, for retention.
CREATE TABLE partitions (
    name        text PRIMARY KEY,
    parent      text        NOT NULL,
    range_start timestamptz NOT NULL,
    range_end   timestamptz NOT NULL,
    last_write  timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE partitions;
DROP TABLE sensors;
DROP TABLE host_metrics;
DROP TABLE alerts;
DROP TABLE flows;
