package decode

import "encoding/binary"

// ARP operation codes (RFC 826 ar$op; RFC 903 for RARP).
const (
	ARPRequest  = 1
	ARPReply    = 2
	RARPRequest = 3
	RARPReply   = 4
)

// ARP is one ARP or RARP frame for Ethernet hardware addresses and IPv4
// protocol addresses (RFC 826, RFC 903): an IP <-> MAC binding as seen on
// the wire (pb.ArpSummary). It is filled by Decode when the outermost
// network header is ARP (EtherType 0x0806) or RARP (0x8035); OK is false
// for anything else, including ARP for other hardware or protocol
// address types and frames cut before the target protocol address.
type ARP struct {
	OK        bool
	Op        uint16  // ARPRequest ... RARPReply, or any other ar$op value carried
	SenderMAC [6]byte // ar$sha
	SenderIP  [4]byte // ar$spa
	TargetMAC [6]byte // ar$tha (all zero in a request)
	TargetIP  [4]byte // ar$tpa
	// EthSrc is the Ethernet source address of the frame; HasEthSrc is false
	// on Linux cooked captures (SLL, SLL2), which carry no Ethernet header.
	EthSrc    [6]byte
	HasEthSrc bool
}

// Gratuitous reports whether the sender announces its own address: sender IP
// equals target IP (a gratuitous ARP or RFC 5227 announcement).
func (a *ARP) Gratuitous() bool { return a.SenderIP == a.TargetIP }

// arp parses an ARP/RARP body (RFC 826 packet format): hardware type (2),
// protocol type (2), hardware length (1), protocol length (1), op (2), then
// sender hardware, sender protocol, target hardware, target protocol
// addresses. Only 6-byte hardware and 4-byte IPv4 (0x0800) addresses are
// summarized; the hardware type is not checked, so IEEE 802 (6) frames
// with MAC addresses are read too.
func (a *ARP) parse(b []byte) {
	if len(b) < 28 || binary.BigEndian.Uint16(b[2:4]) != 0x0800 || b[4] != 6 || b[5] != 4 {
		return
	}
	a.OK = true
	a.Op = binary.BigEndian.Uint16(b[6:8])
	copy(a.SenderMAC[:], b[8:14])
	copy(a.SenderIP[:], b[14:18])
	copy(a.TargetMAC[:], b[18:24])
	copy(a.TargetIP[:], b[24:28])
}
