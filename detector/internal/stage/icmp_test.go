package stage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestStageLiveICMP: the lab hping3 ICMP flood (one ICMP flow, so no flow
// record before the enricher's timeouts) as PacketBatches of 1,024 packet
// summaries built from tshark's fields (every packet of the capture:
// ICMP, ARP-less IP, the echo replies) on PACKETS. Through the
// detector-arp consumer the stage counts the echo requests and publishes
// icmp_flood naming 10.99.1.10 → 10.99.1.20 (never the flooder as a
// target), first with the time of the packet tshark finds crossing the
// threshold, then updates at 2,000, 4,000 and 8,000 (12,372 requests,
// tshark). Every ICMP request tshark counts is counted; nothing pending.
// FLOWS messages are handled on another goroutine meanwhile (the rule
// engine is shared under a mutex: run with -race).
func TestStageLiveICMP(t *testing.T) {
	path := filepath.Join(testkit.Pcaps(t), "lab/lab-hping3-icmp-flood.pcap")
	tshark := testkit.Tool(t, "tshark")
	out, err := exec.Command(tshark, "-r", path, "-n", "-Y", "ip", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=f",
		"-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto", "-e", "icmp.type", "-e", "ip.len").Output()
	if err != nil {
		t.Fatal(err)
	}
	var pkts []*pb.PacketSummary
	requests, toVictim := 0, []int64{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		c := strings.Split(l, "\t")
		ts, _ := strconv.ParseFloat(c[0], 64)
		src, dst := netip.MustParseAddr(c[1]), netip.MustParseAddr(c[2])
		p, _ := strconv.Atoi(c[3])
		typ, _ := strconv.Atoi(c[4])
		n, _ := strconv.Atoi(c[5])
		s := &pb.PacketSummary{TsNs: int64(ts * 1e9), SrcAddr: src.AsSlice(), DstAddr: dst.AsSlice(), Proto: uint32(p), IpBytes: uint32(n), Ttl: 64}
		if p == 1 {
			s.IcmpType = uint32(typ)
			if typ == 8 {
				requests++
				if c[2] == "10.99.1.20" {
					toVictim = append(toVictim, s.TsNs)
				}
			}
		}
		pkts = append(pkts, s)
	}
	d := rules.DefaultConfig()
	// the crossing, from tshark's packets: the request that brings an
	// aligned window's count to the threshold.
	cross, perWin := int64(0), map[int64]int{}
	for _, ts := range toVictim {
		w := ts - ts%int64(d.FloodWindow)
		if perWin[w]++; perWin[w] == d.ICMPFloodPkts && cross == 0 {
			cross = ts
		}
	}
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	nb := 0
	for i := 0; i < len(pkts); i += 1024 {
		b := &pb.PacketBatch{Sensor: "lab", Boot: "b", Seq: uint64(nb + 1), Packets: pkts[i:min(i+1024, len(pkts))]}
		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		publish(t, js, schema.PacketsSubject("lab", 0), data, fmt.Sprintf("b.%d", nb))
		nb++
	}
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: d}, js, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.RunARP(rctx, 1) }()
	defer func() { cancel(); <-done }()
	// FLOWS messages handled at the same time (the engine is shared; run
	// with -race): the bench's flows, sensor "bench", alerts of their own.
	flowsDone := make(chan struct{})
	go func() {
		defer close(flowsDone)
		for _, data := range benchBatches(40, 150*time.Millisecond) {
			st.Handle(ctx, &benchMsg{data: data, subject: schema.FlowsSubject("bench", 0, 0)})
		}
	}()
	<-flowsDone
	testkit.Eventually(t, 30*time.Second, func() bool {
		cons, err := js.Consumer(ctx, schema.StreamPackets, ConsumerARP)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == uint64(nb)
	}, "detector-arp consumer still has pending messages")
	if got := testutil.ToFloat64(m.LiveICMP); got != float64(requests) {
		t.Errorf("live ICMP requests counted = %v, tshark %d", got, requests)
	}
	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(ctx)
	var counts []string
	for seq := uint64(1); seq <= info.State.Msgs; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var a pb.Alert
		if err := proto.Unmarshal(raw.Data, &a); err != nil {
			t.Fatal(err)
		}
		if a.Sensor == "bench" {
			continue
		}
		if a.Category != "icmp_flood" || a.RespAddr != "10.99.1.20" || a.OrigAddr != "10.99.1.10" || a.Technique != "T1498.001" {
			t.Fatalf("alert %s %q → %q", a.Category, a.OrigAddr, a.RespAddr)
		}
		if len(counts) == 0 && a.TimeNs != cross {
			t.Errorf("first alert at %d, threshold crossed at %d (tshark)", a.TimeNs, cross)
		}
		counts = append(counts, strings.Fields(a.Summary)[2])
	}
	if got := strings.Join(counts, ","); got != "1000,2000,4000,8000" {
		t.Fatalf("alerts at %s requests, want 1000,2000,4000,8000 (%d requests to 10.99.1.20, tshark)", got, len(toVictim))
	}
	t.Logf("%d packets in %d batches, %d ICMP requests (%d to the victim); alerts at %s", len(pkts), nb, requests, len(toVictim), strings.Join(counts, ","))
}

// TestICMPPacketsMatchesProto: icmpPackets reports exactly the ICMP and
// ICMPv6 summaries of a batch, with the time, addresses, protocol and type
// proto.Unmarshal gives, when every summary has every field up to 43 set
// (TCP, UDP, ICMP, ICMPv6 mixed, ARP summaries and other batch fields
// around them); a cut batch is an error, never a panic.
func TestICMPPacketsMatchesProto(t *testing.T) {
	b := &pb.PacketBatch{Sensor: "s", Boot: "x", Seq: 7, Bucket: 3, SentNs: 9, WatermarkNs: 11,
		Arp: []*pb.ArpSummary{{TsNs: 1, Op: 1, SenderIp: []byte{1, 2, 3, 4}}}}
	for i := 0; i < 200; i++ {
		p := &pb.PacketSummary{TsNs: int64(1e18) + int64(i)*1e6, SrcAddr: []byte{10, 0, 0, byte(i)}, DstAddr: []byte{10, 0, 1, byte(i)},
			SrcPort: 1, DstPort: 2, Proto: []uint32{6, 17, 1, 58}[i%4], IpBytes: 60, PayloadBytes: 10, TcpFlags: 0x12,
			IcmpType: uint32(i % 20), IcmpCode: 3, Vlan: 5, InnerVlan: 6, TunnelId: 8, IpId: 9, Fragment: true, Ttl: 64,
			TcpSeq: 1, TcpAck: 2, TcpWindow: 3, DnsQuery: "a.example", DnsQtype: 1, DnsRcode: 3, DnsResponse: true,
			TlsSni: "x", HttpHost: "h", HttpMethod: "GET", HttpUserAgent: "u", App: "dns", TlsAlpn: []string{"h2"}, Ja3: "j", Ja4: "k", QuicVersion: 1}
		if p.Proto == 58 {
			p.SrcAddr, p.DstAddr = netip.MustParseAddr("2001:db8::1").AsSlice(), netip.MustParseAddr("2001:db8::2").AsSlice()
		}
		b.Packets = append(b.Packets, p)
	}
	data, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	var want, got []string
	for _, p := range b.Packets {
		if p.Proto == 1 || p.Proto == 58 {
			want = append(want, fmt.Sprint(p.TsNs, p.SrcAddr, p.DstAddr, p.Proto, p.IcmpType))
		}
	}
	if err := icmpPackets(data, func(ts int64, src, dst []byte, proto, typ uint32) {
		got = append(got, fmt.Sprint(ts, src, dst, proto, typ))
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(want) != 100 {
		t.Fatalf("icmpPackets gave %d summaries, proto %d; first differences:\n%v\n%v", len(got), len(want), got[:min(2, len(got))], want[:2])
	}
	for cut := 1; cut < len(data); cut += 97 {
		if err := icmpPackets(data[:cut], func(int64, []byte, []byte, uint32, uint32) {}); err == nil && proto.Unmarshal(data[:cut], &pb.PacketBatch{}) != nil {
			t.Fatalf("cut at %d: no error, proto.Unmarshal fails", cut)
		}
	}
}

// FuzzICMPPackets: icmpPackets never panics, and on a PacketBatch as the
// agent's proto.Marshal writes it (fields in number order: input equal to
// its own re-encoding) it reports exactly its ICMP summaries.
func FuzzICMPPackets(f *testing.F) {
	b := &pb.PacketBatch{Sensor: "s", Packets: []*pb.PacketSummary{
		{TsNs: 1, SrcAddr: []byte{1, 2, 3, 4}, DstAddr: []byte{5, 6, 7, 8}, Proto: 1, IcmpType: 8, Ttl: 3, App: "x"},
		{TsNs: 2, Proto: 6, TcpFlags: 2}}}
	data, _ := proto.Marshal(b)
	f.Add(data)
	f.Add([]byte{0x2a, 0x02, 0x08, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		n := 0
		err := icmpPackets(data, func(int64, []byte, []byte, uint32, uint32) { n++ })
		var pbb pb.PacketBatch
		if proto.Unmarshal(data, &pbb) != nil || err != nil {
			return
		}
		opts := proto.MarshalOptions{Deterministic: true}
		if again, _ := opts.Marshal(&pbb); !bytes.Equal(again, data) {
			return // not in field order: icmpPackets reads fields 1-10 only up to the first higher one
		}
		want := 0
		for _, p := range pbb.Packets {
			if p.Proto == 1 || p.Proto == 58 {
				want++
			}
		}
		if n != want {
			t.Fatalf("icmpPackets reported %d ICMP summaries, proto.Unmarshal has %d", n, want)
		}
	})
}
