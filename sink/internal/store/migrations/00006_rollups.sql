-- +goose Up
-- Per-minute rollups for the api's dashboards (issue 6): top talkers, address
-- pairs, responder ports and countries, keyed like flows_1m by the UTC minute
-- of the records' start. The sink adds to them in the same transaction as the
-- flows it newly inserts, so each always equals a GROUP BY over flows.
--
-- talkers_1m and countries_1m count an address (country) in both roles: as
-- originator it sent orig_* and received resp_*, as responder the reverse;
-- records is the number of flow records it appears in (once when it is both
-- originator and responder of a record).

CREATE TABLE talkers_1m (
    minute        timestamptz NOT NULL,
    sensor        text        NOT NULL,
    addr          inet        NOT NULL,
    sent_pkts     bigint      NOT NULL,
    sent_ip_bytes bigint      NOT NULL,
    recv_pkts     bigint      NOT NULL,
    recv_ip_bytes bigint      NOT NULL,
    records       bigint      NOT NULL,
    PRIMARY KEY (minute, sensor, addr)
) PARTITION BY RANGE (minute);

CREATE TABLE pairs_1m (
    minute        timestamptz NOT NULL,
    sensor        text        NOT NULL,
    orig_addr     inet        NOT NULL,
    resp_addr     inet        NOT NULL,
    proto         smallint    NOT NULL,
    orig_pkts     bigint      NOT NULL,
    resp_pkts     bigint      NOT NULL,
    orig_ip_bytes bigint      NOT NULL,
    resp_ip_bytes bigint      NOT NULL,
    records       bigint      NOT NULL,
    PRIMARY KEY (minute, sensor, orig_addr, resp_addr, proto)
) PARTITION BY RANGE (minute);

CREATE TABLE ports_1m (
    minute        timestamptz NOT NULL,
    sensor        text        NOT NULL,
    proto         smallint    NOT NULL,
    resp_port     integer     NOT NULL,
    orig_pkts     bigint      NOT NULL,
    resp_pkts     bigint      NOT NULL,
    orig_ip_bytes bigint      NOT NULL,
    resp_ip_bytes bigint      NOT NULL,
    records       bigint      NOT NULL,
    PRIMARY KEY (minute, sensor, proto, resp_port)
) PARTITION BY RANGE (minute);

CREATE TABLE countries_1m (
    minute        timestamptz NOT NULL,
    sensor        text        NOT NULL,
    country       text        NOT NULL,  -- ISO 3166-1 alpha-2, '' when unknown
    sent_pkts     bigint      NOT NULL,
    sent_ip_bytes bigint      NOT NULL,
    recv_pkts     bigint      NOT NULL,
    recv_ip_bytes bigint      NOT NULL,
    records       bigint      NOT NULL,
    PRIMARY KEY (minute, sensor, country)
) PARTITION BY RANGE (minute);

-- +goose Down
DROP TABLE countries_1m;
DROP TABLE ports_1m;
DROP TABLE pairs_1m;
DROP TABLE talkers_1m;
