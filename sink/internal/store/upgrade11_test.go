package store

import (
	"context"
	"fmt"
	"io/fs"
	"net/netip"
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

// TestUpgradeTo11 migrates a database to version 10, stores flows as a
// version-10 sink did (text ids, text Community IDs, inserted_at, rollups of
// every tier), then applies 00011: every flow is kept with its values (ids and
// Community IDs read back as the same text), partitions keep their names,
// sensors.last_flow_at comes from inserted_at, the old indexes are gone and
// the BRIN ones are there; a store of this version then writes more flows
// of the same minutes, and every rollup equals its GROUP BY over flows.
func TestUpgradeTo11(t *testing.T) {
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
	if _, err := p.UpTo(ctx, 10); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	d := time.Date(2024, 3, 9, 0, 0, 0, 0, time.UTC)
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
	// Ids: a schema.FlowID (hex), an upper-case hex one, and a text id the
	// pipeline never makes. Community IDs: a v1 one, a text one, none.
	type old struct{ id, cid string }
	olds := []old{
		{schema.FlowID("s1", 6, []byte{10, 0, 0, 1}, 1, []byte{192, 0, 2, 1}, 443, 0, 0, 0, d.UnixNano(), 0), "1:LQU9qZlK+B5F3KDmev6m5PMibrg="},
		{"0123456789ABCDEF0123456789ABCDEF", "1:abc="},
		{"old-text-id", ""},
	}
	at := d.Add(10*time.Hour + 30*time.Second)
	for i, o := range olds {
		if _, err := pool.Exec(ctx, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr,
			resp_port, start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
			app, orig_country, resp_country, inserted_at)
			VALUES ($1, 's1', $2, 6, '10.0.0.1', $3, '192.0.2.1', 443, $4, $5, $4, $6, $7, 0, 1, 60, 0, 'tls', 'SE', 'DE', $8)`,
			o.id, o.cid, 1000+i, at.Add(time.Duration(i)*time.Second), at.Add(time.Duration(i+2)*time.Second),
			i+1, 100*(i+1), at.Add(time.Duration(i+2)*time.Second+3*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO sensors (sensor, last_flow) VALUES ('s1', $1)`, at.Add(4*time.Second)); err != nil {
		t.Fatal(err)
	}
	storetest.FillRollups(t, pool)

	applied, err := Migrate(ctx, dsn, quiet())
	if err != nil || len(applied) != 4 || applied[0] != 11 {
		t.Fatalf("upgrade applied %v, %v; want [11 12 13 14]", applied, err)
	}
	wantIDs := []string{olds[0].id, "0123456789abcdef0123456789abcdef", "171b81e4fe238c3896284dec75dddd2e"} // echo -n old-text-id | md5sum
	for i, o := range olds {
		var cid, part string
		var n int
		if err := pool.QueryRow(ctx, `SELECT CASE WHEN get_byte(community_id || '\x00'::bytea, 0) = 1
				THEN '1:' || encode(substr(community_id, 2), 'base64') ELSE convert_from(community_id, 'UTF8') END,
			tableoid::regclass::text, orig_pkts FROM flows WHERE replace(id::text, '-', '') = $1`, wantIDs[i]).Scan(&cid, &part, &n); err != nil {
			t.Fatalf("flow %s after the upgrade: %v", o.id, err)
		}
		if cid != o.cid || part != "flows_p20240309" || n != i+1 {
			t.Errorf("flow %s: community_id %q (want %q), partition %s, orig_pkts %d", o.id, cid, o.cid, part, n)
		}
	}
	var lag float64
	if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM last_flow_at - last_flow) FROM sensors WHERE sensor = 's1'`).Scan(&lag); err != nil || lag != 3 {
		t.Errorf("sensors lag %v s (%v), want 3", lag, err)
	}
	var btrees, brins, gins int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE am.amname = 'btree'), count(*) FILTER (WHERE am.amname = 'brin'),
		count(*) FILTER (WHERE am.amname = 'gin')
		FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam
		WHERE x.indrelid = 'flows_p20240309'::regclass`).Scan(&btrees, &brins, &gins); err != nil || btrees != 1 || brins != 4 || gins != 1 {
		t.Errorf("flows_p20240309: %d btree, %d brin and %d gin indexes (%v), want 1 (primary key), 4 and 1 (addresses, 00012)", btrees, brins, gins, err)
	}
	storetest.CheckRollups(t, pool, "after 00011")

	s, err := Open(ctx, dsn, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i := 0; i < 20; i++ {
		st := at.Add(time.Duration(i) * time.Second)
		oa, ra := netip.MustParseAddr("10.0.0.1").AsSlice(), netip.MustParseAddr("192.0.2.1").AsSlice()
		fb.Flows = append(fb.Flows, &pb.Flow{Id: schema.FlowID("s1", 6, oa, uint32(5000+i), ra, 443, 0, 0, 0, st.UnixNano(), 0),
			Sensor: "s1", Proto: 6, OrigAddr: oa, OrigPort: uint32(5000 + i), RespAddr: ra, RespPort: 443, StartNs: st.UnixNano(),
			EndNs: st.UnixNano(), OrigPkts: uint64(i), OrigIpBytes: uint64(60 * i), RespPkts: 1, RespIpBytes: 60, App: "tls",
			OrigCountry: "SE", RespCountry: "DE"})
	}
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil || res.Inserted != 20 {
		t.Fatalf("write after the upgrade: %+v, %v", res, err)
	}
	storetest.CheckRollups(t, pool, "written after 00011")
}
