package flow

import (
	"math"
	"os/exec"
	"path/filepath"
	"testing"

	"netwatch/enricher/internal/tsharkread"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestFeaturesByHand checks the distributions of one record against hand
// arithmetic: the originator sends 60, 52 and 152 IP bytes at 0, 0.1 and
// 0.4 s (mean 88, population std sqrt(6176/3)), inter-arrival 0.1 and 0.3 s
// (mean 0.2, std 0.1); the responder one packet (std and inter-arrival 0).
func TestFeaturesByHand(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Features = true
	p1 := tcp(sec(0), hostA, 40000, hostB, 80, syn, 0)
	p1.IpBytes, p1.TcpWindow = 60, 64240
	p2 := tcp(sec(0.05), hostB, 80, hostA, 40000, syn|ack, 0)
	p2.IpBytes, p2.TcpWindow = 60, 65160
	p3 := tcp(sec(0.1), hostA, 40000, hostB, 80, ack, 0)
	p3.IpBytes, p3.TcpWindow = 52, 502
	p4 := tcp(sec(0.4), hostA, 40000, hostB, 80, psh|ack, 100)
	p4.IpBytes = 152
	recs := run(cfg, []*pb.PacketSummary{p1, p2, p3, p4}, eof)
	if len(recs) != 1 {
		t.Fatalf("%d records", len(recs))
	}
	m := recs[0].Features
	want := map[string]float64{
		"duration_s": 0.4, "orig_pkts": 3, "resp_pkts": 1, "orig_ip_bytes": 264, "orig_bytes": 100,
		"orig_pkt_bytes_min": 52, "orig_pkt_bytes_max": 152, "orig_pkt_bytes_mean": 88, "orig_pkt_bytes_std": math.Sqrt(6176.0 / 3),
		"orig_iat_s_min": 0.1, "orig_iat_s_max": 0.3, "orig_iat_s_mean": 0.2, "orig_iat_s_std": 0.1,
		"resp_pkt_bytes_min": 60, "resp_pkt_bytes_max": 60, "resp_pkt_bytes_mean": 60, "resp_pkt_bytes_std": 0,
		"resp_iat_s_min": 0, "resp_iat_s_max": 0, "resp_iat_s_mean": 0, "resp_iat_s_std": 0,
		"orig_syn": 1, "orig_ack": 2, "orig_psh": 1, "orig_fin": 0, "resp_syn": 1, "resp_ack": 1,
		"orig_init_win": 64240, "resp_init_win": 65160, "pkts_per_s": 10, "resp_replied": 1,
	}
	for k, w := range want {
		g, ok := m[k]
		if !ok || math.Abs(g-w) > 1e-9*math.Max(1, math.Abs(w)) {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
}

// TestFeaturesDefined: a 1-packet flow, a 0-duration flow and a flow whose
// time goes backwards have defined values everywhere.
func TestFeaturesDefined(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Features = true
	recs := run(cfg, []*pb.PacketSummary{
		udp(sec(1), hostA, 5000, hostB, 53, 0),
		tcp(sec(2), hostA, 5001, hostB, 80, syn, 0), tcp(sec(2), hostA, 5001, hostB, 80, syn, 0),
		udp(sec(3), hostA, 5002, hostB, 123, 48), udp(sec(2.5), hostA, 5002, hostB, 123, 48),
	}, eof)
	for _, f := range recs {
		finite(t, "crafted", f)
		if f.RespPort == 123 && f.Features["orig_iat_s_min"] != 0 {
			t.Errorf("backwards inter-arrival %v, want 0", f.Features["orig_iat_s_min"])
		}
	}
}

func finite(t *testing.T, where string, f *pb.Flow) {
	t.Helper()
	if len(f.Features) < 40 {
		t.Errorf("%s: %d features", where, len(f.Features))
	}
	for k, v := range f.Features {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			t.Errorf("%s: flow %s %s = %v", where, f.Id, k, v)
		}
	}
	if f.EndNs < f.StartNs {
		t.Errorf("%s: flow %s ends before it starts", where, f.Id)
	}
}

// TestFeaturesEveryCapture runs every shared capture (../shared/data/pcaps
// and its lab/ folder, merged by mergecap into one file so tshark starts
// once: 9 s instead of 50) through a table with features on: no value is
// NaN, Inf or negative, and every packet is in exactly one record. The
// packet summaries come from tshark's fields (an independent decoder),
// outermost IP header; the agent's tunnel handling is not the point here.
func TestFeaturesEveryCapture(t *testing.T) {
	if testing.Short() {
		t.Skip("runs tshark on every shared capture")
	}
	tshark, mergecap := testkit.Tool(t, "tshark"), testkit.Tool(t, "mergecap")
	dir := testkit.Pcaps(t)
	var files []string
	for _, g := range []string{"*.pcap", "*.pcapng", "lab/*.pcap", "lab/*.pcapng"} {
		m, _ := filepath.Glob(filepath.Join(dir, g))
		files = append(files, m...)
	}
	if len(files) < 40 {
		t.Fatalf("%d captures in %s", len(files), dir)
	}
	merged := filepath.Join(t.TempDir(), "all.pcapng")
	if out, err := exec.Command(mergecap, append([]string{"-F", "pcapng", "-w", merged}, files...)...).CombinedOutput(); err != nil {
		t.Fatalf("mergecap: %v %s", err, out)
	}
	pkts, err := tsharkread.Summaries(tshark, merged)
	if err != nil {
		t.Fatal(err)
	}
	if len(pkts) < 100_000 {
		t.Fatalf("%d IP packets in %d captures", len(pkts), len(files))
	}
	cfg := DefaultConfig()
	cfg.Features = true
	var n uint64
	recs := 0
	tb := NewTable(cfg, func(r Record) {
		n += r.Flow.OrigPkts + r.Flow.RespPkts
		recs++
		finite(t, "shared captures", r.Flow)
	})
	for _, p := range pkts {
		tb.Add(p, nil)
	}
	tb.Flush(pb.EndReason_END_EOF)
	if n != uint64(len(pkts))-tb.Skipped || recs < 1000 {
		t.Errorf("%d packets in %d records, %d summaries, %d skipped", n, recs, len(pkts), tb.Skipped)
	}
}
