package decode

import (
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// arpBody is an RFC 826 Ethernet/IPv4 ARP body.
func arpBody(op uint16, sha []byte, spa []byte, tha []byte, tpa []byte) []byte {
	return cat([]byte{0, 1, 8, 0, 6, 4, byte(op >> 8), byte(op)}, sha, spa, tha, tpa)
}

// TestARPCrafted checks ARP/RARP frames built by hand on Ethernet (with a
// VLAN tag), SLL and SLL2, and frames that are ARP but not summarized.
func TestARPCrafted(t *testing.T) {
	mac1 := []byte{0x02, 0, 0, 0, 0, 1}
	mac2 := []byte{0x02, 0, 0, 0, 0, 2}
	zero := make([]byte, 6)
	ip1, ip2 := []byte{192, 0, 2, 1}, []byte{192, 0, 2, 2}
	eth, _ := New(layers.LinkTypeEthernet)
	sll, _ := New(layers.LinkTypeLinuxSLL)
	sll2, _ := New(layers.LinkTypeLinuxSLL2)
	ethSrc := []byte{6, 7, 8, 9, 10, 11} // ethHdr's source address
	for _, c := range []struct {
		name     string
		d        *Decoder
		frame    []byte
		ok       bool
		op       uint16
		vlan     uint16
		grat     bool
		hasSrc   bool
		sha, spa []byte
	}{
		{"request", eth, cat(ethHdr(0x0806), arpBody(1, mac1, ip1, zero, ip2), make([]byte, 18)), true, 1, 0, false, true, mac1, ip1},
		// 802.1Q VID 100, then a gratuitous reply (sender IP = target IP)
		{"vlan gratuitous reply", eth, cat(ethHdr(0x8100), []byte{0, 100, 0x08, 0x06}, arpBody(2, mac2, ip2, mac2, ip2)), true, 2, 100, true, true, mac2, ip2},
		// SLL: packet type 0, ARPHRD_ETHER, address length 6, address + 2 pad, protocol 0x0806
		{"sll request", sll, cat([]byte{0, 0, 0, 1, 0, 6}, mac1, []byte{0, 0, 0x08, 0x06}, arpBody(1, mac1, ip1, zero, ip2)), true, 1, 0, false, false, mac1, ip1},
		// SLL2: protocol 0x8035 (RARP), reserved, ifindex, ARPHRD_ETHER, packet type, address length, address
		{"sll2 rarp", sll2, cat([]byte{0x80, 0x35, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6}, mac1, []byte{0, 0}, arpBody(3, mac1, ip1, mac1, ip1)), true, 3, 0, true, false, mac1, ip1},
		// cut one byte before the end of the target protocol address
		{"truncated", eth, cat(ethHdr(0x0806), arpBody(1, mac1, ip1, zero, ip2))[:14+27], false, 0, 0, false, false, nil, nil},
		// protocol address length 16 (not IPv4)
		{"not ipv4", eth, cat(ethHdr(0x0806), []byte{0, 1, 0x86, 0xdd, 6, 16, 0, 1}, mac1, make([]byte, 16), zero, make([]byte, 16)), false, 0, 0, false, false, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			if k := c.d.Decode(c.frame, &p); k != KindNonIP || p.Network != NetARP {
				t.Fatalf("kind %d network %v", k, p.Network)
			}
			a := p.ARP
			if a.OK != c.ok || a.Op != c.op || p.VLAN != c.vlan || a.Gratuitous() != c.grat && c.ok || a.HasEthSrc != c.hasSrc {
				t.Fatalf("%+v vlan %d", a, p.VLAN)
			}
			if !c.ok {
				return
			}
			if string(a.SenderMAC[:]) != string(c.sha) || string(a.SenderIP[:]) != string(c.spa) {
				t.Errorf("sender %x %x", a.SenderMAC, a.SenderIP)
			}
			if c.hasSrc && string(a.EthSrc[:]) != string(ethSrc) {
				t.Errorf("eth src %x", a.EthSrc)
			}
		})
	}
	// a following IP frame clears the ARP fields
	var p Packet
	eth.Decode(cat(ethHdr(0x0806), arpBody(1, mac1, ip1, zero, ip2)), &p)
	eth.Decode(udp4(1, 2, nil), &p)
	if p.ARP.OK {
		t.Error("ARP fields left over on an IP frame")
	}
}
