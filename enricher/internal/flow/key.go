// Package flow aggregates packet summaries into bidirectional flow records
// (enricher stage: consume → flow → publish). A Table holds the open flows
// of one (sensor, bucket) and runs on that bucket's packet-time clock, so its
// output depends only on the packet sequence it is given.
package flow

import (
	"bytes"

	"netwatch/schema/communityid"
	"netwatch/schema/pb"
)

// Key identifies a bidirectional flow: the two endpoints in canonical order
// (A ≤ B by address then port), the IP protocol, VLANs and tunnel. For ICMP
// and ICMPv6 the ports are the Community ID type/code equivalents, so an
// echo request and its reply share a key; one-way ICMP messages (OneWay)
// keep sender as A.
type Key struct {
	A, B         [16]byte // addresses; IPv4 uses the first 4 bytes
	APort, BPort uint16
	Proto        uint8
	V6           bool
	OneWay       bool
	Tunnel       uint8
	VLAN         uint32
	InnerVLAN    uint32
	TunnelID     uint32
}

// keyOf returns p's flow key and whether p's source is endpoint A.
// ok is false when the addresses are not 4 or 16 bytes (or differ in size).
func keyOf(p *pb.PacketSummary) (k Key, srcIsA bool, ok bool) {
	n := len(p.SrcAddr)
	if (n != 4 && n != 16) || len(p.DstAddr) != n {
		return k, false, false
	}
	k.Proto = uint8(p.Proto)
	k.V6 = n == 16
	k.VLAN, k.InnerVLAN, k.TunnelID, k.Tunnel = p.Vlan, p.InnerVlan, p.TunnelId, uint8(p.Tunnel)
	sp, dp := uint16(p.SrcPort), uint16(p.DstPort)
	if k.Proto == communityid.ProtoICMP || k.Proto == communityid.ProtoICMPv6 {
		sp, dp, k.OneWay = communityid.ICMPPorts(k.Proto == communityid.ProtoICMPv6, uint8(p.IcmpType), uint8(p.IcmpCode))
	}
	c := bytes.Compare(p.SrcAddr, p.DstAddr)
	srcIsA = k.OneWay || c < 0 || c == 0 && sp <= dp
	if srcIsA {
		copy(k.A[:], p.SrcAddr)
		copy(k.B[:], p.DstAddr)
		k.APort, k.BPort = sp, dp
	} else {
		copy(k.A[:], p.DstAddr)
		copy(k.B[:], p.SrcAddr)
		k.APort, k.BPort = dp, sp
	}
	return k, srcIsA, true
}

func (k *Key) addrLen() int {
	if k.V6 {
		return 16
	}
	return 4
}
