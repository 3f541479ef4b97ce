-- +goose Up
-- Unknown values of flows as NULL (issue 6: write speed, bytes per flow).
--
-- The optional columns of flows, those empty or zero for most flows, lose
-- NOT NULL; the sink writes NULL where it wrote '' / 0 / false before (sink
-- README, "Field mapping": NULL = unknown / '' / 0 / false; the api prints it
-- as before). A NULL costs one bit of the row's null bitmap and, in binary
-- COPY, a length of -1 and no receive-function call: 1 M rows shaped like
-- flows took 5.2 CPU-s and 273 B a row with '' / 0 / false, 2.9 CPU-s and
-- 228 B with NULLs (the lead's measurement, PostgreSQL 15, 2026-11-30).
-- Rows stored before this migration keep their '' / 0 / false: every reader
-- treats NULL and those values alike (COALESCE).
--
-- Kept NOT NULL (the core of a record): start, end, flow_start, the six
-- counters, batch, id, ports, proto, addresses, sensor, final.
--
-- Catalog only: DROP NOT NULL neither reads nor rewrites a row (it recurses
-- to every partition); the DEFAULTs stay.
ALTER TABLE flows
    ALTER COLUMN tunnel_id         DROP NOT NULL,
    ALTER COLUMN orig_asn          DROP NOT NULL,
    ALTER COLUMN resp_asn          DROP NOT NULL,
    ALTER COLUMN vlan              DROP NOT NULL,
    ALTER COLUMN inner_vlan        DROP NOT NULL,
    ALTER COLUMN record_index      DROP NOT NULL,
    ALTER COLUMN icmp_type         DROP NOT NULL,
    ALTER COLUMN icmp_code         DROP NOT NULL,
    ALTER COLUMN orig_tcp_flags    DROP NOT NULL,
    ALTER COLUMN resp_tcp_flags    DROP NOT NULL,
    ALTER COLUMN direction_guessed DROP NOT NULL,
    ALTER COLUMN app_from_port     DROP NOT NULL,
    ALTER COLUMN community_id      DROP NOT NULL,
    ALTER COLUMN end_reason        DROP NOT NULL,
    ALTER COLUMN app               DROP NOT NULL,
    ALTER COLUMN conn_state        DROP NOT NULL,
    ALTER COLUMN history           DROP NOT NULL,
    ALTER COLUMN tunnel            DROP NOT NULL,
    ALTER COLUMN server_name       DROP NOT NULL,
    ALTER COLUMN direction         DROP NOT NULL,
    ALTER COLUMN orig_name         DROP NOT NULL,
    ALTER COLUMN resp_name         DROP NOT NULL,
    ALTER COLUMN orig_country      DROP NOT NULL,
    ALTER COLUMN orig_city         DROP NOT NULL,
    ALTER COLUMN orig_as_org       DROP NOT NULL,
    ALTER COLUMN resp_country      DROP NOT NULL,
    ALTER COLUMN resp_city         DROP NOT NULL,
    ALTER COLUMN resp_as_org       DROP NOT NULL,
    ALTER COLUMN ja3               DROP NOT NULL,
    ALTER COLUMN ja4               DROP NOT NULL,
    ALTER COLUMN http_user_agent   DROP NOT NULL;

-- +goose Down
-- NULLs back to the defaults (rewrites the rows that hold one), then NOT NULL.
UPDATE flows SET tunnel_id = COALESCE(tunnel_id, 0), orig_asn = COALESCE(orig_asn, 0), resp_asn = COALESCE(resp_asn, 0),
    vlan = COALESCE(vlan, 0), inner_vlan = COALESCE(inner_vlan, 0), record_index = COALESCE(record_index, 0),
    icmp_type = COALESCE(icmp_type, 0), icmp_code = COALESCE(icmp_code, 0),
    orig_tcp_flags = COALESCE(orig_tcp_flags, 0), resp_tcp_flags = COALESCE(resp_tcp_flags, 0),
    direction_guessed = COALESCE(direction_guessed, false), app_from_port = COALESCE(app_from_port, false),
    community_id = COALESCE(community_id, ''), end_reason = COALESCE(end_reason, ''), app = COALESCE(app, ''),
    conn_state = COALESCE(conn_state, ''), history = COALESCE(history, ''), tunnel = COALESCE(tunnel, ''),
    server_name = COALESCE(server_name, ''), direction = COALESCE(direction, ''), orig_name = COALESCE(orig_name, ''),
    resp_name = COALESCE(resp_name, ''), orig_country = COALESCE(orig_country, ''), orig_city = COALESCE(orig_city, ''),
    orig_as_org = COALESCE(orig_as_org, ''), resp_country = COALESCE(resp_country, ''), resp_city = COALESCE(resp_city, ''),
    resp_as_org = COALESCE(resp_as_org, ''), ja3 = COALESCE(ja3, ''), ja4 = COALESCE(ja4, ''),
    http_user_agent = COALESCE(http_user_agent, '')
WHERE num_nulls(tunnel_id, orig_asn, resp_asn, vlan, inner_vlan, record_index, icmp_type, icmp_code, orig_tcp_flags,
    resp_tcp_flags, direction_guessed, app_from_port, community_id, end_reason, app, conn_state, history, tunnel,
    server_name, direction, orig_name, resp_name, orig_country, orig_city, orig_as_org, resp_country, resp_city,
    resp_as_org, ja3, ja4, http_user_agent) > 0;
ALTER TABLE flows
    ALTER COLUMN tunnel_id         SET NOT NULL,
    ALTER COLUMN orig_asn          SET NOT NULL,
    ALTER COLUMN resp_asn          SET NOT NULL,
    ALTER COLUMN vlan              SET NOT NULL,
    ALTER COLUMN inner_vlan        SET NOT NULL,
    ALTER COLUMN record_index      SET NOT NULL,
    ALTER COLUMN icmp_type         SET NOT NULL,
    ALTER COLUMN icmp_code         SET NOT NULL,
    ALTER COLUMN orig_tcp_flags    SET NOT NULL,
    ALTER COLUMN resp_tcp_flags    SET NOT NULL,
    ALTER COLUMN direction_guessed SET NOT NULL,
    ALTER COLUMN app_from_port     SET NOT NULL,
    ALTER COLUMN community_id      SET NOT NULL,
    ALTER COLUMN end_reason        SET NOT NULL,
    ALTER COLUMN app               SET NOT NULL,
    ALTER COLUMN conn_state        SET NOT NULL,
    ALTER COLUMN history           SET NOT NULL,
    ALTER COLUMN tunnel            SET NOT NULL,
    ALTER COLUMN server_name       SET NOT NULL,
    ALTER COLUMN direction         SET NOT NULL,
    ALTER COLUMN orig_name         SET NOT NULL,
    ALTER COLUMN resp_name         SET NOT NULL,
    ALTER COLUMN orig_country      SET NOT NULL,
    ALTER COLUMN orig_city         SET NOT NULL,
    ALTER COLUMN orig_as_org       SET NOT NULL,
    ALTER COLUMN resp_country      SET NOT NULL,
    ALTER COLUMN resp_city         SET NOT NULL,
    ALTER COLUMN resp_as_org       SET NOT NULL,
    ALTER COLUMN ja3               SET NOT NULL,
    ALTER COLUMN ja4               SET NOT NULL,
    ALTER COLUMN http_user_agent   SET NOT NULL;
