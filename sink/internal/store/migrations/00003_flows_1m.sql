-- +goose Up
-- Per-minute rollups of flow records (DESIGN.md "sink": per-minute rollups),
-- keyed by the minute of the record's start (packet time). The sink adds to
-- them in the same transaction as the flows it newly inserts, so a
-- redelivered batch adds nothing: the rollups equal a GROUP BY over flows.
CREATE TABLE flows_1m (
    minute        timestamptz NOT NULL,  -- UTC minute of the records' start
    sensor        text        NOT NULL,
    proto         smallint    NOT NULL,
    app           text        NOT NULL,
    records       bigint      NOT NULL,  -- flow records (interim records count each)
    orig_pkts     bigint      NOT NULL,
    resp_pkts     bigint      NOT NULL,
    orig_ip_bytes bigint      NOT NULL,
    resp_ip_bytes bigint      NOT NULL,
    orig_bytes    bigint      NOT NULL,
    resp_bytes    bigint      NOT NULL,
    PRIMARY KEY (minute, sensor, proto, app)
) PARTITION BY RANGE (minute);
CREATE INDEX flows_1m_sensor_minute ON flows_1m (sensor, minute);

-- +goose Down
DROP TABLE flows_1m;
