package store

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
	"netwatch/testkit"
)

// TestUpgradeTo9 migrates a database to version 8, stores flows and their
// per-minute rollups as a version-8 sink did (partitions recorded, a record
// within one country counted in both roles in countries_1m), then applies
// migration 00009: countries_1m is corrected from the flows, the hourly and
// daily tiers are filled with their partitions, and a store of this version
// then writes more flows of the same days; after each step every rollup of
// every tier equals its GROUP BY over flows.
func TestUpgradeTo9(t *testing.T) {
	dsn := testkit.Postgres(t)
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.UpTo(ctx, 8); err != nil {
		t.Fatal(err)
	}
	days := []time.Time{time.Date(2024, 3, 9, 0, 0, 0, 0, time.UTC), time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC)}
	for _, d := range days {
		for _, tbl := range []string{"flows", "flows_1m", "talkers_1m", "pairs_1m", "ports_1m", "countries_1m"} {
			name := partitionName(tbl, d)
			if _, err := db.ExecContext(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')`,
				name, tbl, d.Format(time.RFC3339), d.Add(day).Format(time.RFC3339))); err != nil {
				t.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, `INSERT INTO partitions (name, parent, range_start, range_end) VALUES ($1, $2, $3, $4)`,
				name, tbl, d, d.Add(day)); err != nil {
				t.Fatal(err)
			}
		}
	}
	countries := []string{"SE", "SE", "DE", ""}
	for i := 0; i < 40; i++ {
		st := days[0].Add(23*time.Hour + 50*time.Minute + time.Duration(i*37)*time.Second)
		if _, err := db.ExecContext(ctx, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr,
			resp_port, start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
			app, orig_country, resp_country)
			VALUES ($1, 's1', '', 6, $2::inet, $3, $4::inet, 443, $5, $5, $5, $6, $7, 0, $8, $9, 0, 'tls', $10, $11)`,
			fmt.Sprintf("old%d", i), fmt.Sprintf("10.0.0.%d", i%3), 40000+i, fmt.Sprintf("192.0.2.%d", i%5), st,
			i+1, 100*(i+1), 2*i, 700*i, countries[i%4], countries[(i/2)%4]); err != nil {
			t.Fatal(err)
		}
	}
	// The rollups as a version-8 sink kept them (countries: both roles).
	for _, q := range []string{
		`INSERT INTO flows_1m SELECT date_trunc('minute', start), sensor, proto, app, count(*), sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes) FROM flows GROUP BY 1, 2, 3, 4`,
		`INSERT INTO talkers_1m SELECT m, sensor, a, sum(sp), sum(sb), sum(rp), sum(rb), count(DISTINCT id) FROM (
			SELECT date_trunc('minute', start) m, sensor, id, orig_addr a, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb FROM flows
			UNION ALL SELECT date_trunc('minute', start), sensor, id, resp_addr, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes FROM flows) x
			GROUP BY 1, 2, 3`,
		`INSERT INTO pairs_1m SELECT date_trunc('minute', start), sensor, orig_addr, resp_addr, proto, sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), count(*) FROM flows GROUP BY 1, 2, 3, 4, 5`,
		`INSERT INTO ports_1m SELECT date_trunc('minute', start), sensor, proto, resp_port, sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), count(*) FROM flows GROUP BY 1, 2, 3, 4`,
		`INSERT INTO countries_1m SELECT m, sensor, c, sum(sp), sum(sb), sum(rp), sum(rb), count(DISTINCT id) FROM (
			SELECT date_trunc('minute', start) m, sensor, id, orig_country c, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb FROM flows
			UNION ALL SELECT date_trunc('minute', start), sensor, id, resp_country, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes FROM flows) x
			GROUP BY 1, 2, 3`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	applied, err := Migrate(ctx, dsn, quiet())
	if err != nil || len(applied) != 6 || applied[0] != 9 {
		t.Fatalf("upgrade applied %v, %v; want [9 10 11 12 13 14]", applied, err)
	}
	s, err := Open(ctx, dsn, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	storetest.CheckRollups(t, s.pool, "after 00009")
	var parts int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM partitions WHERE parent IN ('talkers_1h', 'countries_1d')
		AND name IN ('talkers_1h_p20240309', 'talkers_1h_p20240310', 'countries_1d_p20240309', 'countries_1d_p20240310')`).Scan(&parts); err != nil || parts != 4 {
		t.Errorf("%d tier partitions recorded (%v), want 4", parts, err)
	}
	// This version's store adds flows to the same minutes, hours and days.
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i := 0; i < 30; i++ {
		st := days[0].Add(23*time.Hour + 55*time.Minute + time.Duration(i*31)*time.Second)
		oa, ra := netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i%3)).AsSlice(), netip.MustParseAddr("192.0.2.1").AsSlice()
		fb.Flows = append(fb.Flows, &pb.Flow{Id: schema.FlowID("s1", 6, oa, uint32(i), ra, 443, 0, 0, 0, st.UnixNano(), 0),
			Sensor: "s1", Proto: 6, OrigAddr: oa, OrigPort: uint32(i), RespAddr: ra, RespPort: 443, StartNs: st.UnixNano(),
			EndNs: st.UnixNano(), OrigPkts: uint64(i), OrigIpBytes: uint64(60 * i), RespPkts: 1, RespIpBytes: 60, App: "tls",
			OrigCountry: countries[i%4], RespCountry: countries[(i+1)%4]})
	}
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil || res.Inserted != 30 {
		t.Fatalf("write after the upgrade: %+v, %v", res, err)
	}
	storetest.CheckRollups(t, s.pool, "written after 00009")
}
