package store

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
	"netwatch/testkit"
)

// optionalColumns are the columns of flows that hold NULL for an unknown /
// 0 / false value since migration 00013 (its list, written out again here).
var optionalColumns = []string{"tunnel_id", "orig_asn", "resp_asn", "vlan", "inner_vlan", "record_index",
	"icmp_type", "icmp_code", "orig_tcp_flags", "resp_tcp_flags", "direction_guessed", "app_from_port",
	"community_id", "end_reason", "app", "conn_state", "history", "tunnel", "server_name", "direction",
	"orig_name", "resp_name", "orig_country", "orig_city", "orig_as_org", "resp_country", "resp_city",
	"resp_as_org", "ja3", "ja4", "http_user_agent"}

// bareFlow is a record with only the core values: no L7, no GeoIP, no
// Community ID, no VLAN, not final's companion values (a UDP flow of a scan).
func bareFlow(sensor string, at time.Time, port uint32) *pb.Flow {
	oa, ra := []byte{10, 9, 0, 1}, []byte{192, 0, 2, 99}
	return &pb.Flow{Id: schema.FlowID(sensor, 17, oa, port, ra, 53, 0, 0, 0, at.UnixNano(), 0), Sensor: sensor,
		Proto: 17, OrigAddr: oa, OrigPort: port, RespAddr: ra, RespPort: 53, StartNs: at.UnixNano(),
		EndNs: at.Add(time.Millisecond).UnixNano(), FlowStartNs: at.UnixNano(), OrigPkts: 1, OrigIpBytes: 71,
		OrigBytes: 43, Final: true}
}

// fullFlow is a record with every optional value set (non-zero, non-empty).
func fullFlow(sensor string, at time.Time) *pb.Flow {
	f := flow(sensor, at, 40000, 2)
	f.Vlan, f.InnerVlan, f.IcmpType, f.IcmpCode = 10, 20, 3, 1
	f.Tunnel, f.TunnelId, f.DirectionGuessed, f.AppFromPort = pb.Tunnel_TUNNEL_GRE, 7, true, true
	f.CommunityId = "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
	f.OrigCountry, f.OrigCity, f.OrigAsn, f.OrigAsOrg = "SE", "Stockholm", 3301, "Telia"
	f.RespCountry, f.RespCity, f.RespAsn, f.RespAsOrg = "US", "Mountain View", 15169, "GOOGLE"
	f.Ja3, f.Ja4, f.HttpUserAgent = "e7d705a3286e19ea42f587b344ee6865", "t13d1516h2_8daaf6152771_b186095e22b6", "curl/8.5.0"
	return f
}

// nulls is the number of NULLs among optionalColumns in the flow row of id.
func nulls(t *testing.T, pool *pgxpool.Pool, id string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT num_nulls(`+strings.Join(optionalColumns, ", ")+
		`) FROM flows WHERE id = $1::uuid`, id).Scan(&n); err != nil {
		t.Fatalf("flow %s: %v", id, err)
	}
	return n
}

// TestUnknownValuesNull: a record without the optional values is stored
// with NULL in each of the 31 optional columns, by the fast path (binary
// COPY into flows) and by the staging way (a batch with a duplicate); a
// record with every value has none; the rollups key the unknown app and
// country as "" (hand counts: two bare records under app "" and country "",
// the full one under tls, SE and US).
func TestUnknownValuesNull(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)
	bare, full := bareFlow("s1", at, 1000), fullFlow("s1", at.Add(time.Second))
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Sensor: "s1", Flows: []*pb.Flow{bare, full}}}); err != nil || res.Inserted != 2 {
		t.Fatalf("fast path: %+v, %v", res, err)
	}
	// bare again: unique_violation, so this batch goes the staging way.
	staged := bareFlow("s1", at.Add(2*time.Second), 1001)
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Sensor: "s1", Flows: []*pb.Flow{bare, staged}}}); err != nil || res.Inserted != 1 {
		t.Fatalf("staging way: %+v, %v; want 1 inserted", res, err)
	}
	for _, c := range []struct {
		what string
		id   string
		want int
	}{{"bare, fast path", bare.Id, len(optionalColumns)}, {"bare, staged", staged.Id, len(optionalColumns)}, {"full", full.Id, 0}} {
		if n := nulls(t, s.pool, c.id); n != c.want {
			t.Errorf("%s: %d NULLs among the %d optional columns, want %d", c.what, n, len(optionalColumns), c.want)
		}
	}
	storetest.CheckRollups(t, s.pool, "NULLs")
	for _, c := range []struct {
		q    string
		want int
	}{
		{`SELECT coalesce(sum(records), 0) FROM flows_1m WHERE app = ''`, 2},
		{`SELECT coalesce(sum(records), 0) FROM flows_1d WHERE app = 'tls'`, 1},
		{`SELECT coalesce(sum(records), 0) FROM countries_1m WHERE country = ''`, 2},
		{`SELECT coalesce(sum(records), 0) FROM countries_1h WHERE country IN ('SE', 'US')`, 2},
		{`SELECT count(*) FROM countries_1m WHERE country IS NULL`, 0},
	} {
		var n int
		if err := s.pool.QueryRow(ctx, c.q).Scan(&n); err != nil || n != c.want {
			t.Errorf("%s: %d (%v), want %d", c.q, n, err, c.want)
		}
	}
}

// TestUpgradeTo13 migrates a database to version 12, stores flows as a
// version-12 sink did ("" / 0 / false for unknown values, NOT NULL), applies
// 00013 and checks that every stored row reads back identically (its text
// form), that only the optional columns lost NOT NULL (on the partitioned
// table and on the partition), that the DEFAULTs stay, and that a sink of
// this version then writes NULLs beside the old rows with every rollup equal
// to its GROUP BY over flows.
func TestUpgradeTo13(t *testing.T) {
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
	if _, err := p.UpTo(ctx, 12); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	d := time.Date(2024, 3, 10, 0, 0, 0, 0, time.UTC)
	for _, tbl := range []string{"flows", "flows_1m", "talkers_1m", "pairs_1m", "ports_1m", "countries_1m",
		"flows_1h", "talkers_1h", "pairs_1h", "ports_1h", "countries_1h",
		"flows_1d", "talkers_1d", "pairs_1d", "ports_1d", "countries_1d"} {
		name := partitionName(tbl, d)
		if _, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')`,
			name, tbl, d.Format(time.RFC3339), d.Add(day).Format(time.RFC3339))); err != nil {
			t.Fatal(err)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO partitions (name, parent, range_start, range_end) VALUES ($1, $2, $3, $4)`,
			name, tbl, d, d.Add(day)); err != nil {
			t.Fatal(err)
		}
	}
	// Version-12 rows: one with the defaults ("" / 0 / false) everywhere
	// optional, one with context values.
	at := d.Add(9 * time.Hour)
	if _, err := pool.Exec(ctx, `INSERT INTO flows (id, sensor, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
		VALUES ('00000000000000000000000000000001', 's1', 17, '10.0.0.1', 1000, '192.0.2.1', 53, $1, $1, $1, 1, 60, 32, 0, 0, 0)`,
		at); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO flows (id, sensor, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
		community_id, app, orig_country, resp_country, orig_asn, vlan, direction_guessed)
		VALUES ('00000000000000000000000000000002', 's1', 6, '10.0.0.2', 2000, '192.0.2.2', 443, $1, $1, $1, 3, 180, 0, 2, 120, 0,
		'\x01abcd', 'tls', 'SE', 'DE', 3301, 5, true)`, at.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	storetest.FillRollups(t, pool)
	rowsText := func() string {
		t.Helper()
		var s string
		if err := pool.QueryRow(ctx, `SELECT string_agg(f::text, E'\n' ORDER BY id) FROM flows f`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := rowsText()

	applied, err := Migrate(ctx, dsn, quiet())
	if err != nil || len(applied) != 2 || applied[0] != 13 || applied[1] != 14 {
		t.Fatalf("upgrade applied %v, %v; want [13 14]", applied, err)
	}
	// 00014: both bloom indexes sized for 1,000 values a range at 0.001.
	for _, ix := range []string{"flows_id_bloom", "flows_community_id_bloom"} {
		var def string
		if err := pool.QueryRow(ctx, `SELECT pg_get_indexdef(to_regclass($1))`, ix).Scan(&def); err != nil ||
			!strings.Contains(def, "n_distinct_per_range='1000'") || !strings.Contains(def, "false_positive_rate='0.001'") {
			t.Errorf("%s after 00014: %q, %v", ix, def, err)
		}
	}
	if after := rowsText(); after != before {
		t.Errorf("rows after 00013:\n%s\nbefore:\n%s", after, before)
	}
	if strings.Contains(before, ",,") {
		t.Errorf("a version-12 row holds a NULL:\n%s", before)
	}
	for _, rel := range []string{"flows", "flows_p20240310"} {
		var nullable, defaults string
		if err := pool.QueryRow(ctx, `SELECT string_agg(attname::text, ' ' ORDER BY attname::text COLLATE "C") FILTER (WHERE NOT attnotnull),
			string_agg(attname::text, ' ' ORDER BY attname::text COLLATE "C") FILTER (WHERE atthasdef)
			FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped`, rel).Scan(&nullable, &defaults); err != nil {
			t.Fatal(err)
		}
		want := slices.Sorted(slices.Values(optionalColumns))
		if nullable != strings.Join(want, " ") {
			t.Errorf("%s: nullable columns %q, want %q", rel, nullable, strings.Join(want, " "))
		}
		if !strings.Contains(defaults, "orig_country") || !strings.Contains(defaults, "vlan") {
			t.Errorf("%s: columns with a default %q: 00013 keeps them", rel, defaults)
		}
	}
	storetest.CheckRollups(t, pool, "after 00013")

	s, err := Open(ctx, dsn, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	bare, full := bareFlow("s1", at.Add(2*time.Second), 3000), fullFlow("s1", at.Add(3*time.Second))
	full.OrigAddr = netip.MustParseAddr("10.0.0.2").AsSlice()
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Sensor: "s1", Flows: []*pb.Flow{bare, full}}}); err != nil || res.Inserted != 2 {
		t.Fatalf("write after the upgrade: %+v, %v", res, err)
	}
	if n := nulls(t, pool, bare.Id); n != len(optionalColumns) {
		t.Errorf("bare flow after the upgrade: %d NULLs, want %d", n, len(optionalColumns))
	}
	storetest.CheckRollups(t, pool, "written after 00013")
	// The unknown country of the version-12 row ("") and of the new one
	// (NULL) are one key: 2 records.
	var n int
	if err := pool.QueryRow(ctx, `SELECT sum(records) FROM countries_1d WHERE country = ''`).Scan(&n); err != nil || n != 2 {
		t.Errorf("countries_1d '': %d records (%v), want 2", n, err)
	}
}
