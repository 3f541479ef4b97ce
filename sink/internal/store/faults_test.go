package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
)

// spread is n new flows with spread addresses starting at start.
func spread(sensor string, n int, start time.Time) *pb.FlowBatch {
	fb := &pb.FlowBatch{Sensor: sensor}
	for i := range n {
		oa := []byte{10, byte(i >> 16), byte(i >> 8), byte(i)}
		ra := []byte{192, 0, 2, byte(i % 251)}
		st := start.Add(time.Duration(i) * time.Millisecond)
		fb.Flows = append(fb.Flows, &pb.Flow{
			Id:     schema.FlowID(sensor, 6, oa, uint32(i%60000), ra, 443, 0, 0, 0, st.UnixNano(), 0),
			Sensor: sensor, CommunityId: "1:x=", Proto: 6, OrigAddr: oa, OrigPort: uint32(i % 60000), RespAddr: ra,
			RespPort: 443, StartNs: st.UnixNano(), EndNs: st.Add(time.Second).UnixNano(),
			OrigPkts: 2, OrigIpBytes: uint64(100 + i%7), RespPkts: 1, RespIpBytes: 60, Final: true, App: "tls",
		})
	}
	return fb
}

// TestConnectionKilledMidCopy: the backend writing a batch is terminated
// (pg_terminate_backend) while its COPY runs. WriteFlows returns an error
// (no panic), not a data error (so the sink retries it); nothing of the
// batch is stored; the retry runs on a new connection and stores every row
// once with its rollups.
func TestConnectionKilledMidCopy(t *testing.T) {
	app := fmt.Sprintf("killcopy_%d", time.Now().UnixNano())
	s, dsn := openApp(t, app)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, dsn+"&application_name=admin")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	const n = 50_000
	fb := spread("s1", n, time.Date(2024, 4, 1, 10, 0, 0, 0, time.UTC))

	var victim int32
	killed := make(chan error, 1)
	go func() {
		// Wait until the COPY has processed some rows, then terminate it.
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			var pid int32
			err := admin.QueryRow(ctx, `SELECT p.pid FROM pg_stat_progress_copy p JOIN pg_stat_activity a USING (pid)
				WHERE a.application_name = $1 AND p.tuples_processed > 1000`, app).Scan(&pid)
			if err == nil {
				victim = pid
				_, err = admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid)
				killed <- err
				return
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				killed <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		killed <- errors.New("no COPY seen")
	}()
	_, werr := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
	if err := <-killed; err != nil {
		t.Fatalf("terminate: %v", err)
	}
	if werr == nil {
		t.Fatal("WriteFlows succeeded although its backend was terminated mid-COPY")
	}
	if IsDataError(werr) {
		t.Fatalf("terminated connection reported as a data error (would be parked): %v", werr)
	}
	t.Logf("killed backend %d mid-COPY: %v", victim, werr)
	var rows int
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("%d rows after the killed COPY (%v), want 0", rows, err)
	}
	res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
	if err != nil || res.Inserted != n {
		t.Fatalf("retry: %+v, %v; want %d inserted", res, err, n)
	}
	var distinct, pid int
	if err := admin.QueryRow(ctx, "SELECT count(*), count(DISTINCT id) FROM flows").Scan(&rows, &distinct); err != nil {
		t.Fatal(err)
	}
	if rows != n || distinct != n {
		t.Fatalf("%d rows, %d distinct after the retry; want %d", rows, distinct, n)
	}
	if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", victim).Scan(&pid); err != nil || pid != 0 {
		t.Errorf("terminated backend %d still listed (%v)", victim, err)
	}
	storetest.CheckRollups(t, s.pool, "after retry")
}

// TestTimeZones: the writer runs with TZ=Asia/Kolkata (time.Local) and the
// server session with TimeZone=Europe/Moscow; a flow, an alert and a metrics
// sample at 2024-01-01T00:00:00Z read back as that instant, in the UTC day
// partition and UTC minute of it.
func TestTimeZones(t *testing.T) {
	kolkata, err := time.LoadLocation("Asia/Kolkata")
	if err != nil {
		t.Fatal(err)
	}
	saved := time.Local
	time.Local = kolkata
	t.Cleanup(func() { time.Local = saved })
	_, dsn := open(t)
	ctx := context.Background()
	s, err := Open(ctx, dsn+"&timezone=Europe/Moscow", quiet(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var tz string
	if err := s.pool.QueryRow(ctx, "SHOW TimeZone").Scan(&tz); err != nil || tz != "Europe/Moscow" {
		t.Fatalf("server TimeZone %q (%v), want Europe/Moscow", tz, err)
	}
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).In(kolkata) // 05:30 local
	f := flow("s1", at, 1234, 0)
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Flows: []*pb.Flow{f}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteAlerts(ctx, []*pb.Alert{{Id: "a1", TimeNs: at.UnixNano(), Sensor: "s1", Summary: "x", Category: "c"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.WriteMetrics(ctx, []*pb.Metrics{{Sensor: "s1", TimeNs: at.UnixNano(), Boot: "b", Seq: 1,
		Captures: []*pb.CaptureStats{{Source: "eth0"}}}}); err != nil {
		t.Fatal(err)
	}
	// Read with the session in Moscow: the text form is 03:00+03, the epoch
	// is 1704067200 (date -d 2024-01-01T00:00:00Z +%s).
	storetest.WaitRollups(t, s.pool, "time zones")
	var text, part, minute string
	var epoch, aEpoch, mEpoch, cEpoch float64
	if err := s.pool.QueryRow(ctx, `SELECT start::text, extract(epoch FROM start), tableoid::regclass::text,
		(SELECT extract(epoch FROM time) FROM alerts), (SELECT extract(epoch FROM time) FROM host_metrics),
		(SELECT extract(epoch FROM time) FROM capture_stats), (SELECT min(minute)::text FROM talkers_1m) FROM flows`).
		Scan(&text, &epoch, &part, &aEpoch, &mEpoch, &cEpoch, &minute); err != nil {
		t.Fatal(err)
	}
	if text != "2024-01-01 03:00:00+03" || epoch != 1704067200 || part != "flows_p20240101" ||
		aEpoch != 1704067200 || mEpoch != 1704067200 || cEpoch != 1704067200 || minute != "2024-01-01 03:00:00+03" {
		t.Errorf("read back: start %s (epoch %.0f) in %s, alert %.0f, metrics %.0f, capture %.0f, minute %s; want 2024-01-01 03:00:00+03 = 1704067200 in flows_p20240101",
			text, epoch, part, aEpoch, mEpoch, cEpoch, minute)
	}
	var got time.Time
	if err := s.pool.QueryRow(ctx, "SELECT start FROM flows").Scan(&got); err != nil || !got.Equal(time.Unix(1704067200, 0)) {
		t.Errorf("scanned start %v (%v), want 2024-01-01T00:00:00Z", got, err)
	}
}

// TestAddressesAndBigCounters: 10.0.0.1, ::ffff:10.0.0.1 and 2001:db8::1
// round-trip exactly, as three distinct addresses (also in talkers_1m), and
// a flow of 5e9 bytes and 5e6 packets keeps its counters (flows and
// rollups).
func TestAddressesAndBigCounters(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 7, 1, 12, 0, 0, 0, time.UTC)
	addrs := []string{"10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"}
	fb := &pb.FlowBatch{Sensor: "s1"}
	for i, a := range addrs {
		f := flow("s1", at, uint32(1000+i), 0)
		f.OrigAddr = netip.MustParseAddr(a).AsSlice()
		f.RespAddr = netip.MustParseAddr("2001:db8::ff").AsSlice()
		f.Id = fmt.Sprintf("%032x", 0xadd0+i)
		fb.Flows = append(fb.Flows, f)
	}
	big := flow("s1", at, 2000, 0)
	big.Id = fmt.Sprintf("%032x", 0xb16)
	big.OrigIpBytes, big.OrigBytes, big.OrigPkts = 5_000_000_000, 4_800_000_000, 5_000_000
	big.RespIpBytes, big.RespPkts = 5_000_000_000, 5_000_000
	fb.Flows = append(fb.Flows, big)
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb}); err != nil {
		t.Fatal(err)
	}
	for i, a := range addrs {
		var text string
		var fam int
		var back netip.Prefix
		if err := s.pool.QueryRow(ctx, "SELECT host(orig_addr), family(orig_addr), orig_addr FROM flows WHERE id = $1",
			fmt.Sprintf("%032x", 0xadd0+i)).Scan(&text, &fam, &back); err != nil {
			t.Fatal(err)
		}
		wantFam := map[bool]int{true: 4, false: 6}[i == 0]
		if text != a || fam != wantFam || back.Addr() != netip.MustParseAddr(a) || back.Bits() != back.Addr().BitLen() {
			t.Errorf("%s read back as %s (family %d, %v)", a, text, fam, back)
		}
	}
	storetest.WaitRollups(t, s.pool, "addresses")
	var n int
	if err := s.pool.QueryRow(ctx, `SELECT count(DISTINCT orig_addr) FROM flows WHERE orig_port BETWEEN 1000 AND 1002`).Scan(&n); err != nil || n != 3 {
		t.Errorf("%d distinct originators, want 3", n)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM talkers_1m WHERE addr IN ('10.0.0.1', '::ffff:10.0.0.1', '2001:db8::1')`).Scan(&n); err != nil || n != 3 {
		t.Errorf("%d talkers rows for the three addresses, want 3 (%v)", n, err)
	}
	var ob, opl, op, rb, rp int64
	if err := s.pool.QueryRow(ctx, "SELECT orig_ip_bytes, orig_bytes, orig_pkts, resp_ip_bytes, resp_pkts FROM flows WHERE id = $1", fmt.Sprintf("%032x", 0xb16)).
		Scan(&ob, &opl, &op, &rb, &rp); err != nil {
		t.Fatal(err)
	}
	if ob != 5e9 || opl != 4.8e9 || op != 5e6 || rb != 5e9 || rp != 5e6 {
		t.Errorf("big flow read back %d %d %d %d %d", ob, opl, op, rb, rp)
	}
	var sb, sp int64
	if err := s.pool.QueryRow(ctx, "SELECT sent_ip_bytes, sent_pkts FROM talkers_1m WHERE addr = '10.0.0.1'").Scan(&sb, &sp); err != nil {
		t.Fatal(err)
	}
	if sb != 5e9+180 || sp != 5e6+3 { // the big flow and addr-0 (180 bytes, 3 pkts) are both from 10.0.0.1
		t.Errorf("talker 10.0.0.1 sent %d bytes %d pkts, want %d %d", sb, sp, int64(5e9+180), int64(5e6+3))
	}
	storetest.CheckRollups(t, s.pool, "big")
}
