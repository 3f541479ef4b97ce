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
		s.TlsAlpn, s.Ja3, s.Ja4, s.QuicVersion = l7.TLSALPN, l7.JA3, l7.JA4, l7.QUICVersion
	}
	return s
}

// arpReference is the pb.ArpSummary of an ARP frame, field by field from
// the schema's comments.
func arpReference(p *decode.Packet) *pb.ArpSummary {
	a := p.ARP
	s := &pb.ArpSummary{TsNs: p.TsNs, Op: uint32(a.Op), SenderMac: bytes.Clone(a.SenderMAC[:]), SenderIp: bytes.Clone(a.SenderIP[:]),
		TargetMac: bytes.Clone(a.TargetMAC[:]), TargetIp: bytes.Clone(a.TargetIP[:]), Vlan: uint32(p.VLAN),
		Gratuitous: a.SenderIP == a.TargetIP}
	if a.HasEthSrc {
		s.EthSrc = bytes.Clone(a.EthSrc[:])
	}
	return s
}

// slim is s as the batcher writes it without -summary.full: no tcp_seq,
// tcp_ack, nor the ip_id of a packet that is not a fragment.
func slim(s *pb.PacketSummary, full bool) *pb.PacketSummary {
	if !full {
		s.TcpSeq, s.TcpAck = 0, 0
		if !s.Fragment {
			s.IpId = 0
		}
	}
	return s
}

// keep copies s deeply: its strings and bytes point into the reused
// decode.Packet and decode.L7.
func keep(s *pb.PacketSummary) *pb.PacketSummary {
	c := proto.Clone(s).(*pb.PacketSummary)
	for _, f := range []*string{&c.DnsQuery, &c.TlsSni, &c.HttpHost, &c.HttpMethod, &c.HttpUserAgent, &c.App, &c.Ja3, &c.Ja4} {
		*f = strings.Clone(*f)
	}
	for i, a := range c.TlsAlpn {
		c.TlsAlpn[i] = strings.Clone(a)
	}
	for _, a := range c.DnsAnswers {
		a.Name, a.Target = strings.Clone(a.Name), strings.Clone(a.Target)
	}
	return c
}

// TestEncodeMatchesProto encodes every IP packet of every shared capture by
// hand and compares the bytes with proto.Marshal of the same summary, then
// does the same for one batch per capture (header, packets, trailer, and
// the capture's ARP frames as ArpSummary fields).
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
	var total, withL7, arps, hellos int
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
			arp   []byte
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
			for _, full := range []bool{true, false} {
				want, err := proto.Marshal(slim(reference(p, l), full))
				if err != nil {
					t.Fatalf("%s: marshal: %v", file, err)
				}
				sum = appendSummary(sum[:0], p, l, full)
				if !bytes.Equal(sum, want) {
					t.Fatalf("%s packet %d (full %v): encoded\n%x\nproto.Marshal\n%x", filepath.Base(file), total, full, sum, want)
				}
			}
			ref.Packets = append(ref.Packets, keep(slim(reference(p, l), false))) // p and l7 are reused
			enc = protowire.AppendTag(enc, batchPackets, protowire.BytesType)
			enc = protowire.AppendBytes(enc, sum)
			total++
			if l != nil {
				withL7++
				if l.JA4 != "" || l.QUICVersion != 0 {
					hellos++
				}
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
			if p.ARP.OK {
				ref.Arp = append(ref.Arp, arpReference(&p))
				arp = appendARP(arp, &p)
				arps++
			}
		}
		frags.Flush(emit)
		src.Close()
		ref.Sensor, ref.Boot, ref.Seq, ref.Bucket, ref.SentNs = "s-1", "0123456789abcdef", 42, 7, 1700000000123456789
		want, _ := proto.Marshal(&ref)
		got := appendBatchHeader(nil, ref.Sensor, ref.Boot, ref.Seq, ref.Bucket)
		got = append(got, enc...)
		got = appendBatchTrailer(got, false, ref.SentNs)
		got = append(got, arp...)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: batch encoding differs from proto.Marshal", filepath.Base(file))
		}
	}
	if withL7 == 0 || arps == 0 || hellos == 0 {
		t.Fatalf("%d packets with L7 fields, %d with a ClientHello or QUIC version, %d ARP frames checked", withL7, hellos, arps)
	}
	t.Logf("%d packets (%d with L7, %d with JA4 or a QUIC version), %d ARP frames in %d captures", total, withL7, hellos, arps, len(files))
}

// TestEncodeL7Fields: ALPN (an empty name included: a repeated string is
// written even when empty), JA3, JA4 and the QUIC version, and an ARP-only
// batch, encode as proto.Marshal does.
func TestEncodeL7Fields(t *testing.T) {
	p := &decode.Packet{TsNs: 5, AddrLen: 4, Proto: 17, SrcPort: 1, DstPort: 443}
	l7 := &decode.L7{App: "quic", TLSALPN: []string{"h3", "", "h3-29"}, JA3: "526bdfecc3fb6cf46540d7ff70e88cec",
		JA4: "q13d0311h3_55b375c5d22e_3512bcbbc9ec", QUICVersion: decode.QUICv2}
	want, _ := proto.Marshal(reference(p, l7))
	if got := appendSummary(nil, p, l7, true); !bytes.Equal(got, want) {
		t.Errorf("summary %x, proto.Marshal %x", got, want)
	}
	a := &decode.Packet{TsNs: 1 << 40, VLAN: 4094, ARP: decode.ARP{OK: true, Op: 2, SenderIP: [4]byte{10, 0, 0, 1},
		TargetIP: [4]byte{10, 0, 0, 1}, SenderMAC: [6]byte{2, 0, 0, 0, 0, 1}}}
	want, _ = proto.Marshal(&pb.PacketBatch{Sensor: "s", Seq: 9, Bucket: 3, SentNs: 7, Arp: []*pb.ArpSummary{arpReference(a)}})
	got := appendARP(appendBatchTrailer(appendBatchHeader(nil, "s", "", 9, 3), false, 7), a)
	if !bytes.Equal(got, want) {
		t.Errorf("ARP-only batch %x, proto.Marshal %x", got, want)
	}
}

// TestBatchTrailerEOF checks the end-of-input and zero-value fields.
func TestBatchTrailerEOF(t *testing.T) {
	want, _ := proto.Marshal(&pb.PacketBatch{Sensor: "s", Seq: 1, EndOfInput: true, SentNs: -5})
	got := appendBatchTrailer(appendBatchHeader(nil, "s", "", 1, 0), true, -5)
	if !bytes.Equal(got, want) {
		t.Fatalf("got %x, want %x", got, want)
	}
}

// TestEncodeExtremes: the fixed fields at their widest (negative time,
// 16-byte addresses, every uint16/uint32 at its maximum, fragment, both
// VLANs, tunnel) and at their narrowest (each alone, others zero) encode as
// proto.Marshal does, with and without -summary.full: the bound of
// maxFixedSummary and every field's tag.
func TestEncodeExtremes(t *testing.T) {
	wide := decode.Packet{TsNs: -1, AddrLen: 16, SrcPort: 65535, DstPort: 65535, Proto: 255, IPBytes: 1<<32 - 1,
		PayloadBytes: 1<<32 - 1, TCPFlags: 0x1ff, ICMPType: 255, ICMPCode: 255, VLAN: 4095, InnerVLAN: 4095,
		Tunnel: 255, TunnelID: 1<<32 - 1, IPID: 1<<32 - 1, Fragment: true, FragOffset: 65528, TTL: 255,
		Seq: 1<<32 - 1, Ack: 1<<32 - 1, Window: 65535}
	for i := range wide.Src {
		wide.Src[i], wide.Dst[i] = 0xff, 0xfe
	}
	cases := []decode.Packet{wide, {AddrLen: 4, TsNs: 1}, {AddrLen: 4, ICMPCode: 3}, {AddrLen: 4, InnerVLAN: 7},
		{AddrLen: 4, TunnelID: 300}, {AddrLen: 4, Tunnel: 3}, {AddrLen: 16, Fragment: true}, {AddrLen: 4, IPID: 128},
		{AddrLen: 4, TTL: 128, Window: 127}, {AddrLen: 4, Seq: 1, Ack: 1 << 31}, {}}
	for i, p := range cases {
		for _, full := range []bool{true, false} {
			want, err := proto.Marshal(slim(reference(&p, nil), full))
			if err != nil {
				t.Fatal(err)
			}
			if len(want) > maxFixedSummary {
				t.Fatalf("case %d: %d bytes, more than maxFixedSummary", i, len(want))
			}
			if got := appendSummary([]byte{}, &p, nil, full); !bytes.Equal(got, want) {
				t.Errorf("case %d (full %v): encoded\n%x\nproto.Marshal\n%x", i, full, got, want)
			}
		}
	}
}
