package store

import (
	"context"
	"testing"
	"time"

	"netwatch/schema/pb"
)

// TestAlertStatusNeverReset: an operator acknowledges an alert; the same
// alert redelivered keeps the status, and an updated alert (same id, later
// evidence time) updates that one row in place (evidence, severity,
// last_time, updates) without touching its status; an older message
// redelivered after the update changes nothing.
func TestAlertStatusNeverReset(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 9, 1, 10, 0, 0, 0, time.UTC)
	a := &pb.Alert{Id: "scan-1", TimeNs: at.UnixNano(), Sensor: "s1", Severity: pb.Severity_SEVERITY_HIGH,
		Category: "portscan", Summary: "first"}
	other := &pb.Alert{Id: "scan-2", TimeNs: at.UnixNano(), Sensor: "s1", Category: "portscan", Summary: "other"}
	if _, err := s.WriteAlerts(ctx, []*pb.Alert{a, other}); err != nil {
		t.Fatal(err)
	}
	var status string
	if err := s.pool.QueryRow(ctx, "SELECT status FROM alerts WHERE id = 'scan-1'").Scan(&status); err != nil || status != "open" {
		t.Fatalf("new alert status %q (%v), want open", status, err)
	}
	ackAt := time.Date(2024, 9, 1, 11, 0, 0, 0, time.UTC)
	if _, err := s.pool.Exec(ctx, `UPDATE alerts SET status = 'acknowledged', status_by = 'ops', status_at = $1,
		status_note = 'known scanner' WHERE id = 'scan-1'`, ackAt); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "UPDATE alerts SET status = 'bogus' WHERE id = 'scan-2'"); err == nil {
		t.Error("status 'bogus' accepted: the CHECK constraint is missing")
	}
	updated := &pb.Alert{Id: "scan-1", TimeNs: at.Add(time.Minute).UnixNano(), Sensor: "s1",
		Severity: pb.Severity_SEVERITY_CRITICAL, Category: "portscan", Summary: "updated"}
	res, err := s.WriteAlerts(ctx, []*pb.Alert{a, updated, other})
	if err != nil || res.Inserted != 0 {
		t.Fatalf("redelivery + update: %+v, %v; want 0 inserted (one row per alert id)", res, err)
	}
	// the older message redelivered after the update changes nothing
	if _, err := s.WriteAlerts(ctx, []*pb.Alert{a}); err != nil {
		t.Fatal(err)
	}
	var n int
	var sum, st, by, note, sev string
	var when, last, first *time.Time
	var updates int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) OVER (), summary, severity, status, status_by, status_at, status_note,
		time, last_time, updates FROM alerts WHERE id = 'scan-1'`).Scan(&n, &sum, &sev, &st, &by, &when, &note,
		&first, &last, &updates); err != nil {
		t.Fatal(err)
	}
	if n != 1 || sum != "updated" || sev != "critical" || first == nil || !first.Equal(at) || last == nil ||
		!last.Equal(at.Add(time.Minute)) || updates != 1 {
		t.Errorf("scan-1: %d rows, summary %q severity %q time %v last_time %v updates %d; want 1 row updated in place",
			n, sum, sev, first, last, updates)
	}
	if st != "acknowledged" || by != "ops" || when == nil || !when.Equal(ackAt) || note != "known scanner" {
		t.Errorf("scan-1 triage: %s %s %v %s; want acknowledged by ops at %v", st, by, when, note, ackAt)
	}
	// a new alert and its update in one batch: one row, first time, latest evidence
	b1 := &pb.Alert{Id: "flood-1", TimeNs: at.UnixNano(), Sensor: "s1", Category: "syn_flood", Summary: "1000 SYNs",
		WindowStartNs: at.UnixNano()}
	b2 := &pb.Alert{Id: "flood-1", TimeNs: at.Add(5 * time.Second).UnixNano(), Sensor: "s1", Category: "syn_flood",
		Summary: "2000 SYNs", WindowStartNs: at.Add(time.Second).UnixNano()}
	if res, err := s.WriteAlerts(ctx, []*pb.Alert{b2, b1}); err != nil || res.Inserted != 1 {
		t.Fatalf("new alert with its update: %+v, %v", res, err)
	}
	if err := s.pool.QueryRow(ctx, `SELECT count(*) OVER (), summary, time, last_time FROM alerts WHERE id = 'flood-1'`).Scan(
		&n, &sum, &first, &last); err != nil || n != 1 || sum != "2000 SYNs" || !first.Equal(at) || last == nil ||
		!last.Equal(at.Add(5*time.Second)) {
		t.Errorf("flood-1: %d rows, %q, %v, %v (%v)", n, sum, first, last, err)
	}
	if err := s.pool.QueryRow(ctx, "SELECT status FROM alerts WHERE id = 'scan-2'").Scan(&status); err != nil || status != "open" {
		t.Errorf("scan-2 status %q (%v), want open", status, err)
	}
}

// TestCaptureStats: each capture source of a metrics sample is one
// capture_stats row with the sample's time and key; a redelivered sample
// adds nothing; a source listed twice in one sample is stored once.
func TestCaptureStats(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	at := time.Date(2024, 9, 2, 23, 59, 59, 0, time.UTC)
	m := &pb.Metrics{Sensor: "s1", Host: "h", TimeNs: at.UnixNano(), Boot: "boot1", Seq: 42, Captures: []*pb.CaptureStats{
		{Source: "eth0", Received: 1000, Dropped: 3, IfDropped: 1, IpPackets: 990, IpBytes: 5_000_000_000, NonIp: 9,
			Malformed: 1, RingPackets: 1003, RingFreezes: 2, BufferDropped: 7, Arp: 8},
		{Source: "eth1", Received: 5},
		{Source: "eth0", Received: 999999},
	}}
	for range 2 {
		if _, err := s.WriteMetrics(ctx, []*pb.Metrics{m}); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM capture_stats").Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d capture_stats rows (%v), want 2", n, err)
	}
	var tm time.Time
	var sensor, boot, part string
	var seq, recv, drop, ifd, ipp, ipb, nonip, mal, ring, frz, buf, arp int64
	if err := s.pool.QueryRow(ctx, `SELECT time, sensor, boot, seq, received, dropped, if_dropped, ip_packets, ip_bytes,
		non_ip, malformed, ring_packets, ring_freezes, buffer_dropped, arp, tableoid::regclass::text
		FROM capture_stats WHERE source = 'eth0'`).Scan(&tm, &sensor, &boot, &seq, &recv, &drop, &ifd, &ipp, &ipb,
		&nonip, &mal, &ring, &frz, &buf, &arp, &part); err != nil {
		t.Fatal(err)
	}
	if !tm.Equal(at) || sensor != "s1" || boot != "boot1" || seq != 42 || recv != 1000 || drop != 3 || ifd != 1 ||
		ipp != 990 || ipb != 5e9 || nonip != 9 || mal != 1 || ring != 1003 || frz != 2 || buf != 7 || arp != 8 ||
		part != "capture_stats_p20240902" {
		t.Errorf("eth0 row: %v %s %s %d %d %d %d %d %d %d %d %d %d %d %d %s", tm, sensor, boot, seq, recv, drop, ifd,
			ipp, ipb, nonip, mal, ring, frz, buf, arp, part)
	}
}

// TestFlowContextColumns: the pb.Flow fields of migration 00004 land in
// their columns.
func TestFlowContextColumns(t *testing.T) {
	s, _ := open(t)
	ctx := context.Background()
	f := flow("s1", time.Date(2024, 9, 3, 1, 2, 3, 0, time.UTC), 4000, 0)
	f.OrigCountry, f.OrigCity, f.OrigAsn, f.OrigAsOrg = "SE", "Göteborg", 3301, "Telia Company AB"
	f.RespCountry, f.RespCity, f.RespAsn, f.RespAsOrg = "US", "Mountain View", 4294967295, "GOOGLE"
	f.AppFromPort, f.Ja3, f.Ja4 = true, "771,4865-4866,0-23,29-23,0", "t13d1516h2_8daaf6152771_b186095e22b6"
	f.HttpUserAgent = "curl/8.5.0"
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{{Flows: []*pb.Flow{f}}}); err != nil {
		t.Fatal(err)
	}
	var oc, ocity, oorg, rc, rcity, rorg, ja3, ja4, ua string
	var oasn, rasn int64
	var fromPort bool
	if err := s.pool.QueryRow(ctx, `SELECT orig_country, orig_city, orig_asn, orig_as_org, resp_country, resp_city,
		resp_asn, resp_as_org, app_from_port, ja3, ja4, http_user_agent FROM flows`).Scan(&oc, &ocity, &oasn, &oorg,
		&rc, &rcity, &rasn, &rorg, &fromPort, &ja3, &ja4, &ua); err != nil {
		t.Fatal(err)
	}
	if oc != "SE" || ocity != "Göteborg" || oasn != 3301 || oorg != "Telia Company AB" || rc != "US" ||
		rcity != "Mountain View" || rasn != 4294967295 || rorg != "GOOGLE" || !fromPort || ja3 != f.Ja3 ||
		ja4 != f.Ja4 || ua != "curl/8.5.0" {
		t.Errorf("context columns: %s %s %d %s %s %s %d %s %v %s %s %s", oc, ocity, oasn, oorg, rc, rcity, rasn, rorg,
			fromPort, ja3, ja4, ua)
	}
}
