package publish

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/agent/internal/fragment"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// reference is the pb.PacketSummary of p as the batcher built it before it
// encoded by hand: the definition the hand encoder must match.
func reference(p *decode.Packet, l7 *decode.L7) *pb.PacketSummary {
	s := &pb.PacketSummary{TsNs: p.TsNs, SrcAddr: p.Src[:p.AddrLen], DstAddr: p.Dst[:p.AddrLen],
		SrcPort: uint32(p.SrcPort), DstPort: uint32(p.DstPort), Proto: uint32(p.Proto),
		IpBytes: p.IPBytes, PayloadBytes: p.PayloadBytes, TcpFlags: uint32(p.TCPFlags),
		IcmpType: uint32(p.ICMPType), IcmpCode: uint32(p.ICMPCode), Vlan: uint32(p.VLAN), InnerVlan: uint32(p.InnerVLAN),
		Tunnel: pb.Tunnel(p.Tunnel), TunnelId: p.TunnelID, IpId: p.IPID, Fragment: p.Fragment, Ttl: uint32(p.TTL),
		TcpSeq: p.Seq, TcpAck: p.Ack, TcpWindow: uint32(p.Window)}
	if l7 != nil {
		s.App = l7.App
		s.DnsQuery, s.DnsQtype, s.DnsRcode, s.DnsResponse = l7.DNSQuery, uint32(l7.DNSQType), uint32(l7.DNSRCode), l7.DNSResponse
		for _, an := range l7.DNSAnswers {
			s.DnsAnswers = append(s.DnsAnswers, &pb.DNSAnswer{Name: an.Name, Type: uint32(an.Type), Addr: an.Addr, Target: an.Target, Ttl: an.TTL})
		}
		s.TlsSni, s.HttpHost, s.HttpMethod, s.HttpUserAgent = l7.TLSSNI, l7.HTTPHost, l7.HTTPMethod, l7.HTTPUA
	}
	return s
}

// keep copies s deeply: its strings and bytes point into the reused
// decode.Packet and decode.L7.
func keep(s *pb.PacketSummary) *pb.PacketSummary {
	c := proto.Clone(s).(*pb.PacketSummary)
	for _, f := range []*string{&c.DnsQuery, &c.TlsSni, &c.HttpHost, &c.HttpMethod, &c.HttpUserAgent, &c.App} {
		*f = strings.Clone(*f)
	}
	for _, a := range c.DnsAnswers {
		a.Name, a.Target = strings.Clone(a.Name), strings.Clone(a.Target)
	}
	return c
}

// TestEncodeMatchesProto encodes every IP packet of every shared capture by
// hand and compares the bytes with proto.Marshal of the same summary, then
// does the same for one batch per capture (header, packets, trailer).
func TestEncodeMatchesProto(t *testing.T) {
	dir := testkit.Pcaps(t)
	var files []string
	for _, pat := range []string{"*.pcap", "*.pcapng", "lab/*.pcap", "lab/*.pcapng"} {
		m, _ := filepath.Glob(filepath.Join(dir, pat))
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no captures")
	}
	var total, withL7 int
	for _, file := range files {
		src, err := capture.OpenFile(file)
		if err != nil {
			continue // unsupported files are the decoder tests' business
		}
		dec, err := decode.New(src.LinkType())
		if err != nil {
			src.Close()
			continue
		}
		var (
			p     decode.Packet
			l7    decode.L7
			ref   pb.PacketBatch
			enc   []byte
			sum   []byte
			decs  = map[any]*decode.Decoder{src.LinkType(): dec}
			frags = fragment.New()
		)
		emit := func(p *decode.Packet) {
			var l *decode.L7
			if decode.App(p) != "" {
				decode.ParseL7(p, &l7)
				l = &l7
			}
			want, err := proto.Marshal(reference(p, l))
			if err != nil {
				t.Fatalf("%s: marshal: %v", file, err)
			}
			sum = appendSummary(sum[:0], p, l)
			if !bytes.Equal(sum, want) {
				t.Fatalf("%s packet %d: encoded\n%x\nproto.Marshal\n%x", filepath.Base(file), total, sum, want)
			}
			ref.Packets = append(ref.Packets, keep(reference(p, l))) // p and l7 are reused
			enc = protowire.AppendTag(enc, batchPackets, protowire.BytesType)
			enc = protowire.AppendBytes(enc, sum)
			total++
			if l != nil {
				withL7++
			}
		}
		for {
			data, ci, link, err := src.Next()
			if err == io.EOF || err != nil {
				break
			}
			d := decs[link]
			if d == nil {
				if d, _ = decode.New(link); d == nil {
					continue
				}
				decs[link] = d
			}
			p.TsNs = ci.Timestamp.UnixNano()
			d.Decode(data, &p)
			if p.Kind == decode.KindIP {
				frags.Process(&p, emit)
			}
		}
		frags.Flush(emit)
		src.Close()
		ref.Sensor, ref.Boot, ref.Seq, ref.Bucket, ref.SentNs = "s-1", "0123456789abcdef", 42, 7, 1700000000123456789
		want, _ := proto.Marshal(&ref)
		got := appendBatchHeader(nil, ref.Sensor, ref.Boot, ref.Seq, ref.Bucket)
		got = append(got, enc...)
		got = appendBatchTrailer(got, false, ref.SentNs)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: batch encoding differs from proto.Marshal", filepath.Base(file))
		}
	}
	if withL7 == 0 {
		t.Fatal("no packet with L7 fields checked")
	}
	t.Logf("%d packets (%d with L7) in %d captures", total, withL7, len(files))
}

// TestBatchTrailerEOF checks the end-of-input and zero-value fields.
func TestBatchTrailerEOF(t *testing.T) {
	want, _ := proto.Marshal(&pb.PacketBatch{Sensor: "s", Seq: 1, EndOfInput: true, SentNs: -5})
	got := appendBatchTrailer(appendBatchHeader(nil, "s", "", 1, 0), true, -5)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
}
