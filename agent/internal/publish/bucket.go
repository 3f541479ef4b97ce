package publish

import (
	"encoding/binary"

	"netwatch/agent/internal/decode"
	"netwatch/schema"
)

// FNV-1a 32-bit offset basis and prime (Fowler, Noll, Vo; RFC draft
// draft-eastlake-fnv), as in hash/fnv.
const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// packetBucket is schema.PacketBucket(src, sport, dst, dport, proto, vlan)
// of p, computed without the hash.Hash32 interface and its per-call slices:
// the smaller endpoint (address, then port) first, FNV-1a over address,
// port (2 bytes), address, port, proto and VLAN (2 bytes), modulo
// schema.Buckets. TestPacketBucketMatchesSchema checks it against the
// schema's function on every shared capture and on random endpoints.
func packetBucket(p *decode.Packet) uint32 {
	n := min(int(p.AddrLen), 16)
	a, ap, b, bp := p.Src[:n], p.SrcPort, p.Dst[:n], p.DstPort
	if endpointLess(b, bp, a, ap) {
		a, ap, b, bp = b, bp, a, ap
	}
	h := uint32(fnvOffset32)
	for _, c := range a {
		h = (h ^ uint32(c)) * fnvPrime32
	}
	h = (h ^ uint32(ap>>8)) * fnvPrime32
	h = (h ^ uint32(ap&0xff)) * fnvPrime32
	for _, c := range b {
		h = (h ^ uint32(c)) * fnvPrime32
	}
	h = (h ^ uint32(bp>>8)) * fnvPrime32
	h = (h ^ uint32(bp&0xff)) * fnvPrime32
	h = (h ^ uint32(p.Proto)) * fnvPrime32
	h = (h ^ uint32(p.VLAN>>8)) * fnvPrime32
	h = (h ^ uint32(p.VLAN&0xff)) * fnvPrime32
	return h % schema.Buckets
}

// endpointLess orders endpoints of equal address length as the schema
// does: address bytes, then port.
func endpointLess(a []byte, ap uint16, b []byte, bp uint16) bool {
	if len(a) == 16 && len(b) == 16 {
		a0, b0 := binary.BigEndian.Uint64(a), binary.BigEndian.Uint64(b)
		if a0 != b0 {
			return a0 < b0
		}
		a1, b1 := binary.BigEndian.Uint64(a[8:]), binary.BigEndian.Uint64(b[8:])
		if a1 != b1 {
			return a1 < b1
		}
		return ap < bp
	}
	if len(a) == 4 && len(b) == 4 {
		if x, y := binary.BigEndian.Uint32(a), binary.BigEndian.Uint32(b); x != y {
			return x < y
		}
		return ap < bp
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return ap < bp
}
