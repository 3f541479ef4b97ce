package stage

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// benchPacketBatches returns the bench capture (BENCH_PCAP, default
// .cache/bench.pcap of the repository, built by bench/bench.sh with
// make-bench-pcap) as PacketBatches of 1,024 summaries of its TCP, UDP,
// ICMP and ICMPv6 packets, from tshark's fields (outer header), and the
// number of summaries. The marshalled batches are cached in the system's
// temporary directory by capture size and time.
func benchPacketBatches(b *testing.B) ([][]byte, int) {
	pcap := os.Getenv("BENCH_PCAP")
	if pcap == "" {
		pcap = filepath.Join(testkit.Root(b), ".cache", "bench.pcap")
	}
	fi, err := os.Stat(pcap)
	if err != nil {
		testkit.Unavailable(b, "bench capture %s (bench/bench.sh builds it): %v", pcap, err)
	}
	cache := filepath.Join(os.TempDir(), "netwatch-detector-live-"+strconv.FormatInt(fi.Size(), 10)+"-"+strconv.FormatInt(fi.ModTime().Unix(), 10)+".pb")
	if data, err := os.ReadFile(cache); err == nil {
		var set pb.PacketBatch
		if proto.Unmarshal(data, &set) == nil && len(set.Packets) > 0 {
			return batchesOf(b, set.Packets), len(set.Packets)
		}
	}
	pkts := tsharkSummaries(b, pcap)
	if data, err := proto.Marshal(&pb.PacketBatch{Packets: pkts}); err == nil {
		_ = os.WriteFile(cache, data, 0o644)
	}
	return batchesOf(b, pkts), len(pkts)
}

// tsharkSummaries returns the TCP, UDP, ICMP and ICMPv6 packets of a
// capture as packet summaries, from tshark's fields (outer header, -E
// occurrence=f: an ICMP error is ICMP, not the header it quotes; payload
// tcp.len or udp.length - 8).
func tsharkSummaries(t testing.TB, pcap string) []*pb.PacketSummary {
	t.Helper()
	cmd := exec.Command(testkit.Tool(t, "tshark"), "-r", pcap, "-n", "-Y", "tcp || udp || icmp || icmpv6", "-T", "fields",
		"-E", "separator=\t", "-E", "occurrence=f", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst",
		"-e", "ipv6.src", "-e", "ipv6.dst", "-e", "icmp.type", "-e", "icmpv6.type", "-e", "tcp.srcport", "-e", "tcp.dstport",
		"-e", "tcp.flags", "-e", "tcp.len", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.length")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	num := func(s string) uint32 {
		v, _ := strconv.ParseUint(s, 0, 32)
		return uint32(v)
	}
	var pkts []*pb.PacketSummary
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		ts, _ := strconv.ParseFloat(c[0], 64)
		sa, da := c[1], c[2]
		if sa == "" {
			sa, da = c[3], c[4]
		}
		src, err1 := netip.ParseAddr(sa)
		dst, err2 := netip.ParseAddr(da)
		if err1 != nil || err2 != nil {
			continue
		}
		p := &pb.PacketSummary{TsNs: int64(ts * 1e9), SrcAddr: src.AsSlice(), DstAddr: dst.AsSlice(), Ttl: 64}
		switch {
		case c[5] != "":
			p.Proto, p.IcmpType = 1, num(c[5])
		case c[6] != "":
			p.Proto, p.IcmpType = 58, num(c[6])
		case c[7] != "":
			p.Proto, p.SrcPort, p.DstPort, p.TcpFlags, p.PayloadBytes = 6, num(c[7]), num(c[8]), num(c[9]), num(c[10])
		case c[11] != "":
			p.Proto, p.SrcPort, p.DstPort = 17, num(c[11]), num(c[12])
			if n := num(c[13]); n >= 8 {
				p.PayloadBytes = n - 8
			}
		}
		pkts = append(pkts, p)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tshark %s: %v", pcap, err)
	}
	return pkts
}

func batchesOf(b testing.TB, pkts []*pb.PacketSummary) [][]byte {
	var out [][]byte
	for i := 0; i < len(pkts); i += 1024 {
		data, err := proto.Marshal(&pb.PacketBatch{Sensor: "bench", Boot: "b", Seq: uint64(len(out) + 1), Packets: pkts[i:min(i+1024, len(pkts))]})
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// BenchmarkHandleARP: the detector-arp consumer's handler (HandleARP: ARP
// rule, protowire reading of fields 1-10 of each summary, and the live
// rules icmp_flood, syn_flood, udp_flood, portscan, hostsweep) on the
// bench capture's packets, batches of 1,024, alerts published to an
// in-process JetStream. pkts/core-s is packet summaries per CPU second of
// the whole process: whether one core keeps up with a sensor's packet
// rate. The stage starts afresh at the end of the capture.
func BenchmarkHandleARP(b *testing.B) { benchHandleARP(b, false) }

// BenchmarkHandleARPGroup is BenchmarkHandleARP for one member of two in
// group mode (README "Scaling"): it holds 8 of the 16 partitions of each
// group, and every packet's source and destination partition is computed
// (schema.GroupPartition) to pick the engines that count it.
func BenchmarkHandleARPGroup(b *testing.B) { benchHandleARP(b, true) }

func benchHandleARP(b *testing.B, group bool) {
	batches, npkts := benchPacketBatches(b)
	_, _, js := testkit.JetStream(b)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newStage := func() *Stage {
		cfg := Config{Rules: rules.DefaultConfig()}
		if group {
			cfg.Group = Group{Name: "detectors", Member: "m1", Partitions: 16}
		}
		st := New(cfg, js, nil, NewMetrics(prometheus.NewRegistry()), log)
		if group {
			own := make([]bool, 16)
			for p := range 8 {
				own[p] = true
			}
			st.grp.own[0].Store(&own)
			st.grp.own[1].Store(&own)
		}
		return st
	}
	st := newStage()
	ctx := context.Background()
	subj := schema.PacketsSubject("bench", 0)
	b.ReportAllocs()
	b.SetBytes(int64(len(batches[0])))
	i, pk := 0, 0
	cpu0 := cpuTime()
	for b.Loop() {
		if i == len(batches) {
			b.StopTimer()
			st, i = newStage(), 0
			b.StartTimer()
		}
		st.HandleARP(ctx, &benchMsg{data: batches[i], subject: subj})
		pk += min(1024, npkts-i*1024)
		i++
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(pk)/b.Elapsed().Seconds(), "pkts/s")
	b.ReportMetric(float64(pk)/cpu.Seconds(), "pkts/core-s")
	b.ReportMetric(float64(npkts), "capture-pkts")
}
