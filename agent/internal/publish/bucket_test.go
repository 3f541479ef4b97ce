package publish

import (
	"io"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/schema"
	"netwatch/testkit"
)

// TestPacketBucketMatchesSchema: the batcher's inlined bucket hash gives
// schema.PacketBucket's bucket (the definition the enricher's partitions
// rely on) for every IP packet of every shared capture, for random IPv4 and
// IPv6 endpoints, and for endpoints equal but for the port or the last
// address byte (the ordering's corner cases).
func TestPacketBucketMatchesSchema(t *testing.T) {
	check := func(p *decode.Packet) {
		t.Helper()
		want := schema.PacketBucket(p.Src[:p.AddrLen], uint32(p.SrcPort), p.Dst[:p.AddrLen], uint32(p.DstPort),
			uint32(p.Proto), uint32(p.VLAN))
		if got := packetBucket(p); got != want {
			t.Fatalf("%x:%d -> %x:%d proto %d vlan %d: bucket %d, schema.PacketBucket %d",
				p.Src[:p.AddrLen], p.SrcPort, p.Dst[:p.AddrLen], p.DstPort, p.Proto, p.VLAN, got, want)
		}
	}
	dir := testkit.Pcaps(t)
	files, _ := filepath.Glob(filepath.Join(dir, "*.pcap*"))
	lab, _ := filepath.Glob(filepath.Join(dir, "lab", "*.pcap*"))
	files = append(files, lab...)
	seen := map[uint32]bool{}
	var n int
	for _, file := range files {
		src, err := capture.OpenFile(file)
		if err != nil {
			continue
		}
		decs := map[any]*decode.Decoder{}
		var p decode.Packet
		for {
			data, _, link, err := src.Next()
			if err == io.EOF || err != nil {
				break
			}
			d, ok := decs[link]
			if !ok {
				d, _ = decode.New(link)
				decs[link] = d
			}
			if d == nil || d.Decode(data, &p) != decode.KindIP {
				continue
			}
			check(&p)
			seen[packetBucket(&p)] = true
			n++
		}
		src.Close()
	}
	if n < 10000 || len(seen) != schema.Buckets {
		t.Fatalf("%d packets in %d buckets checked; want at least 10000 in all %d", n, len(seen), schema.Buckets)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		p := decode.Packet{AddrLen: 4, SrcPort: uint16(r.Uint32()), DstPort: uint16(r.Uint32()), Proto: uint8(r.Uint32()),
			VLAN: uint16(r.Uint32() & 0xfff)}
		if i%2 == 1 {
			p.AddrLen = 16
		}
		for j := range p.AddrLen {
			p.Src[j], p.Dst[j] = byte(r.Uint32()), byte(r.Uint32())
		}
		switch i % 5 {
		case 1: // same address, ports decide
			p.Dst = p.Src
		case 2: // same port, the last address byte decides
			p.Dst = p.Src
			p.Dst[p.AddrLen-1]++
			p.DstPort = p.SrcPort
		case 3: // the same endpoint twice
			p.Dst, p.DstPort = p.Src, p.SrcPort
		}
		check(&p)
	}
}
