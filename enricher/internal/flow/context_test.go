package flow

import (
	"net/netip"
	"testing"

	"netwatch/enricher/internal/geo"
	"netwatch/enricher/internal/names"
	"netwatch/schema/pb"
)

// TestContext: GeoIP/ASN of both ends (values from the test databases'
// source JSON: 81.2.69.142/127 GB London, 89.160.20.112/124 SE Linköping,
// 89.160.20.112/29 AS29518 "Bredband2 AB", 81.2.69.142 in no ASN network),
// a name learned from an earlier DNS response (CNAME chain), JA3/JA4/User-
// Agent from the originator's first packets that carry them, app from the
// port marked as such.
func TestContext(t *testing.T) {
	db, err := geo.Open("../../../../shared/data/geoip/GeoIP2-City-Test.mmdb", "../../../../shared/data/geoip/GeoLite2-ASN-Test.mmdb", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	client := netip.MustParseAddr("81.2.69.142").AsSlice()
	server := netip.MustParseAddr("89.160.20.115").AsSlice()
	resolver := netip.MustParseAddr("81.2.69.143").AsSlice()
	cfg := DefaultConfig()
	cfg.Geo, cfg.Names = db, names.New(names.Config{})
	dnsQ := udp(sec(0), client, 40000, resolver, 53, 30)
	dnsQ.DnsQuery = "www.example.se"
	dnsR := udp(sec(0.01), resolver, 53, client, 40000, 80)
	dnsR.DnsQuery, dnsR.DnsResponse = "www.example.se", true
	dnsR.DnsAnswers = []*pb.DNSAnswer{{Name: "www.example.se", Type: 5, Target: "cdn.example.net", Ttl: 60},
		{Name: "cdn.example.net", Type: 1, Addr: server, Ttl: 20}}
	hello := tcp(sec(1.03), client, 50000, server, 8443, psh|ack, 200)
	hello.Ja3, hello.Ja4 = "", "t13d1516h2_8daaf6152771_b186095e22b6"
	second := tcp(sec(1.05), client, 50000, server, 8443, psh|ack, 100)
	second.Ja3, second.Ja4, second.HttpUserAgent = "e7d705a3286e19ea42f587b344ee6865", "ignored: not the first", "curl/8.5.0"
	serverUA := tcp(sec(1.04), server, 8443, client, 50000, psh|ack, 100)
	serverUA.HttpUserAgent = "from the responder: ignored"
	pkts := []*pb.PacketSummary{dnsQ, dnsR,
		tcp(sec(1), client, 50000, server, 8443, syn, 0),
		tcp(sec(1.01), server, 8443, client, 50000, syn|ack, 0),
		tcp(sec(1.02), client, 50000, server, 8443, ack, 0),
		hello, serverUA, second,
		udp(sec(2), client, 40001, netip.MustParseAddr("1.128.0.1").AsSlice(), 5004, 10), // no app from the port
	}
	recs := run(cfg, pkts, eof)
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	var f, dns, other *pb.Flow
	for _, r := range recs {
		switch r.RespPort {
		case 8443:
			f = r
		case 53:
			dns = r
		default:
			other = r
		}
	}
	type ctx struct {
		oc, ocity, oorg, rc, rcity, rorg, oname, rname, app, ja3, ja4, ua string
		oasn, rasn                                                        uint32
		fromPort                                                          bool
	}
	got := ctx{f.OrigCountry, f.OrigCity, f.OrigAsOrg, f.RespCountry, f.RespCity, f.RespAsOrg, f.OrigName, f.RespName,
		f.App, f.Ja3, f.Ja4, f.HttpUserAgent, f.OrigAsn, f.RespAsn, f.AppFromPort}
	want := ctx{"GB", "London", "", "SE", "Linköping", "Bredband2 AB", "", "www.example.se", "tls",
		"e7d705a3286e19ea42f587b344ee6865", "t13d1516h2_8daaf6152771_b186095e22b6", "curl/8.5.0", 0, 29518, true}
	if got != want {
		t.Errorf("tcp flow context\n got %+v\nwant %+v", got, want)
	}
	// The DNS flow's app came from the agent's L7 (a query name), not the port.
	if dns.App != "dns" || dns.AppFromPort || dns.ServerName != "www.example.se" {
		t.Errorf("dns flow app %q from port %v server %q", dns.App, dns.AppFromPort, dns.ServerName)
	}
	if other.App != "" || other.AppFromPort || other.RespAsn != 1221 || other.RespAsOrg != "Telstra Pty Ltd" || other.RespName != "" {
		t.Errorf("udp flow %+v", other)
	}
}

// TestNoContext: without databases and names the fields are empty.
func TestNoContext(t *testing.T) {
	recs := run(DefaultConfig(), handshake(), eof)
	f := recs[0]
	if f.OrigCountry != "" || f.RespAsn != 0 || f.OrigName != "" || f.RespName != "" || !f.AppFromPort || f.App != "http" {
		t.Errorf("%+v", f)
	}
}

// TestLimit: with Max 3 shared by two tables, a fourth flow ends the table's
// least recently active one early (END_IDLE), counted; no packet is lost.
func TestLimit(t *testing.T) {
	lim := &Limit{Max: 3}
	var recs []*pb.Flow
	cfg := DefaultConfig()
	cfg.Limit = lim
	t1 := NewTable(cfg, func(r Record) { recs = append(recs, r.Flow) })
	t2 := NewTable(cfg, func(r Record) { recs = append(recs, r.Flow) })
	t1.Add(udp(sec(0), hostA, 1001, hostB, 53, 10), nil)
	t1.Add(udp(sec(1), hostA, 1002, hostB, 53, 10), nil)
	t1.Add(udp(sec(2), hostA, 1001, hostB, 53, 10), nil) // 1001 active again: 1002 is now the oldest
	t2.Add(udp(sec(3), hostA, 2001, hostB, 53, 10), nil)
	if lim.Open != 3 || len(recs) != 0 {
		t.Fatalf("open %d, %d records", lim.Open, len(recs))
	}
	t1.Add(udp(sec(4), hostA, 1003, hostB, 53, 10), nil)
	if lim.Open != 3 || t1.Evicted != 1 || len(recs) != 1 || recs[0].OrigPort != 1002 || recs[0].EndReason != pb.EndReason_END_EVICTED {
		t.Fatalf("open %d evicted %d records %v", lim.Open, t1.Evicted, recs)
	}
	// A table with no flow of its own cannot evict: one over the bound.
	t3 := NewTable(cfg, func(r Record) { recs = append(recs, r.Flow) })
	t3.Add(udp(sec(5), hostA, 3001, hostB, 53, 10), nil)
	if lim.Open != 4 {
		t.Errorf("open %d, want 4", lim.Open)
	}
	for _, tb := range []*Table{t1, t2, t3} {
		tb.Flush(pb.EndReason_END_EOF)
	}
	var pkts uint64
	for _, f := range recs {
		pkts += f.OrigPkts + f.RespPkts
	}
	if lim.Open != 0 || pkts != 6 {
		t.Errorf("open %d after flush, %d packets in records (want 0, 6)", lim.Open, pkts)
	}
}
