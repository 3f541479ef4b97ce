// Package communityid computes Community ID v1 flow hashes: the enricher's
// flow records (packets → flows → community id) and the detector's live
// alerts (the Community ID of the packet that crossed a threshold).
//
// Source: the Community ID spec, github.com/corelight/community-id-spec
// (README "Pseudo code" and "Technical details"); the ICMP and ICMPv6
// type → port mapping follows Zeek's ICMP analyzer as the spec prescribes.
package communityid

import (
	"bytes"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
)

// IP protocol numbers the hash treats specially.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132
)

// icmp4Pairs maps an ICMPv4 type to its counterpart (Zeek ICMP.cc):
// echo, router solicitation/advertisement, timestamp, information, address mask.
var icmp4Pairs = map[uint8]uint8{8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}

// icmp6Pairs maps an ICMPv6 type to its counterpart: echo, multicast listener
// query/report, router and neighbor solicitation/advertisement, node
// information query/response, home agent address discovery.
var icmp6Pairs = map[uint8]uint8{128: 129, 129: 128, 130: 131, 131: 130, 133: 134, 134: 133,
	135: 136, 136: 135, 139: 140, 140: 139, 144: 145, 145: 144}

// icmpRequests are the types that start an ICMP exchange (their sender is
// the originator).
var icmp4Requests = map[uint8]bool{8: true, 13: true, 15: true, 10: true, 17: true}
var icmp6Requests = map[uint8]bool{128: true, 130: true, 133: true, 135: true, 139: true, 144: true}

// icmpTable is the per-type lookup built from the maps above (index 0
// ICMPv4, 1 ICMPv6): the counterpart type + 1 (0: none) and the request bit,
// so that the per-packet path does no map lookups.
var icmpTable [2][256]struct {
	pair    uint16 // counterpart + 1, 0 when the type has none
	request bool
}

func init() {
	for v, pairs := range []map[uint8]uint8{icmp4Pairs, icmp6Pairs} {
		for t, c := range pairs {
			icmpTable[v][t].pair = uint16(c) + 1
		}
	}
	for v, reqs := range []map[uint8]bool{icmp4Requests, icmp6Requests} {
		for t := range reqs {
			icmpTable[v][t].request = true
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// ICMPPorts maps an ICMP (v6 false) or ICMPv6 (v6 true) type and code to the
// port equivalents the spec hashes: for a type with a counterpart (echo
// request/reply ...) sport is the type and dport the counterpart type;
// otherwise sport is the type, dport the code and oneWay is true (such
// messages are hashed without reordering the endpoints).
func ICMPPorts(v6 bool, typ, code uint8) (sport, dport uint16, oneWay bool) {
	if c := icmpTable[b2i(v6)][typ].pair; c != 0 {
		return uint16(typ), c - 1, false
	}
	return uint16(typ), uint16(code), true
}

// ICMPRequest reports whether typ is the request half of an ICMP exchange
// (echo request, solicitations, queries).
func ICMPRequest(v6 bool, typ uint8) bool {
	return icmpTable[b2i(v6)][typ].request
}

// HasPorts reports whether the hash of proto includes ports: TCP, UDP,
// SCTP, ICMP and ICMPv6 (type/code equivalents).
func HasPorts(proto uint8) bool {
	switch proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoICMPv6:
		return true
	}
	return false
}

// Sum returns the 20-byte SHA-1 digest of a flow tuple. saddr and daddr are
// 4 or 16 bytes; sport and dport are ignored for protocols without ports
// (HasPorts); for ICMP and ICMPv6 they are the ICMPPorts equivalents, and
// oneWay keeps the endpoints in the given order.
func Sum(seed uint16, proto uint8, saddr, daddr []byte, sport, dport uint16, oneWay bool) [sha1.Size]byte {
	ports := HasPorts(proto)
	if !oneWay {
		c := bytes.Compare(saddr, daddr)
		if c > 0 || c == 0 && ports && sport > dport {
			saddr, daddr, sport, dport = daddr, saddr, dport, sport
		}
	}
	var buf [2 + 16 + 16 + 2 + 4]byte
	b := buf[:0]
	b = append(b, byte(seed>>8), byte(seed))
	b = append(b, saddr...)
	b = append(b, daddr...)
	b = append(b, proto, 0)
	if ports {
		b = append(b, byte(sport>>8), byte(sport), byte(dport>>8), byte(dport))
	}
	return sha1.Sum(b)
}

// ID returns the Community ID v1 string "1:<base64 of the digest>" (Sum).
func ID(seed uint16, proto uint8, saddr, daddr []byte, sport, dport uint16, oneWay bool) string {
	d := Sum(seed, proto, saddr, daddr, sport, dport, oneWay)
	return "1:" + base64.StdEncoding.EncodeToString(d[:])
}

// HexID is ID with the digest in lower-case hex instead of base64 (the
// spec's --no-base64 variant).
func HexID(seed uint16, proto uint8, saddr, daddr []byte, sport, dport uint16, oneWay bool) string {
	d := Sum(seed, proto, saddr, daddr, sport, dport, oneWay)
	return "1:" + hex.EncodeToString(d[:])
}

// PacketSum is the digest of one packet's Community ID (see Packet); it
// does not allocate.
func PacketSum(seed uint16, proto uint8, saddr, daddr []byte, sport, dport uint16, icmpType, icmpCode uint8) [sha1.Size]byte {
	oneWay := false
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		sport, dport, oneWay = ICMPPorts(proto == ProtoICMPv6, icmpType, icmpCode)
	}
	return Sum(seed, proto, saddr, daddr, sport, dport, oneWay)
}

// EncodedLen is the length of a Community ID v1 string in base64 form.
const EncodedLen = 2 + 28

// AppendID appends the Community ID v1 string of digest d ("1:<base64>",
// EncodedLen bytes) to dst.
func AppendID(dst []byte, d *[sha1.Size]byte) []byte {
	dst = append(dst, '1', ':')
	return base64.StdEncoding.AppendEncode(dst, d[:])
}

// Packet returns the Community ID of one packet: ports for TCP/UDP/SCTP, the
// ICMP type/code mapping for ICMP (proto 1) and ICMPv6 (proto 58).
func Packet(seed uint16, proto uint8, saddr, daddr []byte, sport, dport uint16, icmpType, icmpCode uint8) string {
	oneWay := false
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		sport, dport, oneWay = ICMPPorts(proto == ProtoICMPv6, icmpType, icmpCode)
	}
	return ID(seed, proto, saddr, daddr, sport, dport, oneWay)
}
