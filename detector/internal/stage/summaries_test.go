package stage

import (
	"bytes"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

// want is the summary fields packetSummaries reports, from proto.Unmarshal.
func wantSummaries(b *pb.PacketBatch) []string {
	var out []string
	for _, p := range b.Packets {
		switch p.Proto {
		case 1, 6, 17, 58:
			out = append(out, fmt.Sprint(p.TsNs, p.SrcAddr, p.DstAddr, p.SrcPort, p.DstPort, p.Proto, p.PayloadBytes, p.TcpFlags, p.IcmpType))
		}
	}
	return out
}

func gotSummaries(t testing.TB, data []byte) ([]string, error) {
	var out []string
	err := packetSummaries(data, func(p *summary) {
		out = append(out, fmt.Sprint(p.ts, p.src, p.dst, p.sport, p.dport, p.proto, p.payload, p.flags, p.icmp))
	})
	return out, err
}

// TestPacketSummariesMatchesProto: packetSummaries reports exactly the TCP,
// UDP, ICMP and ICMPv6 summaries of a batch (GRE and others skipped) with
// the time, addresses, ports, protocol, payload bytes, TCP flags and ICMP
// type proto.Unmarshal gives, every summary with every field up to 43 set
// and values differing per summary (zero values omitted on the wire
// included); a cut batch is an error, never a panic.
func TestPacketSummariesMatchesProto(t *testing.T) {
	b := &pb.PacketBatch{Sensor: "s", Boot: "x", Seq: 7, Bucket: 3, SentNs: 9, WatermarkNs: 11,
		Arp: []*pb.ArpSummary{{TsNs: 1, Op: 1, SenderIp: []byte{1, 2, 3, 4}}}}
	for i := 0; i < 250; i++ {
		p := &pb.PacketSummary{TsNs: int64(1e18) + int64(i)*1e6, SrcAddr: []byte{10, 0, 0, byte(i)}, DstAddr: []byte{10, 0, 1, byte(i)},
			SrcPort: uint32(i * 257 % 65536), DstPort: uint32(i % 7), Proto: []uint32{6, 17, 1, 58, 47}[i%5], IpBytes: 60,
			PayloadBytes: uint32(i % 3 * 1000), TcpFlags: uint32(i % 64), IcmpType: uint32(i % 20), IcmpCode: 3, Vlan: 5,
			InnerVlan: 6, TunnelId: 8, IpId: 9, Fragment: true, Ttl: 64, TcpSeq: 1, TcpAck: 2, TcpWindow: 3, DnsQuery: "a.example",
			DnsQtype: 1, DnsRcode: 3, DnsResponse: true, TlsSni: "x", HttpHost: "h", HttpMethod: "GET", HttpUserAgent: "u",
			App: "dns", TlsAlpn: []string{"h2"}, Ja3: "j", Ja4: "k", QuicVersion: 1}
		b.Packets = append(b.Packets, p)
	}
	data, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	want := wantSummaries(b)
	got, err := gotSummaries(t, data)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(want) != 200 {
		t.Fatalf("packetSummaries gave %d summaries, proto %d; first:\n%v\n%v", len(got), len(want), got[:min(2, len(got))], want[:2])
	}
	for cut := 1; cut < len(data); cut += 89 {
		if _, err := gotSummaries(t, data[:cut]); err == nil && proto.Unmarshal(data[:cut], &pb.PacketBatch{}) != nil {
			t.Fatalf("cut at %d: no error, proto.Unmarshal fails", cut)
		}
	}
}

// FuzzPacketSummaries: packetSummaries never panics, and on a PacketBatch
// in field order (input equal to its own deterministic re-encoding, as the
// agent's proto.Marshal writes it) it reports exactly what proto.Unmarshal
// gives. Seeds: a TCP SYN, a UDP packet with payload, an ICMP echo request,
// a GRE packet (skipped), and a bare packets field.
func FuzzPacketSummaries(f *testing.F) {
	b := &pb.PacketBatch{Sensor: "s", Packets: []*pb.PacketSummary{
		{TsNs: 1, SrcAddr: []byte{1, 2, 3, 4}, DstAddr: []byte{5, 6, 7, 8}, SrcPort: 40000, DstPort: 80, Proto: 6, TcpFlags: 2, Ttl: 3},
		{TsNs: 2, SrcAddr: []byte{1, 2, 3, 4}, DstAddr: []byte{5, 6, 7, 8}, SrcPort: 53, DstPort: 9999, Proto: 17, PayloadBytes: 40, App: "dns"},
		{TsNs: 3, Proto: 1, IcmpType: 8},
		{TsNs: 4, Proto: 47}}}
	data, _ := proto.Marshal(b)
	f.Add(data)
	f.Add([]byte{0x2a, 0x02, 0x30, 0x06})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := gotSummaries(t, data)
		var pbb pb.PacketBatch
		if proto.Unmarshal(data, &pbb) != nil || err != nil {
			return
		}
		if again, _ := (proto.MarshalOptions{Deterministic: true}).Marshal(&pbb); !bytes.Equal(again, data) {
			return // not in field order: fields 1-10 are read only up to the first higher one
		}
		if want := wantSummaries(&pbb); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("packetSummaries %v, proto.Unmarshal %v", got, want)
		}
	})
}
