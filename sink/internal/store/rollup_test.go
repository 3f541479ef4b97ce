package store

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
)

// TestRollupsEqualGroupBy writes flows with varied keys (IPv4, IPv4-mapped
// IPv6 and IPv6 addresses, an address talking to itself, countries equal and
// different, interim records, several minutes and two days) in overlapping
// batches (fast path, staging fallback, repeats) from two stores at once, and
// checks every rollup against a GROUP BY over flows after each step.
func TestRollupsEqualGroupBy(t *testing.T) {
	s, dsn := open(t)
	ctx := context.Background()
	s2, err := Open(ctx, dsn, quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	addrs := [][]byte{
		netip.MustParseAddr("10.0.0.1").AsSlice(),
		netip.MustParseAddr("::ffff:10.0.0.1").AsSlice(),
		netip.MustParseAddr("2001:db8::1").AsSlice(),
		netip.MustParseAddr("192.0.2.7").AsSlice(),
	}
	countries := []string{"", "SE", "DE", "SE"}
	base := time.Date(2024, 3, 9, 23, 58, 30, 0, time.UTC)
	mk := func(from, to int) *pb.FlowBatch {
		fb := &pb.FlowBatch{Sensor: "s1"}
		for i := from; i < to; i++ {
			st := base.Add(time.Duration(i*7) * time.Second)
			oa, ra := addrs[i%4], addrs[(i/4)%4]
			f := &pb.Flow{
				Id:     schema.FlowID("s1", 6, oa, uint32(i), ra, uint32(i%5), 0, 0, 0, st.UnixNano(), uint32(i%3)),
				Sensor: []string{"s1", "s2"}[i%2], Proto: []uint32{6, 17}[i%2], OrigAddr: oa, OrigPort: uint32(i),
				RespAddr: ra, RespPort: uint32(i % 5), StartNs: st.UnixNano(), EndNs: st.Add(time.Second).UnixNano(),
				OrigPkts: uint64(i + 1), OrigIpBytes: uint64(100 * (i + 1)), OrigBytes: uint64(i),
				RespPkts: uint64(2 * i), RespIpBytes: uint64(1000 * i), RespBytes: uint64(3 * i),
				RecordIndex: uint32(i % 3), Final: i%3 == 2, App: []string{"http", "", "dns"}[i%3],
				OrigCountry: countries[i%4], RespCountry: countries[(i/3)%4],
			}
			fb.Flows = append(fb.Flows, f)
		}
		return fb
	}
	steps := []struct {
		name     string
		from, to int
		wantIns  int
	}{{"new", 0, 100, 100}, {"overlap", 50, 200, 100}, {"new again", 200, 260, 60}, {"repeat", 0, 260, 0}}
	for _, st := range steps {
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{mk(st.from, st.to)})
		if err != nil || res.Inserted != st.wantIns {
			t.Fatalf("%s: %+v, %v; want %d inserted", st.name, res, err, st.wantIns)
		}
		storetest.CheckRollups(t, s.pool, st.name)
	}
	// Two stores (sinks) writing overlapping new batches at once: each row
	// and its rollups land once.
	var wg sync.WaitGroup
	for i, st := range []*Store{s, s2, s, s2} {
		wg.Go(func() {
			if _, err := st.WriteFlows(ctx, []*pb.FlowBatch{mk(260+i*20, 320+i*20)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	storetest.CheckRollups(t, s.pool, "concurrent")
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&n); err != nil || n != 380 {
		t.Fatalf("%d flows (%v), want 380", n, err)
	}

	// One row by hand: 10.0.0.1 on sensor s1 (even i) in minute 23:58
	// (i*7 s after 23:58:30 < 30 s: i = 0, 2, 4). i=0 talks to itself: sent
	// 1 pkt as originator, received 1 as responder (0 resp pkts); i=2 (orig
	// 2001:db8::1): as responder it sent 2*2=4, received 3; i=4 (resp
	// ::ffff:10.0.0.1): sent 5, received 8.
	var sent, recv, recs int64
	if err := s.pool.QueryRow(ctx, `SELECT sent_pkts, recv_pkts, records FROM talkers_1m
		WHERE minute = '2024-03-09 23:58:00+00' AND sensor = 's1' AND addr = '10.0.0.1'`).Scan(&sent, &recv, &recs); err != nil {
		t.Fatal(err)
	}
	if sent != 1+4+5 || recv != 1+3+8 || recs != 3 {
		t.Errorf("talker 10.0.0.1 at 23:58: sent %d recv %d records %d; want 10, 12, 3", sent, recv, recs)
	}
}

// TestCountriesOncePerFlow: a record adds its traffic once to each distinct
// country of its ends (counted by hand), in every tier: a record within one
// country in its originator's role only.
func TestCountriesOncePerFlow(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	st := time.Date(2024, 3, 9, 10, 0, 5, 0, time.UTC)
	a := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	mk := func(i int, oc, rc string, op, ob, rp, rb uint64) *pb.Flow {
		oa, ra := a("192.0.2.1"), a("198.51.100.2")
		return &pb.Flow{Id: schema.FlowID("s1", 6, oa, uint32(i), ra, 443, 0, 0, 0, st.UnixNano(), 0),
			Sensor: "s1", Proto: 6, OrigAddr: oa, OrigPort: uint32(i), RespAddr: ra, RespPort: 443,
			StartNs: st.UnixNano(), EndNs: st.Add(time.Second).UnixNano(), OrigPkts: op, OrigIpBytes: ob,
			RespPkts: rp, RespIpBytes: rb, OrigCountry: oc, RespCountry: rc, Final: true}
	}
	fb := &pb.FlowBatch{Sensor: "s1", Flows: []*pb.Flow{
		mk(1, "SE", "SE", 10, 1000, 20, 3000), // same country
		mk(2, "SE", "DE", 1, 100, 2, 400),     // two countries
		mk(3, "", "DE", 5, 500, 0, 0),         // unknown originator
	}}
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil {
		t.Fatal(err)
	}
	type row struct{ sentPkts, sentBytes, recvPkts, recvBytes, records int64 }
	want := map[string]row{
		// flow 1 once (originator: sent 10/1000, received 20/3000), flow 2 as originator.
		"SE": {sentPkts: 10 + 1, sentBytes: 1000 + 100, recvPkts: 20 + 2, recvBytes: 3000 + 400, records: 2},
		// flows 2 and 3 as responder.
		"DE": {sentPkts: 2 + 0, sentBytes: 400 + 0, recvPkts: 1 + 5, recvBytes: 100 + 500, records: 2},
		"":   {sentPkts: 5, sentBytes: 500, recvPkts: 0, recvBytes: 0, records: 1},
	}
	storetest.WaitRollups(t, s.pool, "countries")
	for _, tbl := range []string{"countries_1m", "countries_1h", "countries_1d"} {
		rows, err := s.pool.Query(ctx, `SELECT country, sent_pkts, sent_ip_bytes, recv_pkts, recv_ip_bytes, records
			FROM `+tbl+` WHERE sensor = 's1'`)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]row{}
		for rows.Next() {
			var c string
			var r row
			if err := rows.Scan(&c, &r.sentPkts, &r.sentBytes, &r.recvPkts, &r.recvBytes, &r.records); err != nil {
				t.Fatal(err)
			}
			got[c] = r
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: %v, want %v", tbl, got, want)
		}
		for c, w := range want {
			if got[c] != w {
				t.Errorf("%s %q: %+v, want %+v", tbl, c, got[c], w)
			}
		}
	}
	storetest.CheckRollups(t, s.pool, "countries")
}

// TestRollupJobAllOrNothing: a run of the rollup job that fails part way
// (a trigger on talkers_1h raises an error after flows_1m and talkers_1m
// were added to) adds nothing and leaves its batches pending; the next run,
// once the fault is gone, adds them exactly once. A redelivered batch
// written while they were pending adds no batch of its own.
func TestRollupJobAllOrNothing(t *testing.T) {
	s, _ := open(t)
	s.rollupPaused.Store(true)
	ctx := context.Background()
	at := time.Date(2024, 9, 1, 8, 0, 0, 0, time.UTC)
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i := 0; i < 50; i++ {
		fb.Flows = append(fb.Flows, flow("s1", at.Add(time.Duration(i)*time.Second), uint32(i), 0))
	}
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil || res.Inserted != 50 {
		t.Fatalf("%+v, %v", res, err)
	}
	for _, q := range []string{
		`CREATE FUNCTION fail_rollup() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected fault'; END $$`,
		`CREATE TRIGGER fail_rollup BEFORE INSERT ON talkers_1h FOR EACH ROW EXECUTE FUNCTION fail_rollup()`,
	} {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.Rollup(ctx); err == nil || n != 0 {
		t.Fatalf("rollup with the fault: %d batches, %v; want an error", n, err)
	}
	var pending, minutes int
	if err := s.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM rollup_pending), (SELECT count(*) FROM flows_1m)`).Scan(&pending, &minutes); err != nil {
		t.Fatal(err)
	}
	if pending != 1 || minutes != 0 {
		t.Fatalf("after the failed run: %d batches pending (want 1), %d flows_1m rows (want 0)", pending, minutes)
	}
	// The same batch again while pending (a redelivery): nothing new.
	if res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil || res.Inserted != 0 {
		t.Fatalf("redelivery: %+v, %v", res, err)
	}
	if _, err := s.pool.Exec(ctx, `DROP TRIGGER fail_rollup ON talkers_1h`); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Rollup(ctx); err != nil || n != 1 {
		t.Fatalf("rollup after the fault: %d batches, %v; want 1", n, err)
	}
	var recs int64
	if err := s.pool.QueryRow(ctx, `SELECT sum(records) FROM flows_1h`).Scan(&recs); err != nil || recs != 50 {
		t.Errorf("flows_1h records %d (%v), want 50", recs, err)
	}
	storetest.CheckRollups(t, s.pool, "after the fault")
}
