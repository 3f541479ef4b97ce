package flow

import (
	"net/netip"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/communityid"
	"netwatch/schema/pb"
)

const (
	fin = flagFIN
	syn = flagSYN
	rst = flagRST
	psh = 0x08
	ack = flagACK
)

var (
	hostA = netip.MustParseAddr("10.0.0.1").AsSlice()
	hostB = netip.MustParseAddr("10.0.0.2").AsSlice()
	t0    = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()
)

func sec(s float64) int64 { return t0 + int64(s*1e9) }

// tcp builds a TCP summary; ipBytes = 40 + payload (IPv4 + TCP without options).
func tcp(ts int64, src []byte, sp uint32, dst []byte, dp uint32, flags uint32, payload uint32) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: ts, SrcAddr: src, DstAddr: dst, SrcPort: sp, DstPort: dp, Proto: 6,
		IpBytes: 40 + payload, PayloadBytes: payload, TcpFlags: flags}
}

// udp builds a UDP summary; ipBytes = 28 + payload.
func udp(ts int64, src []byte, sp uint32, dst []byte, dp uint32, payload uint32) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: ts, SrcAddr: src, DstAddr: dst, SrcPort: sp, DstPort: dp, Proto: 17,
		IpBytes: 28 + payload, PayloadBytes: payload}
}

func icmp(ts int64, src, dst []byte, typ, code uint32) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: ts, SrcAddr: src, DstAddr: dst, Proto: 1, IpBytes: 84, PayloadBytes: 56,
		IcmpType: typ, IcmpCode: code}
}

type collector struct{ recs []*pb.Flow }

func run(cfg Config, pkts []*pb.PacketSummary, end func(*Table)) []*pb.Flow {
	var c collector
	cfg.Sensor = "s1"
	t := NewTable(cfg, func(r Record) { c.recs = append(c.recs, r.Flow) })
	for _, p := range pkts {
		t.Add(p, nil)
	}
	if end != nil {
		end(t)
	}
	return c.recs
}

func eof(t *Table) { t.Flush(pb.EndReason_END_EOF) }

type want struct {
	origAddr           []byte
	origPort, respPort uint32
	oPkts, oIP, oBytes uint64
	rPkts, rIP, rBytes uint64
	reason             pb.EndReason
	final, guessed     bool
	state, history     string
	recordIndex        uint32
	start, end         int64
}

func check(t *testing.T, i int, f *pb.Flow, w want) {
	t.Helper()
	got := want{f.OrigAddr, f.OrigPort, f.RespPort, f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.RespPkts,
		f.RespIpBytes, f.RespBytes, f.EndReason, f.Final, f.DirectionGuessed, f.ConnState, f.History,
		f.RecordIndex, f.StartNs, f.EndNs}
	if w.state == "" {
		got.state = ""
	}
	if w.history == "" {
		got.history = ""
	}
	if w.start == 0 {
		got.start, got.end = 0, 0
	}
	if string(got.origAddr) != string(w.origAddr) || got.origPort != w.origPort || got.respPort != w.respPort ||
		got.oPkts != w.oPkts || got.oIP != w.oIP || got.oBytes != w.oBytes || got.rPkts != w.rPkts ||
		got.rIP != w.rIP || got.rBytes != w.rBytes || got.reason != w.reason || got.final != w.final ||
		got.guessed != w.guessed || got.state != w.state || got.history != w.history ||
		got.recordIndex != w.recordIndex || got.start != w.start || got.end != w.end {
		t.Errorf("record %d:\n got %+v\nwant %+v", i, got, w)
	}
	wantID := schema.FlowID(f.Sensor, f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort, f.Vlan,
		f.InnerVlan, f.TunnelId, f.FlowStartNs, f.RecordIndex)
	if f.Id != wantID {
		t.Errorf("record %d: id %s, want %s", i, f.Id, wantID)
	}
}

// handshake is a TCP connection A:40000 → B:80 with a 3-way handshake,
// 100 bytes up, 1000 down, FIN both ways and the last ACK (8 packets).
func handshake() []*pb.PacketSummary {
	return []*pb.PacketSummary{
		tcp(sec(0), hostA, 40000, hostB, 80, syn, 0),
		tcp(sec(0.01), hostB, 80, hostA, 40000, syn|ack, 0),
		tcp(sec(0.02), hostA, 40000, hostB, 80, ack, 0),
		tcp(sec(0.03), hostA, 40000, hostB, 80, psh|ack, 100),
		tcp(sec(0.04), hostB, 80, hostA, 40000, psh|ack, 1000),
		tcp(sec(0.05), hostA, 40000, hostB, 80, fin|ack, 0),
		tcp(sec(0.06), hostB, 80, hostA, 40000, fin|ack, 0),
		tcp(sec(0.07), hostA, 40000, hostB, 80, ack, 0),
	}
}

func TestTCPHandshakeFIN(t *testing.T) {
	cfg := DefaultConfig() // close linger 2 s absorbs the last ACK
	recs := run(cfg, handshake(), func(tb *Table) { tb.Advance(sec(2.06)) })
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	// orig: SYN 40, ACK 40, data 140, FIN 40, ACK 40 = 5 pkts, 300 bytes; resp: 40+1040+40.
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40000, respPort: 80, oPkts: 5, oIP: 300, oBytes: 100,
		rPkts: 3, rIP: 1120, rBytes: 1000, reason: pb.EndReason_END_FIN, final: true, state: "SF",
		history: "ShADdFf", start: sec(0), end: sec(0.07)})
	f := recs[0]
	if f.OrigTcpFlags != syn|ack|psh|fin || f.RespTcpFlags != syn|ack|psh|fin {
		t.Errorf("flags %#x %#x", f.OrigTcpFlags, f.RespTcpFlags)
	}
	if f.App != "http" || f.CommunityId == "" || f.FlowStartNs != sec(0) {
		t.Errorf("app %q cid %q start %d", f.App, f.CommunityId, f.FlowStartNs)
	}
}

func TestTCPFINAtOnce(t *testing.T) {
	cfg := DefaultConfig()
	cfg.CloseLinger = 0
	recs := run(cfg, handshake(), eof)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40000, respPort: 80, oPkts: 4, oIP: 260, oBytes: 100,
		rPkts: 3, rIP: 1120, rBytes: 1000, reason: pb.EndReason_END_FIN, final: true, state: "SF"})
	// The last ACK alone: mid-connection, responder guessed from port 80.
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 40000, respPort: 80, oPkts: 1, oIP: 40,
		reason: pb.EndReason_END_EOF, final: true, guessed: true, state: "OTH", history: "A"})
}

func TestTCPRejected(t *testing.T) {
	cfg := DefaultConfig()
	recs := run(cfg, []*pb.PacketSummary{
		tcp(sec(0), hostA, 40001, hostB, 22, syn, 0),
		tcp(sec(0.001), hostB, 22, hostA, 40001, rst|ack, 0),
	}, func(tb *Table) { tb.Advance(sec(5)) })
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40001, respPort: 22, oPkts: 1, oIP: 40, rPkts: 1, rIP: 40,
		reason: pb.EndReason_END_RST, final: true, state: "REJ", history: "Sr"})
}

func TestTCPMidConnection(t *testing.T) {
	recs := run(DefaultConfig(), []*pb.PacketSummary{
		tcp(sec(0), hostB, 443, hostA, 50000, psh|ack, 500),
		tcp(sec(1), hostA, 50000, hostB, 443, ack, 0),
	}, eof)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 50000, respPort: 443, oPkts: 1, oIP: 40, rPkts: 1, rIP: 540,
		rBytes: 500, reason: pb.EndReason_END_EOF, final: true, guessed: true, state: "OTH", history: "^dA"})
}

func TestTCPSynOnlyIdle(t *testing.T) {
	// Three SYN retransmissions, no answer: S0, ended by the 5 min TCP idle
	// timeout counted from the last SYN (at 3 s). Features on: they are
	// checked below.
	cfg := DefaultConfig()
	cfg.Features = true
	recs := run(cfg, []*pb.PacketSummary{
		tcp(sec(0), hostA, 40002, hostB, 8080, syn, 0),
		tcp(sec(1), hostA, 40002, hostB, 8080, syn, 0),
		tcp(sec(3), hostA, 40002, hostB, 8080, syn, 0),
	}, func(tb *Table) {
		tb.Advance(sec(302.9))
		if tb.Len() != 1 {
			t.Errorf("flow ended before its idle timeout")
		}
		tb.Advance(sec(303))
	})
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40002, respPort: 8080, oPkts: 3, oIP: 120,
		reason: pb.EndReason_END_IDLE, final: true, state: "S0", history: "S", start: sec(0), end: sec(3)})
	if recs[0].Features["syn_only"] != 1 {
		t.Errorf("features %v", recs[0].Features)
	}
}

func TestUDPDNS(t *testing.T) {
	dns := netip.MustParseAddr("8.8.8.8").AsSlice()
	q := udp(sec(0), hostA, 53000, dns, 53, 32)
	q.DnsQuery, q.DnsQtype = "example.com", 16 // TXT
	r := udp(sec(0.02), dns, 53, hostA, 53000, 92)
	r.DnsQuery, r.DnsQtype, r.DnsResponse, r.DnsRcode = "example.com", 16, true, 3 // NXDOMAIN
	cfg := DefaultConfig()
	cfg.LocalNets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	recs := run(cfg, []*pb.PacketSummary{r, q}, eof) // reply first: still ordered by port
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 53000, respPort: 53, oPkts: 1, oIP: 60, oBytes: 32,
		rPkts: 1, rIP: 120, rBytes: 92, reason: pb.EndReason_END_EOF, final: true, guessed: true, state: "SF"})
	if f := recs[0]; f.App != "dns" || f.ServerName != "example.com" || f.Direction != "outbound" {
		t.Errorf("app %q server %q direction %q", f.App, f.ServerName, f.Direction)
	}
	if f := recs[0]; f.DnsQtype != 16 || f.DnsRcode != 3 || !f.DnsResponded {
		t.Errorf("dns qtype %d rcode %d responded %v, want 16, 3, true", f.DnsQtype, f.DnsRcode, f.DnsResponded)
	}
	// a query without an answer: no rcode
	recs = run(cfg, []*pb.PacketSummary{q}, eof)
	if f := recs[0]; f.DnsQtype != 16 || f.DnsRcode != 0 || f.DnsResponded {
		t.Errorf("unanswered: qtype %d rcode %d responded %v, want 16, 0, false", f.DnsQtype, f.DnsRcode, f.DnsResponded)
	}
}

func TestICMPEcho(t *testing.T) {
	a := netip.MustParseAddr("192.168.0.89").AsSlice()
	b := netip.MustParseAddr("192.168.0.1").AsSlice()
	recs := run(DefaultConfig(), []*pb.PacketSummary{
		icmp(sec(0), a, b, 8, 0),
		icmp(sec(0.001), b, a, 0, 0),
		icmp(sec(1), a, b, 8, 0),
		icmp(sec(1.001), b, a, 0, 0),
		icmp(sec(2), b, a, 3, 1), // host unreachable: one-way, its own flow
	}, eof)
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: a, oPkts: 2, oIP: 168, oBytes: 112, rPkts: 2, rIP: 168, rBytes: 112,
		reason: pb.EndReason_END_EOF, final: true})
	if f := recs[0]; f.IcmpType != 8 || f.IcmpCode != 0 || f.CommunityId != "1:X0snYXpgwiv9TZtqg64sgzUn6Dk=" {
		t.Errorf("type %d code %d cid %s", f.IcmpType, f.IcmpCode, f.CommunityId)
	}
	check(t, 1, recs[1], want{origAddr: b, oPkts: 1, oIP: 84, oBytes: 56, reason: pb.EndReason_END_EOF, final: true})
	if f := recs[1]; f.IcmpType != 3 || f.IcmpCode != 1 {
		t.Errorf("unreachable type %d code %d", f.IcmpType, f.IcmpCode)
	}
}

func TestIdleSplit(t *testing.T) {
	recs := run(DefaultConfig(), []*pb.PacketSummary{
		udp(sec(0), hostA, 50000, hostB, 123, 48),
		udp(sec(10), hostB, 123, hostA, 50000, 48),
		udp(sec(100), hostA, 50000, hostB, 123, 48), // 90 s after the last: UDP idle 60 s passed
	}, eof)
	if len(recs) != 2 {
		t.Fatalf("%d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 50000, respPort: 123, oPkts: 1, oIP: 76, oBytes: 48,
		rPkts: 1, rIP: 76, rBytes: 48, reason: pb.EndReason_END_IDLE, final: true, guessed: true, start: sec(0), end: sec(10)})
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 50000, respPort: 123, oPkts: 1, oIP: 76, oBytes: 48,
		reason: pb.EndReason_END_EOF, final: true, guessed: true, start: sec(100), end: sec(100)})
	if recs[0].Id == recs[1].Id {
		t.Error("split flows share an id")
	}
}

func TestActiveTimeout(t *testing.T) {
	// 25 packets every 30 s from 0 to 720 s, alternating directions; UDP
	// idle 1 min never fires, active 5 min cuts records at 300 and 600 s.
	var pkts []*pb.PacketSummary
	for i := range 25 {
		if i%2 == 0 {
			pkts = append(pkts, udp(sec(float64(30*i)), hostA, 50000, hostB, 5004, 100))
		} else {
			pkts = append(pkts, udp(sec(float64(30*i)), hostB, 5004, hostA, 50000, 200))
		}
	}
	recs := run(DefaultConfig(), pkts, eof)
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3", len(recs))
	}
	// Record 0: packets 0..9 (t 0..270): 5 orig, 5 resp. Record 1: 10..19. Record 2: 20..24: 3 orig, 2 resp.
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 50000, respPort: 5004, oPkts: 5, oIP: 640, oBytes: 500,
		rPkts: 5, rIP: 1140, rBytes: 1000, reason: pb.EndReason_END_ACTIVE, guessed: true, recordIndex: 0, start: sec(0), end: sec(270)})
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 50000, respPort: 5004, oPkts: 5, oIP: 640, oBytes: 500,
		rPkts: 5, rIP: 1140, rBytes: 1000, reason: pb.EndReason_END_ACTIVE, guessed: true, recordIndex: 1, start: sec(300), end: sec(570)})
	check(t, 2, recs[2], want{origAddr: hostA, origPort: 50000, respPort: 5004, oPkts: 3, oIP: 384, oBytes: 300,
		rPkts: 2, rIP: 456, rBytes: 400, reason: pb.EndReason_END_EOF, final: true, guessed: true, recordIndex: 2, start: sec(600), end: sec(720)})
	var sum uint64
	ids := map[string]bool{}
	for _, f := range recs {
		sum += f.OrigPkts + f.RespPkts
		ids[f.Id] = true
		if f.FlowStartNs != sec(0) {
			t.Errorf("flow_start_ns %d", f.FlowStartNs)
		}
	}
	if sum != 25 || len(ids) != 3 {
		t.Errorf("sum of packets %d (want 25), %d distinct ids", sum, len(ids))
	}
}

func TestVLANSeparation(t *testing.T) {
	p1 := udp(sec(0), hostA, 50000, hostB, 53, 30)
	p1.Vlan = 10
	p2 := udp(sec(0), hostA, 50000, hostB, 53, 30)
	p2.Vlan = 20
	p3 := udp(sec(1), hostB, 53, hostA, 50000, 30)
	p3.Vlan = 10
	recs := run(DefaultConfig(), []*pb.PacketSummary{p1, p2, p3}, eof)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	byVLAN := map[uint32]*pb.Flow{}
	for _, f := range recs {
		byVLAN[f.Vlan] = f
	}
	if f := byVLAN[10]; f == nil || f.OrigPkts != 1 || f.RespPkts != 1 {
		t.Errorf("vlan 10: %v", f)
	}
	if f := byVLAN[20]; f == nil || f.OrigPkts != 1 || f.RespPkts != 0 {
		t.Errorf("vlan 20: %v", f)
	}
	if byVLAN[10].Id == byVLAN[20].Id {
		t.Error("same id across VLANs")
	}
}

func TestPortReuseAfterClose(t *testing.T) {
	pkts := handshake()
	pkts = append(pkts, tcp(sec(0.5), hostA, 40000, hostB, 80, syn, 0)) // within the linger: a new connection
	recs := run(DefaultConfig(), pkts, eof)
	if len(recs) != 2 || recs[0].EndReason != pb.EndReason_END_FIN || recs[1].OrigPkts != 1 || recs[1].ConnState != "S0" {
		t.Fatalf("records %v", recs)
	}
}

type countRef struct{ n int }

func (r *countRef) Retain() { r.n++ }

func TestRefs(t *testing.T) {
	m1, m2 := &countRef{}, &countRef{}
	var got []Record
	tb := NewTable(DefaultConfig(), func(r Record) { got = append(got, r) })
	tb.Add(udp(sec(0), hostA, 50000, hostB, 53, 10), m1)
	tb.Add(udp(sec(0), hostA, 50001, hostB, 53, 10), m1)
	tb.Add(udp(sec(1), hostA, 50000, hostB, 53, 10), m1)
	tb.Add(udp(sec(2), hostA, 50000, hostB, 53, 10), m2)
	tb.Flush(pb.EndReason_END_EOF)
	if m1.n != 2 || m2.n != 1 {
		t.Errorf("retains m1 %d m2 %d, want 2 1", m1.n, m2.n)
	}
	var held int
	for _, r := range got {
		held += len(r.Refs)
	}
	if held != 3 {
		t.Errorf("%d refs in records, want 3", held)
	}
}

func TestDeterministic(t *testing.T) {
	var pkts []*pb.PacketSummary
	for i := range 200 {
		pkts = append(pkts, udp(sec(float64(i)), hostA, uint32(40000+i%7), hostB, 53, 10))
	}
	pkts = append(pkts, handshake()...)
	a := run(DefaultConfig(), pkts, eof)
	b := run(DefaultConfig(), pkts, eof)
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d vs %d records", len(a), len(b))
	}
	for i := range a {
		if a[i].Id != b[i].Id {
			t.Fatalf("record %d: %s vs %s", i, a[i].Id, b[i].Id)
		}
	}
}

// TestFeaturesOff checks the default: no features map.
func TestFeaturesOff(t *testing.T) {
	recs := run(DefaultConfig(), handshake(), eof)
	if len(recs) == 0 || recs[0].Features != nil {
		t.Fatalf("features %v in %d records, want none", recs[0].Features, len(recs))
	}
}

// TestFlowIDMatchesSchema checks the table's allocation-free id against
// schema.FlowID (the definition) and the record's Community ID against
// communityid.Packet of its first packet, over IPv4 and IPv6, ICMP and
// interim records.
func TestFlowIDMatchesSchema(t *testing.T) {
	v6a := netip.MustParseAddr("2001:db8::1").AsSlice()
	v6b := netip.MustParseAddr("2001:db8::2").AsSlice()
	first := []*pb.PacketSummary{
		tcp(sec(0), hostA, 40000, hostB, 443, syn, 0),
		tcp(sec(0), v6b, 443, v6a, 40000, syn|ack, 0),
		icmp(sec(0), hostB, hostA, 0, 0),
		icmp(sec(0), hostA, hostB, 3, 1),
		{TsNs: sec(0), SrcAddr: hostA, DstAddr: hostB, Proto: 47, IpBytes: 100, Vlan: 7, InnerVlan: 9, TunnelId: 5, Tunnel: pb.Tunnel_TUNNEL_VXLAN},
	}
	pkts := append([]*pb.PacketSummary(nil), first...)
	pkts = append(pkts, tcp(sec(400), hostA, 40000, hostB, 443, ack, 10)) // active timeout: an interim record
	for _, seed := range []uint16{0, 1} {
		cfg := DefaultConfig()
		cfg.Seed = seed
		cfg.Sensor = "sensor-1"
		var recs []*pb.Flow
		tb := NewTable(cfg, func(r Record) { recs = append(recs, r.Flow) })
		for _, p := range pkts {
			tb.Add(p, nil)
		}
		tb.Flush(pb.EndReason_END_EOF)
		if len(recs) != len(first)+1 {
			t.Fatalf("%d records", len(recs))
		}
		cids := map[string]bool{}
		for _, p := range first {
			cids[communityid.Packet(seed, uint8(p.Proto), p.SrcAddr, p.DstAddr, uint16(p.SrcPort), uint16(p.DstPort),
				uint8(p.IcmpType), uint8(p.IcmpCode))] = true
		}
		for i, f := range recs {
			want := schema.FlowID(f.Sensor, f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort,
				f.Vlan, f.InnerVlan, f.TunnelId, f.FlowStartNs, f.RecordIndex)
			if f.Id != want {
				t.Errorf("seed %d record %d: id %s, schema.FlowID %s", seed, i, f.Id, want)
			}
			if !cids[f.CommunityId] {
				t.Errorf("seed %d record %d: community id %s not among the packets' %v", seed, i, f.CommunityId, cids)
			}
		}
	}
}
