package server_test

import (
	"testing"
)

// rollupTiers fills what the sink keeps besides what env.rollup fills, from
// the flows and with the definitions of sink migration 00009 (written here
// in SQL, independently of the sink's Go code): countries_1m counting a
// record within one country once (in its originator's role), and the hourly
// (_1h) and daily (_1d) tiers of every rollup as GROUP BYs of the per-minute
// rows. The tier tables get default partitions, as migrate gives the others.
func (e *env) rollupTiers(t testing.TB) {
	t.Helper()
	for _, b := range []string{"flows", "talkers", "pairs", "ports", "countries"} {
		for _, s := range []string{"_1h", "_1d"} {
			e.exec(t, "CREATE TABLE IF NOT EXISTS "+b+s+"_default PARTITION OF "+b+s+" DEFAULT")
		}
	}
	for _, sql := range []string{
		`TRUNCATE countries_1m, flows_1h, flows_1d, talkers_1h, talkers_1d, pairs_1h, pairs_1d, ports_1h, ports_1d,
			countries_1h, countries_1d`,
		`INSERT INTO countries_1m SELECT m, sensor, c, sum(sp), sum(sb), sum(rp), sum(rb), count(*) FROM (
			SELECT date_trunc('minute', start) m, sensor, COALESCE(orig_country, '') c, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb FROM flows
			UNION ALL
			SELECT date_trunc('minute', start), sensor, COALESCE(resp_country, ''), resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes FROM flows
				WHERE COALESCE(resp_country, '') <> COALESCE(orig_country, '')) x
			GROUP BY 1, 2, 3`,
	} {
		e.exec(t, sql)
	}
	for _, tier := range []struct{ from, fromCol, to, col, unit string }{
		{"_1m", "minute", "_1h", "hour", "hour"}, {"_1h", "hour", "_1d", "day", "day"}} {
		bin := "date_trunc('" + tier.unit + "', " + tier.fromCol + ", 'UTC')"
		for _, sql := range []string{
			`INSERT INTO flows` + tier.to + ` SELECT ` + bin + `, sensor, proto, app, sum(records), sum(orig_pkts), sum(resp_pkts),
				sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes) FROM flows` + tier.from + ` GROUP BY 1, 2, 3, 4`,
			`INSERT INTO talkers` + tier.to + ` SELECT ` + bin + `, sensor, addr, sum(sent_pkts), sum(sent_ip_bytes), sum(recv_pkts),
				sum(recv_ip_bytes), sum(records) FROM talkers` + tier.from + ` GROUP BY 1, 2, 3`,
			`INSERT INTO pairs` + tier.to + ` SELECT ` + bin + `, sensor, orig_addr, resp_addr, proto, sum(orig_pkts), sum(resp_pkts),
				sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM pairs` + tier.from + ` GROUP BY 1, 2, 3, 4, 5`,
			`INSERT INTO ports` + tier.to + ` SELECT ` + bin + `, sensor, proto, resp_port, sum(orig_pkts), sum(resp_pkts),
				sum(orig_ip_bytes), sum(resp_ip_bytes), sum(records) FROM ports` + tier.from + ` GROUP BY 1, 2, 3, 4`,
			`INSERT INTO countries` + tier.to + ` SELECT ` + bin + `, sensor, country, sum(sent_pkts), sum(sent_ip_bytes), sum(recv_pkts),
				sum(recv_ip_bytes), sum(records) FROM countries` + tier.from + ` GROUP BY 1, 2, 3`,
		} {
			e.exec(t, sql)
		}
	}
}
