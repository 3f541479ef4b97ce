package store

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
	"netwatch/testkit"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

// open migrates a fresh schema and opens a store on it.
func open(t testing.TB) (*Store, string) {
	t.Helper()
	return openApp(t, "")
}

// openApp is open with the connections' application_name set to app.
func openApp(t testing.TB, app string) (*Store, string) {
	t.Helper()
	dsn := testkit.Postgres(t)
	if app != "" {
		dsn += "&application_name=" + app
	}
	ctx := context.Background()
	if _, err := Migrate(ctx, dsn, quiet()); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, dsn, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, dsn
}

func TestMigrateFreshAndIdempotent(t *testing.T) {
	dsn := testkit.Postgres(t)
	ctx := context.Background()
	v, err := Migrate(ctx, dsn, quiet())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(v, []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}) {
		t.Fatalf("first run applied %v, want 1 to 14", v)
	}
	v, err = Migrate(ctx, dsn, quiet())
	if err != nil || len(v) != 0 {
		t.Fatalf("second run applied %v, %v; want nothing", v, err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var schemaName string
	var n int
	if err := conn.QueryRow(ctx, `SELECT current_schema(), count(*) FROM pg_tables
		WHERE schemaname = current_schema() AND tablename IN ('flows','alerts','host_metrics','sensors','partitions','goose_db_version','flows_1m',
			'capture_stats','talkers_1m','pairs_1m','ports_1m','countries_1m','parked_messages')
		GROUP BY 1`).Scan(&schemaName, &n); err != nil {
		t.Fatal(err)
	}
	if n != 13 || schemaName == "public" {
		t.Fatalf("%d tables in schema %s, want 13 in the test schema", n, schemaName)
	}
}

// flow is a hand-built flow; its id is computed like the enricher does.
func flow(sensor string, start time.Time, origPort uint32, idx uint32) *pb.Flow {
	oa, ra := []byte{10, 0, 0, 1}, []byte{192, 0, 2, 7}
	return &pb.Flow{
		Id:     schema.FlowID(sensor, 6, oa, origPort, ra, 443, 0, 0, 0, start.UnixNano(), idx),
		Sensor: sensor, CommunityId: "1:abc=", Proto: 6,
		OrigAddr: oa, OrigPort: origPort, RespAddr: ra, RespPort: 443,
		StartNs: start.UnixNano(), EndNs: start.Add(1500 * time.Millisecond).UnixNano(),
		FlowStartNs: start.UnixNano(),
		OrigPkts:    3, OrigIpBytes: 180, OrigBytes: 60, RespPkts: 2, RespIpBytes: 1540, RespBytes: 1460,
		OrigTcpFlags: 0x1b, RespTcpFlags: 0x12, RecordIndex: idx, Final: true, EndReason: pb.EndReason_END_FIN,
		App: "tls", ConnState: "SF", History: "ShADadFf", ServerName: "example.org", Direction: "outbound",
		OrigName: "me.lan", RespName: "example.org",
	}
}

func TestWriteFlowsExactValues(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	start := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)
	f := flow("s1", start, 51000, 0)
	f.Tunnel, f.TunnelId, f.Vlan, f.InnerVlan = pb.Tunnel_TUNNEL_VXLAN, 4242, 100, 7
	v6 := flow("s1", start, 51001, 0)
	v6.OrigAddr = netip.MustParseAddr("2001:db8::1").AsSlice()
	v6.RespAddr = netip.MustParseAddr("2001:db8::2").AsSlice()
	v6.Proto, v6.IcmpType, v6.IcmpCode, v6.OrigPort, v6.RespPort = 58, 128, 0, 0, 0
	v6.EndReason, v6.Final, v6.RecordIndex = pb.EndReason_END_ACTIVE, false, 3
	v6.FlowStartNs = start.Add(-time.Minute).UnixNano()
	bad := flow("s1", start, 1, 0)
	bad.OrigAddr = []byte{1, 2, 3}

	res, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Sensor: "s1", Flows: []*pb.Flow{f, v6, bad}}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rows != 2 || res.Inserted != 2 || res.Invalid != 1 {
		t.Fatalf("result %+v, want 2 rows, 2 inserted, 1 invalid", res)
	}
	type row struct {
		ID, Sensor, CommunityID                   string
		Proto                                     int16
		OrigAddr                                  netip.Prefix
		OrigPort                                  int32
		RespAddr                                  netip.Prefix
		RespPort, Vlan, InnerVlan                 int32
		IcmpType, IcmpCode                        int16
		Start, End, FlowStart                     time.Time
		OrigPkts, OrigIPBytes, OrigBytes          int64
		RespPkts, RespIPBytes, RespBytes          int64
		OrigFlags, RespFlags                      int16
		RecordIndex                               int32
		Final                                     bool
		EndReason                                 string
		Guessed                                   bool
		App, ConnState, History, Tunnel           string
		TunnelID                                  int64
		ServerName, Direction, OrigName, RespName string
	}
	var r row
	get := func(id string) row {
		t.Helper()
		// NULL is an unknown / 0 / false (00013; TestUnknownValuesNull).
		err := s.pool.QueryRow(ctx, `SELECT replace(id::text, '-', ''), sensor, COALESCE(convert_from(community_id, 'UTF8'), ''),
			proto, orig_addr, orig_port, resp_addr, resp_port,
			COALESCE(vlan, 0), COALESCE(inner_vlan, 0), COALESCE(icmp_type, 0), COALESCE(icmp_code, 0), start, "end", flow_start,
			orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes, COALESCE(orig_tcp_flags, 0),
			COALESCE(resp_tcp_flags, 0), COALESCE(record_index, 0), final, COALESCE(end_reason, ''),
			COALESCE(direction_guessed, false), COALESCE(app, ''), COALESCE(conn_state, ''), COALESCE(history, ''),
			COALESCE(tunnel, ''), COALESCE(tunnel_id, 0), COALESCE(server_name, ''), COALESCE(direction, ''),
			COALESCE(orig_name, ''), COALESCE(resp_name, '')
			FROM flows WHERE id = $1`, id).Scan(&r.ID, &r.Sensor, &r.CommunityID, &r.Proto, &r.OrigAddr, &r.OrigPort,
			&r.RespAddr, &r.RespPort, &r.Vlan, &r.InnerVlan, &r.IcmpType, &r.IcmpCode, &r.Start, &r.End, &r.FlowStart,
			&r.OrigPkts, &r.OrigIPBytes, &r.OrigBytes, &r.RespPkts, &r.RespIPBytes, &r.RespBytes, &r.OrigFlags,
			&r.RespFlags, &r.RecordIndex, &r.Final, &r.EndReason, &r.Guessed, &r.App, &r.ConnState, &r.History,
			&r.Tunnel, &r.TunnelID, &r.ServerName, &r.Direction, &r.OrigName, &r.RespName)
		if err != nil {
			t.Fatalf("select %s: %v", id, err)
		}
		return r
	}
	got := get(f.Id)
	// PostgreSQL keeps microseconds: 123456789 ns is stored as 123456 µs.
	wantStart := time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)
	want := row{ID: f.Id, Sensor: "s1", CommunityID: "1:abc=", Proto: 6,
		OrigAddr: netip.MustParsePrefix("10.0.0.1/32"), OrigPort: 51000,
		RespAddr: netip.MustParsePrefix("192.0.2.7/32"), RespPort: 443, Vlan: 100, InnerVlan: 7,
		Start: wantStart, End: wantStart.Add(1500 * time.Millisecond), FlowStart: wantStart,
		OrigPkts: 3, OrigIPBytes: 180, OrigBytes: 60, RespPkts: 2, RespIPBytes: 1540, RespBytes: 1460,
		OrigFlags: 0x1b, RespFlags: 0x12, Final: true, EndReason: "fin", App: "tls", ConnState: "SF",
		History: "ShADadFf", Tunnel: "vxlan", TunnelID: 4242, ServerName: "example.org", Direction: "outbound",
		OrigName: "me.lan", RespName: "example.org"}
	got.Start, got.End, got.FlowStart = got.Start.UTC(), got.End.UTC(), got.FlowStart.UTC()
	if got != want {
		t.Errorf("flow row\n got %+v\nwant %+v", got, want)
	}
	got = get(v6.Id)
	if got.OrigAddr != netip.MustParsePrefix("2001:db8::1/128") || got.Proto != 58 || got.IcmpType != 128 ||
		got.EndReason != "active" || got.Final || got.RecordIndex != 3 || got.Tunnel != "" ||
		!got.FlowStart.Equal(wantStart.Add(-time.Minute)) {
		t.Errorf("v6 flow row %+v", got)
	}

	var host string
	var lastFlow time.Time
	if err := s.pool.QueryRow(ctx, "SELECT host, last_flow FROM sensors WHERE sensor = 's1'").Scan(&host, &lastFlow); err != nil {
		t.Fatal(err)
	}
	if !lastFlow.Equal(wantStart.Add(1500 * time.Millisecond)) {
		t.Errorf("sensors.last_flow %v, want %v", lastFlow, wantStart.Add(1500*time.Millisecond))
	}
}

func TestOldCapturePartitionAndIdempotence(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	start := time.Date(2010, 3, 15, 23, 59, 59, 0, time.UTC)
	fb := &pb.FlowBatch{Sensor: "s1", Flows: []*pb.Flow{flow("s1", start, 1000, 0), flow("s1", start.Add(2*time.Second), 1001, 0)}}
	for i := range 3 {
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb, fb})
		if err != nil {
			t.Fatal(err)
		}
		if wantIns := map[bool]int{true: 2, false: 0}[i == 0]; res.Rows != 4 || res.Inserted != wantIns {
			t.Fatalf("write %d: %+v, want 4 rows, %d inserted", i, res, wantIns)
		}
	}
	rows, err := s.pool.Query(ctx, `SELECT tableoid::regclass::text, count(*) FROM flows GROUP BY 1 ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	type part struct {
		Name string
		N    int64
	}
	parts, err := pgx.CollectRows(rows, pgx.RowToStructByPos[part])
	if err != nil {
		t.Fatal(err)
	}
	want := []part{{"flows_p20100315", 1}, {"flows_p20100316", 1}}
	if len(parts) != 2 || parts[0] != want[0] || parts[1] != want[1] {
		t.Fatalf("partitions %v, want %v", parts, want)
	}
	storetest.WaitRollups(t, s.pool, "old capture")
	var recs, ipb int64
	var minute time.Time
	if err := s.pool.QueryRow(ctx, `SELECT sum(records), sum(orig_ip_bytes), min(minute) FROM flows_1m`).Scan(&recs, &ipb, &minute); err != nil {
		t.Fatal(err)
	}
	if recs != 2 || ipb != 360 || !minute.Equal(time.Date(2010, 3, 15, 23, 59, 0, 0, time.UTC)) {
		t.Errorf("flows_1m after 3 identical writes: records %d, orig_ip_bytes %d, first minute %v; want 2, 360, 23:59", recs, ipb, minute)
	}
	var rs, re time.Time
	if err := s.pool.QueryRow(ctx, "SELECT range_start, range_end FROM partitions WHERE name = 'flows_p20100315'").Scan(&rs, &re); err != nil {
		t.Fatal(err)
	}
	if !rs.Equal(time.Date(2010, 3, 15, 0, 0, 0, 0, time.UTC)) || !re.Equal(time.Date(2010, 3, 16, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("range %v – %v", rs, re)
	}
}

// TestConcurrentPartitionCreation: several stores (sinks) writing the same
// new day at once all succeed and create the partition once.
func TestConcurrentPartitionCreation(t *testing.T) {
	_, dsn := open(t)
	ctx := context.Background()
	start := time.Date(2011, 1, 2, 3, 4, 5, 0, time.UTC)
	errc := make(chan error, 8)
	for i := range 8 {
		s, err := Open(ctx, dsn, quiet(), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		go func() {
			_, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Flows: []*pb.Flow{flow("s1", start, uint32(i), 0)}}})
			errc <- err
		}()
	}
	for range 8 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	s, _ := Open(ctx, dsn, quiet(), nil)
	defer s.Close()
	var n, p int
	if err := s.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM flows), (SELECT count(*) FROM partitions WHERE parent = 'flows')").Scan(&n, &p); err != nil {
		t.Fatal(err)
	}
	if n != 8 || p != 1 {
		t.Fatalf("%d flows in %d partitions, want 8 in 1", n, p)
	}
}

func TestWriteAlertsAndMetrics(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	a := &pb.Alert{Id: schema.AlertID("s2", "portscan", "10.0.0.9", "", at.UnixNano()), TimeNs: at.UnixNano(), Sensor: "s2",
		Severity: pb.Severity_SEVERITY_HIGH, Category: "portscan", Technique: "T1046", OrigAddr: "10.0.0.9",
		Summary: "10.0.0.9 scanned 120 ports", Evidence: []byte(`{"ports":120}`), Rule: "portscan",
		WindowStartNs: at.Add(-time.Minute).UnixNano(), WindowEndNs: at.UnixNano(), Score: 0.9}
	b := &pb.Alert{Id: "b", TimeNs: at.UnixNano(), Sensor: "s2", Severity: pb.Severity_SEVERITY_CRITICAL,
		Category: "syn_flood", Summary: "flood", Evidence: []byte(`not json`)}
	for range 2 {
		if _, err := s.WriteAlerts(ctx, []*pb.Alert{a, b}); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	var sev, ev, ev2 string
	var orig, resp *netip.Prefix
	var ws *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM alerts), severity, evidence::text, orig_addr, resp_addr, window_start,
		(SELECT evidence::text FROM alerts WHERE id = 'b') FROM alerts WHERE id = $1`, a.Id).
		Scan(&n, &sev, &ev, &orig, &resp, &ws, &ev2); err != nil {
		t.Fatal(err)
	}
	if n != 2 || sev != "high" || ev != `{"ports": 120}` || orig == nil || orig.Addr() != netip.MustParseAddr("10.0.0.9") ||
		resp != nil || ws == nil || !ws.Equal(at.Add(-time.Minute)) || ev2 != `{"raw": "not json"}` {
		t.Errorf("alerts: n=%d sev=%s ev=%s orig=%v resp=%v ws=%v ev2=%s", n, sev, ev, orig, resp, ws, ev2)
	}

	m := &pb.Metrics{Sensor: "s2", Host: "h2", TimeNs: at.UnixNano(), CpuPercent: 12.5, MemTotalBytes: 8 << 30,
		MemUsedBytes: 2 << 30, Load1: 0.75, Boot: "b1", Seq: 9, UptimeS: 3600,
		Disks:      []*pb.DiskUsage{{Mount: "/", TotalBytes: 100, UsedBytes: 40}},
		Interfaces: []*pb.InterfaceCounters{{Name: "eth0", RxBytes: 1, TxBytes: 2, RxPackets: 3, TxPackets: 4}},
		Captures:   []*pb.CaptureStats{{Source: "eth0", Received: 10, Dropped: 1, IpPackets: 9, NonIp: 1}}}
	for range 2 {
		if _, err := s.WriteMetrics(ctx, []*pb.Metrics{m}); err != nil {
			t.Fatal(err)
		}
	}
	var disks, ifs, caps []byte
	var cpu float64
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM host_metrics), cpu_percent, disks, interfaces, captures
		FROM host_metrics`).Scan(&n, &cpu, &disks, &ifs, &caps); err != nil {
		t.Fatal(err)
	}
	var d []map[string]any
	var c []map[string]any
	_ = json.Unmarshal(disks, &d)
	_ = json.Unmarshal(caps, &c)
	if n != 1 || cpu != 12.5 || len(d) != 1 || d[0]["mount"] != "/" || d[0]["used_bytes"] != 40.0 ||
		len(c) != 1 || c[0]["non_ip"] != 1.0 || c[0]["ip_packets"] != 9.0 {
		t.Errorf("metrics: n=%d cpu=%v disks=%s caps=%s ifs=%s", n, cpu, disks, caps, ifs)
	}
	var host string
	if err := s.pool.QueryRow(ctx, "SELECT host FROM sensors WHERE sensor = 's2'").Scan(&host); err != nil || host != "h2" {
		t.Errorf("sensors host %q, %v; want h2", host, err)
	}
}

func TestRetentionDropsOnlyExpired(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	old := now.Add(-40 * 24 * time.Hour)
	replayed := time.Date(2010, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, st := range []time.Time{old, replayed, now} {
		if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Flows: []*pb.Flow{flow("s1", st, 1, 0)}}}); err != nil {
			t.Fatal(err)
		}
	}
	// The old partition was last written 35 days ago; the replayed 2010 one
	// was written just now, so it stays although its range is old.
	if _, err := s.pool.Exec(ctx, "UPDATE partitions SET last_write = $1 WHERE name = $2",
		now.Add(-35*24*time.Hour), partitionName("flows", dayOf(old))); err != nil {
		t.Fatal(err)
	}
	dropped, err := s.DropExpired(ctx, Retention{Flows: 30 * 24 * time.Hour}, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 1 || dropped[0] != partitionName("flows", dayOf(old)) {
		t.Fatalf("dropped %v, want only %s", dropped, partitionName("flows", dayOf(old)))
	}
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d flows left (%v), want 2", n, err)
	}
	// Writing to the dropped day again recreates it.
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Flows: []*pb.Flow{flow("s1", old, 2, 0)}}}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.DropExpired(ctx, Retention{Flows: 30 * 24 * time.Hour}, now); len(d) != 0 {
		t.Fatalf("dropped %v right after a write", d)
	}
}

// TestFastPathFallbackRollups: a batch of new rows goes the direct COPY way,
// a batch that repeats some of them falls back to the staging table, and in
// every case flows_1m equals a GROUP BY over flows. Times before 1970 and
// 2000 (the two epochs of the encoding) and text PostgreSQL would reject are
// included.
func TestFastPathFallbackRollups(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	mk := func(from, to int) *pb.FlowBatch {
		fb := &pb.FlowBatch{Sensor: "s1"}
		for i := from; i < to; i++ {
			st := []time.Time{time.Date(1969, 12, 31, 23, 59, 30, 999, time.UTC),
				time.Date(1999, 12, 31, 23, 59, 59, 999999999, time.UTC),
				time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)}[i%3].Add(time.Duration(i) * time.Second)
			f := flow("s1", st, uint32(i), 0)
			f.App = []string{"dns", "tls\x00x", "h\xfftp", ""}[i%4]
			f.OrigPkts = uint64(i)
			fb.Flows = append(fb.Flows, f)
		}
		return fb
	}
	check := func(step string, wantRows int) {
		t.Helper()
		storetest.WaitRollups(t, s.pool, step)
		var n, bad int
		if err := s.pool.QueryRow(ctx, `WITH g AS (
			SELECT date_bin('1 minute', start, timestamptz '2000-01-01 00:00:00+00') AS minute, sensor, proto, COALESCE(app, '') AS app,
				count(*) AS records, sum(orig_pkts) AS orig_pkts, sum(resp_pkts) AS resp_pkts,
				sum(orig_ip_bytes) AS orig_ip_bytes, sum(resp_ip_bytes) AS resp_ip_bytes,
				sum(orig_bytes) AS orig_bytes, sum(resp_bytes) AS resp_bytes
			FROM flows GROUP BY 1, 2, 3, 4)
			SELECT (SELECT count(*) FROM flows), (SELECT count(*) FROM (
				(SELECT * FROM g EXCEPT SELECT minute, sensor, proto, app, records, orig_pkts, resp_pkts,
					orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes FROM flows_1m)
				UNION ALL
				(SELECT minute, sensor, proto, app, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
					orig_bytes, resp_bytes FROM flows_1m EXCEPT SELECT * FROM g)) d)`).Scan(&n, &bad); err != nil {
			t.Fatal(err)
		}
		if n != wantRows || bad != 0 {
			t.Fatalf("%s: %d flows (want %d), %d rollup rows differ from GROUP BY over flows", step, n, wantRows, bad)
		}
	}
	write := func(step string, fb *pb.FlowBatch, wantIns int) {
		t.Helper()
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
		if err != nil || res.Inserted != wantIns || res.Rows != len(fb.Flows) {
			t.Fatalf("%s: %+v, %v; want %d inserted of %d", step, res, err, wantIns, len(fb.Flows))
		}
	}
	write("new", mk(0, 40), 40)
	check("new", 40)
	if s.flowDups.Load() {
		t.Fatal("duplicates flagged after a batch of new rows")
	}
	write("overlap", mk(20, 60), 20) // fast path fails, staging path inserts 20
	check("overlap", 60)
	if !s.flowDups.Load() {
		t.Fatal("no duplicates flagged after a batch that had some")
	}
	write("new after overlap", mk(60, 70), 10) // staging path, no duplicates: fast again
	check("new after overlap", 70)
	if s.flowDups.Load() {
		t.Fatal("still flagged after a batch without duplicates")
	}
	write("repeat", mk(0, 70), 0)
	check("repeat", 70)
	var app string
	var start time.Time
	if err := s.pool.QueryRow(ctx, "SELECT app, start FROM flows WHERE orig_pkts = 1").Scan(&app, &start); err != nil {
		t.Fatal(err)
	}
	want := time.Date(1999, 12, 31, 23, 59, 59, 999999000, time.UTC).Add(time.Second)
	if app != `tls\x00x` || !start.Equal(want) {
		t.Errorf("flow 1: app %q start %v, want %q %v", app, start, `tls\x00x`, want)
	}
	if err := s.pool.QueryRow(ctx, "SELECT start FROM flows WHERE orig_pkts = 0").Scan(&start); err != nil {
		t.Fatal(err)
	}
	if want := time.Date(1969, 12, 31, 23, 59, 30, 0, time.UTC); !start.Equal(want) {
		t.Errorf("flow 0: start %v, want %v (microseconds, rounded down)", start, want)
	}
}

// TestCompactFlowColumns: since migration 00011 the id is stored as a uuid
// (its 16 bytes) and a Community ID v1 as the byte 1 and the 20 bytes of its
// SHA-1 (the spec's TCP example, 1:LQU9qZlK+B5F3KDmev6m5PMibrg=, decoded by
// PostgreSQL's own base64); other text keeps its bytes (behind a 0 byte when
// it starts with byte 0 or 1); an id that is not 32 hex digits is invalid.
func TestCompactFlowColumns(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 8, 1, 10, 0, 0, 0, time.UTC)
	cids := []string{"1:LQU9qZlK+B5F3KDmev6m5PMibrg=", "1:abc=", "\x01x", ""}
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i, c := range cids {
		f := flow("s1", at, uint32(100+i), 0)
		f.CommunityId = c
		fb.Flows = append(fb.Flows, f)
	}
	bad := flow("s1", at, 200, 0)
	bad.Id = "not-32-hex"
	fb.Flows = append(fb.Flows, bad)
	res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
	if err != nil || res.Inserted != 4 || res.Invalid != 1 {
		t.Fatalf("%+v, %v; want 4 inserted, 1 invalid", res, err)
	}
	want := []string{`\x01` + "2d053da9994af81e45dca0e67afea6e4f3226eb8", `\x313a6162633d`, `\x000178`, `NULL`}
	for i, f := range fb.Flows[:4] {
		var got, canon string
		var idText string
		if err := s.pool.QueryRow(ctx, `SELECT COALESCE(community_id::text, 'NULL'), ('\x01'::bytea || decode('LQU9qZlK+B5F3KDmev6m5PMibrg=', 'base64'))::text,
			id::text FROM flows WHERE id = $1::uuid`, f.Id).Scan(&got, &canon, &idText); err != nil {
			t.Fatal(err)
		}
		if got != want[i] {
			t.Errorf("community_id %q stored as %s, want %s", cids[i], got, want[i])
		}
		if i == 0 && got != canon {
			t.Errorf("Community ID v1 stored as %s, PostgreSQL decodes it as %s", got, canon)
		}
		if dashed := f.Id[:8] + "-" + f.Id[8:12] + "-" + f.Id[12:16] + "-" + f.Id[16:20] + "-" + f.Id[20:]; idText != dashed {
			t.Errorf("id %s stored as uuid %s", f.Id, idText)
		}
	}
}

// TestSummarizeFlowIndexes: a batch just copied into flows has page ranges
// the BRIN indexes have not summarised (autovacuum has not run), so an id
// lookup through the bloom index reads every page of the partition; after
// SummarizeFlowIndexes it reads the one or two matching ranges (16 pages
// each) only.
func TestSummarizeFlowIndexes(t *testing.T) {
	s, _ := open(t)
	s.rollupPaused.Store(true)
	ctx := context.Background()
	at := time.Date(2024, 10, 1, 0, 0, 0, 0, time.UTC)
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i := 0; i < 20000; i++ {
		fb.Flows = append(fb.Flows, flow("s1", at.Add(time.Duration(i)*time.Millisecond), uint32(i), 0))
	}
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil {
		t.Fatal(err)
	}
	// Before: the ranges filled by the COPY are not summarised (autovacuum
	// has not run): an id lookup reads every page of the partition.
	lossy := func() int {
		t.Helper()
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		// The table is small: without this the planner scans the primary key.
		if _, err := tx.Exec(ctx, "SET LOCAL enable_indexscan = off; SET LOCAL enable_indexonlyscan = off; SET LOCAL enable_seqscan = off"); err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) SELECT 1 FROM flows_p20241001 WHERE id = $1::uuid`, fb.Flows[12345].Id)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var plan []map[string]any
		for rows.Next() {
			if err := rows.Scan(&plan); err != nil {
				t.Fatal(err)
			}
		}
		var find func(n map[string]any) int
		find = func(n map[string]any) int {
			if v, ok := n["Lossy Heap Blocks"].(float64); ok {
				return int(v)
			}
			if v, ok := n["Node Type"].(string); ok && v == "Seq Scan" {
				return 1 << 30
			}
			for _, c := range asSlice(n["Plans"]) {
				if v := find(c); v >= 0 {
					return v
				}
			}
			return -1
		}
		return find(plan[0]["Plan"].(map[string]any))
	}
	if _, err := s.pool.Exec(ctx, "ANALYZE flows_p20241001"); err != nil {
		t.Fatal(err)
	}
	var pages int
	if err := s.pool.QueryRow(ctx, `SELECT relpages FROM pg_class WHERE relname = 'flows_p20241001'`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	before := lossy()
	if err := s.SummarizeFlowIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	after := lossy()
	t.Logf("id lookup in a partition of %d pages: %d lossy heap blocks before summarizing, %d after", pages, before, after)
	if after < 0 || after > 32 || before <= after {
		t.Errorf("lossy heap blocks of an id lookup: %d before, %d after summarizing; want at most 32 after, fewer than before", before, after)
	}
}

func asSlice(v any) []map[string]any {
	var out []map[string]any
	if a, ok := v.([]any); ok {
		for _, x := range a {
			if m, ok := x.(map[string]any); ok {
				out = append(out, m)
			}
		}
	}
	return out
}

// TestOutOfRangeFlowsInvalid: a record whose numbers no capture yields
// (proto 70000, a VLAN id or record index of 4,000,000,000, port 70000, ICMP
// type 300, TCP flags 0x1000) is skipped and counted as invalid instead of
// wrapping in its smallint / integer column (QA: proto 70000 was stored as
// 4464, vlan 4e9 as -294967296); the in-range records beside them are
// stored, the largest values that fit (proto 255, VLAN 4095, port 65535,
// record index 2^31-1) exactly.
func TestOutOfRangeFlowsInvalid(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	start := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	edge := flow("s1", start, 65535, 0)
	edge.Proto, edge.Vlan, edge.InnerVlan, edge.RecordIndex, edge.RespPort = 255, 4095, 4095, math.MaxInt32, 65535
	edge.IcmpType, edge.IcmpCode, edge.OrigTcpFlags = 255, 255, 0xfff
	var bad []*pb.Flow
	for i, set := range []func(f *pb.Flow){
		func(f *pb.Flow) { f.Proto = 70000 }, func(f *pb.Flow) { f.Vlan = 4_000_000_000 },
		func(f *pb.Flow) { f.InnerVlan = 4096 }, func(f *pb.Flow) { f.RecordIndex = 4_000_000_000 },
		func(f *pb.Flow) { f.OrigPort = 70000 }, func(f *pb.Flow) { f.RespPort = 65536 },
		func(f *pb.Flow) { f.IcmpType = 300 }, func(f *pb.Flow) { f.IcmpCode = 256 },
		func(f *pb.Flow) { f.RespTcpFlags = 0x1000 },
	} {
		f := flow("s1", start, uint32(1000+i), 0)
		set(f)
		bad = append(bad, f)
	}
	res, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Sensor: "s1", Flows: append(bad, edge)}})
	if err != nil || res.Inserted != 1 || res.Invalid != len(bad) {
		t.Fatalf("result %+v, %v; want 1 inserted, %d invalid", res, err, len(bad))
	}
	var proto, icmpType, icmpCode, flags int
	var vlan, inner, idx, port int64
	if err := s.pool.QueryRow(ctx, `SELECT proto, vlan, inner_vlan, record_index, resp_port, icmp_type, icmp_code, orig_tcp_flags
		FROM flows`).Scan(&proto, &vlan, &inner, &idx, &port, &icmpType, &icmpCode, &flags); err != nil {
		t.Fatal(err)
	}
	if proto != 255 || vlan != 4095 || inner != 4095 || idx != math.MaxInt32 || port != 65535 || icmpType != 255 ||
		icmpCode != 255 || flags != 0xfff {
		t.Errorf("stored %d %d %d %d %d %d %d %#x, want 255 4095 4095 2147483647 65535 255 255 0xfff",
			proto, vlan, inner, idx, port, icmpType, icmpCode, flags)
	}
}
