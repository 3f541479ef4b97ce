CREATE TABLE IF NOT EXISTS talkers_1m (
    minute timestamptz NOT NULL, sensor text NOT NULL, addr inet NOT NULL,
    sent_pkts bigint NOT NULL, sent_ip_bytes bigint NOT NULL, recv_pkts bigint NOT NULL, recv_ip_bytes bigint NOT NULL,
    records bigint NOT NULL,
    PRIMARY KEY (minute, sensor, addr)
) PARTITION BY RANGE (minute);
CREATE TABLE IF NOT EXISTS pairs_1m (
    minute timestamptz NOT NULL, sensor text NOT NULL, orig_addr inet NOT NULL, resp_addr inet NOT NULL,
    proto smallint NOT NULL, orig_pkts bigint NOT NULL, resp_pkts bigint NOT NULL,
    orig_ip_bytes bigint NOT NULL, resp_ip_bytes bigint NOT NULL, records bigint NOT NULL,
    PRIMARY KEY (minute, sensor, orig_addr, resp_addr, proto)
) PARTITION BY RANGE (minute);
CREATE TABLE IF NOT EXISTS ports_1m (
    minute timestamptz NOT NULL, sensor text NOT NULL, proto smallint NOT NULL, resp_port integer NOT NULL,
    orig_pkts bigint NOT NULL, resp_pkts bigint NOT NULL, orig_ip_bytes bigint NOT NULL, resp_ip_bytes bigint NOT NULL,
    records bigint NOT NULL,
    PRIMARY KEY (minute, sensor, proto, resp_port)
) PARTITION BY RANGE (minute);
CREATE TABLE IF NOT EXISTS countries_1m (
    minute timestamptz NOT NULL, sensor text NOT NULL, country text NOT NULL,
    sent_pkts bigint NOT NULL, sent_ip_bytes bigint NOT NULL, recv_pkts bigint NOT NULL, recv_ip_bytes bigint NOT NULL,
    records bigint NOT NULL,
    PRIMARY KEY (minute, sensor, country)
) PARTITION BY RANGE (minute);
