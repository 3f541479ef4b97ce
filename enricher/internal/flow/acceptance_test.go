package flow

import (
	"net/netip"
	"testing"
	"time"

	"netwatch/schema/pb"
)

// Issue 4's acceptance cases on the flow table, with hand counts.

// TestUDP400sActive300Idle60: a UDP flow of 400 s, one packet every 5 s
// (t = 0, 5, ..., 400: 81 packets of 128 IP bytes), under a 300 s active and
// 60 s idle timeout gives two records: the first covers [0 s, 300 s) (60
// packets, the last at 295 s) and is interim; the packet at 300 s starts the
// second (21 packets, 300..400 s), which the idle timeout ends at 460 s.
func TestUDP400sActive300Idle60(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Active, cfg.IdleUDP = 300*time.Second, 60*time.Second
	var pkts []*pb.PacketSummary
	for s := 0; s <= 400; s += 5 {
		pkts = append(pkts, udp(sec(float64(s)), hostA, 50000, hostB, 5004, 100))
	}
	recs := run(cfg, pkts, func(tb *Table) {
		tb.Advance(sec(459.9))
		if tb.Len() != 1 {
			t.Error("flow ended before its idle timeout")
		}
		tb.Advance(sec(460))
		if tb.Len() != 0 {
			t.Error("flow still open after its idle timeout")
		}
	})
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 50000, respPort: 5004, oPkts: 60, oIP: 60 * 128, oBytes: 6000,
		reason: pb.EndReason_END_ACTIVE, guessed: true, start: sec(0), end: sec(295)})
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 50000, respPort: 5004, oPkts: 21, oIP: 21 * 128, oBytes: 2100,
		reason: pb.EndReason_END_IDLE, final: true, guessed: true, recordIndex: 1, start: sec(300), end: sec(400)})
	if d := recs[1].StartNs - recs[0].StartNs; d != int64(300*time.Second) {
		t.Errorf("second record starts %v after the first, want 300 s", time.Duration(d))
	}
	for _, f := range recs {
		if f.EndNs-f.StartNs >= int64(cfg.Active) || f.FlowStartNs != sec(0) {
			t.Errorf("record %d spans %v, flow start %d", f.RecordIndex, time.Duration(f.EndNs-f.StartNs), f.FlowStartNs)
		}
	}
}

// TestTCPSilence11m: a TCP connection silent for 11 minutes under the 5 min
// TCP idle timeout gives two records whose sums are the connection's
// totals: the first (handshake and one exchange) ends idle, the second
// (another exchange and the close) starts mid-connection, its direction
// guessed from the ports.
func TestTCPSilence11m(t *testing.T) {
	s := func(m, x float64) int64 { return sec(60*m + x) }
	pkts := []*pb.PacketSummary{
		tcp(s(0, 0), hostA, 40000, hostB, 22, syn, 0),
		tcp(s(0, 0.01), hostB, 22, hostA, 40000, syn|ack, 0),
		tcp(s(0, 0.02), hostA, 40000, hostB, 22, ack, 0),
		tcp(s(0, 0.03), hostA, 40000, hostB, 22, psh|ack, 50),
		tcp(s(0, 0.04), hostB, 22, hostA, 40000, psh|ack, 500),
		// 11 minutes of silence
		tcp(s(11, 0.04), hostA, 40000, hostB, 22, psh|ack, 60),
		tcp(s(11, 0.05), hostB, 22, hostA, 40000, psh|ack, 700),
		tcp(s(11, 0.06), hostA, 40000, hostB, 22, fin|ack, 0),
		tcp(s(11, 0.07), hostB, 22, hostA, 40000, fin|ack, 0),
		tcp(s(11, 0.08), hostA, 40000, hostB, 22, ack, 0),
	}
	recs := run(DefaultConfig(), pkts, func(tb *Table) { tb.Advance(s(11, 2.08)) })
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	// orig: SYN 40, ACK 40, 90; resp: SYN-ACK 40, 540.
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40000, respPort: 22, oPkts: 3, oIP: 170, oBytes: 50,
		rPkts: 2, rIP: 580, rBytes: 500, reason: pb.EndReason_END_IDLE, final: true, state: "S1", history: "ShADd",
		start: s(0, 0), end: s(0, 0.04)})
	// orig: 100, FIN 40, ACK 40; resp: 740, FIN 40.
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 40000, respPort: 22, oPkts: 3, oIP: 180, oBytes: 60,
		rPkts: 2, rIP: 780, rBytes: 700, reason: pb.EndReason_END_FIN, final: true, guessed: true, state: "OTH",
		start: s(11, 0.04), end: s(11, 0.08)})
	var op, oip, ob, rp, rip, rb uint64
	for _, f := range recs {
		op, oip, ob = op+f.OrigPkts, oip+f.OrigIpBytes, ob+f.OrigBytes
		rp, rip, rb = rp+f.RespPkts, rip+f.RespIpBytes, rb+f.RespBytes
	}
	// The connection's totals, from the packet list: 10 packets, 110 + 1200 payload bytes.
	var tp, tip, tb uint64
	for _, p := range pkts {
		tp, tip, tb = tp+1, tip+uint64(p.IpBytes), tb+uint64(p.PayloadBytes)
	}
	if op+rp != tp || oip+rip != tip || ob+rb != tb || tp != 10 || tb != 1310 {
		t.Errorf("sums %d pkts %d ip bytes %d payload; connection %d %d %d", op+rp, oip+rip, ob+rb, tp, tip, tb)
	}
}

// TestSwappedSYNTimestamps: the SYN-ACK stamped before the SYN (two capture
// queues), in either capture order: the originator is still the SYN's
// sender (not guessed), the record starts at the earliest time, its
// duration is not negative, and the backwards step is counted.
func TestSwappedSYNTimestamps(t *testing.T) {
	synP := tcp(sec(0.010), hostB, 40000, hostA, 443, syn, 0) // B is the client; A sorts first in the key
	synAck := tcp(sec(0.005), hostA, 443, hostB, 40000, syn|ack, 0)
	last := tcp(sec(0.020), hostB, 40000, hostA, 443, ack, 0)
	for _, c := range []struct {
		name      string
		pkts      []*pb.PacketSummary
		backwards uint64
		history   string
	}{
		{"syn first", []*pb.PacketSummary{synP, synAck, last}, 1, "ShA"},
		{"syn-ack first", []*pb.PacketSummary{synAck, synP, last}, 0, "^hSA"},
	} {
		var recs []*pb.Flow
		cfg := DefaultConfig()
		cfg.Sensor = "s1"
		tb := NewTable(cfg, func(r Record) { recs = append(recs, r.Flow) })
		for _, p := range c.pkts {
			tb.Add(p, nil)
		}
		tb.Flush(pb.EndReason_END_EOF)
		if len(recs) != 1 {
			t.Fatalf("%s: %d records", c.name, len(recs))
		}
		f := recs[0]
		check(t, 0, f, want{origAddr: hostB, origPort: 40000, respPort: 443, oPkts: 2, oIP: 80, rPkts: 1, rIP: 40,
			reason: pb.EndReason_END_EOF, final: true, state: "S1", history: c.history, start: sec(0.005), end: sec(0.020)})
		if f.EndNs < f.StartNs || f.FlowStartNs != sec(0.005) {
			t.Errorf("%s: start %d end %d flow start %d", c.name, f.StartNs, f.EndNs, f.FlowStartNs)
		}
		if tb.Backwards != c.backwards {
			t.Errorf("%s: backwards %d, want %d", c.name, tb.Backwards, c.backwards)
		}
	}
}

// TestMidStream: a capture that starts inside a TCP connection (the
// server's data first, then the client's ACKs and the close) and inside a
// UDP exchange: each is one flow with both directions, the client (higher,
// ephemeral port) as the guessed originator.
func TestMidStream(t *testing.T) {
	recs := run(DefaultConfig(), []*pb.PacketSummary{
		tcp(sec(0), hostB, 443, hostA, 51000, psh|ack, 1400),
		tcp(sec(0.001), hostB, 443, hostA, 51000, psh|ack, 1400),
		tcp(sec(0.002), hostA, 51000, hostB, 443, ack, 0),
		tcp(sec(0.010), hostA, 51000, hostB, 443, fin|ack, 0),
		tcp(sec(0.011), hostB, 443, hostA, 51000, fin|ack, 0),
		udp(sec(0.5), hostB, 123, hostA, 51001, 48),
		udp(sec(0.6), hostA, 51001, hostB, 123, 48),
	}, eof)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 51000, respPort: 443, oPkts: 2, oIP: 80, rPkts: 3, rIP: 2*1440 + 40,
		rBytes: 2800, reason: pb.EndReason_END_EOF, final: true, guessed: true, state: "OTH", history: "^dAFf"})
	check(t, 1, recs[1], want{origAddr: hostA, origPort: 51001, respPort: 123, oPkts: 1, oIP: 76, oBytes: 48,
		rPkts: 1, rIP: 76, rBytes: 48, reason: pb.EndReason_END_EOF, final: true, guessed: true, state: "SF"})
}

// TestOneDirection: an asymmetric mirror that sees only the client's
// packets, or only the server's: one flow each, the originator from the
// SYN (or the SYN-ACK's receiver), the missing direction zero.
func TestOneDirection(t *testing.T) {
	recs := run(DefaultConfig(), []*pb.PacketSummary{
		tcp(sec(0), hostA, 40000, hostB, 80, syn, 0),
		tcp(sec(0.02), hostA, 40000, hostB, 80, ack, 0),
		tcp(sec(0.03), hostA, 40000, hostB, 80, psh|ack, 100),
		tcp(sec(0.05), hostA, 40000, hostB, 80, fin|ack, 0),
		tcp(sec(0.07), hostA, 40000, hostB, 80, ack, 0),
	}, eof)
	if len(recs) != 1 {
		t.Fatalf("client side: %d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40000, respPort: 80, oPkts: 5, oIP: 300, oBytes: 100,
		reason: pb.EndReason_END_EOF, final: true, state: "SH", history: "SADF"})
	recs = run(DefaultConfig(), []*pb.PacketSummary{
		tcp(sec(0.01), hostB, 80, hostA, 40000, syn|ack, 0),
		tcp(sec(0.04), hostB, 80, hostA, 40000, psh|ack, 1000),
		tcp(sec(0.06), hostB, 80, hostA, 40000, fin|ack, 0),
	}, eof)
	if len(recs) != 1 {
		t.Fatalf("server side: %d records", len(recs))
	}
	check(t, 0, recs[0], want{origAddr: hostA, origPort: 40000, respPort: 80, rPkts: 3, rIP: 1120, rBytes: 1000,
		reason: pb.EndReason_END_EOF, final: true, state: "SHR", history: "^hdf"})
}

// TestOriginatorLocalNets: when the ports do not tell (both dynamic), the
// local end is the guessed originator, whichever sent first; with a
// service port the port decides; without local networks the first sender.
func TestOriginatorLocalNets(t *testing.T) {
	remote := []byte{198, 51, 100, 7}
	cfg := DefaultConfig()
	cfg.LocalNets = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	for _, c := range []struct {
		name     string
		cfg      Config
		p        *pb.PacketSummary
		wantOrig []byte
	}{
		{"remote first, dynamic ports", cfg, udp(sec(0), remote, 51000, hostA, 60000, 10), hostA},
		{"local first, dynamic ports", cfg, udp(sec(0), hostA, 60000, remote, 51000, 10), hostA},
		{"remote first, service port on remote", cfg, udp(sec(0), remote, 53, hostA, 60000, 10), hostA},
		{"remote first, service port on local", cfg, udp(sec(0), remote, 60000, hostA, 53, 10), remote},
		{"no local networks", DefaultConfig(), udp(sec(0), remote, 51000, hostA, 60000, 10), remote},
		{"both local", cfg, udp(sec(0), hostB, 51000, hostA, 60000, 10), hostB},
	} {
		recs := run(c.cfg, []*pb.PacketSummary{c.p}, eof)
		if len(recs) != 1 || string(recs[0].OrigAddr) != string(c.wantOrig) || !recs[0].DirectionGuessed {
			t.Errorf("%s: orig %v guessed %v, want %v", c.name, recs[0].OrigAddr, recs[0].DirectionGuessed, c.wantOrig)
		}
	}
}
