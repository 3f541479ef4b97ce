package publish

import (
	"encoding/binary"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"

	"netwatch/agent/internal/decode"
)

// Field numbers of pb.PacketBatch, pb.PacketSummary, pb.DNSAnswer and pb.ArpSummary
// (schema/proto/netwatch/v1/netwatch.proto). The batcher encodes these
// messages by hand, in field-number order with proto3 zero values omitted,
// which is what proto.Marshal produces; TestEncodeMatchesProto checks the
// bytes against proto.Marshal.
const (
	batchSensor, batchBoot, batchSeq, batchBucket, batchPackets, batchEOF, batchSentNs = 1, 2, 3, 4, 5, 6, 7
	batchARP                                                                           = 8
	batchWatermark                                                                     = 9

	sumTsNs, sumSrcAddr, sumDstAddr, sumSrcPort, sumDstPort, sumProto    = 1, 2, 3, 4, 5, 6
	sumIPBytes, sumPayloadBytes, sumTCPFlags, sumICMPType, sumICMPCode   = 7, 8, 9, 10, 11
	sumVLAN, sumInnerVLAN, sumTunnel, sumTunnelID, sumIPID, sumFragment  = 12, 13, 14, 15, 16, 17
	sumTTL, sumTCPSeq, sumTCPAck, sumTCPWindow                           = 18, 19, 20, 21
	sumDNSQuery, sumDNSQType, sumDNSRCode, sumDNSResponse, sumDNSAnswers = 30, 31, 32, 33, 34
	sumTLSSNI, sumHTTPHost, sumHTTPMethod, sumHTTPUserAgent, sumApp      = 35, 36, 37, 38, 39
	sumTLSALPN, sumJA3, sumJA4, sumQUICVersion                           = 40, 41, 42, 43
	ansName, ansType, ansAddr, ansTarget, ansTTL                         = 1, 2, 3, 4, 5

	arpTsNs, arpOp, arpSenderMAC, arpSenderIP, arpTargetMAC = 1, 2, 3, 4, 5
	arpTargetIP, arpVLAN, arpGratuitous, arpEthSrc          = 6, 7, 8, 9
)

// appendUint appends a varint field, omitted when 0 (proto3). A one-byte
// tag with a one-byte value, the common case, is inlined.
func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	if num < 16 && v < 0x80 {
		return append(b, byte(num)<<3, byte(v))
	}
	return appendUintLong(b, num, v)
}

func appendUintLong(b []byte, num protowire.Number, v uint64) []byte {
	return appendVarint(appendTag(b, num, protowire.VarintType), v)
}

// appendTag appends a field tag; every field number here is below 2048, so
// the tag takes one or two bytes. Inlined, unlike protowire.AppendTag.
func appendTag(b []byte, num protowire.Number, typ protowire.Type) []byte {
	t := uint64(num)<<3 | uint64(typ)
	if t < 0x80 {
		return append(b, byte(t))
	}
	return append(b, byte(t)|0x80, byte(t>>7))
}

// appendVarint appends v as a base-128 varint (protobuf encoding spec,
// "Base 128 Varints"). One-byte values, most of a summary's fields, take
// the inlined path; longer ones appendVarintLong.
func appendVarint(b []byte, v uint64) []byte {
	if v < 1<<7 {
		return append(b, byte(v))
	}
	return appendVarintLong(b, v)
}

// appendVarintLong is appendVarint for values of three bytes or more,
// written in place after one capacity check.
func appendVarintLong(b []byte, v uint64) []byte {
	n := len(b)
	if cap(b)-n < binary.MaxVarintLen64 {
		b = slices.Grow(b, binary.MaxVarintLen64)
	}
	b = b[:n+binary.MaxVarintLen64]
	for v >= 0x80 {
		b[n] = byte(v) | 0x80
		v >>= 7
		n++
	}
	b[n] = byte(v)
	return b[:n+1]
}

func appendBool(b []byte, num protowire.Number, v bool) []byte {
	if !v {
		return b
	}
	return append(appendTag(b, num, protowire.VarintType), 1)
}

func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = appendVarint(appendTag(b, num, protowire.BytesType), uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, num protowire.Number, v string) []byte {
	if v == "" {
		return b
	}
	b = appendVarint(appendTag(b, num, protowire.BytesType), uint64(len(v)))
	return append(b, v...)
}

// appendSummary appends the pb.PacketSummary of p to b: addresses, ports,
// lengths, flags, tunnel, TTL, TCP window, the IP id of fragments, plus
// l7's when l7 is not nil. With full it also writes tcp_seq, tcp_ack and
// the IP id of every packet, which no stage reads today (-summary.full):
// about 17 of a TCP summary's ~65 bytes. Strings from the decoder are valid
// UTF-8 (it escapes other bytes as \xNN).
func appendSummary(b []byte, p *decode.Packet, l7 *decode.L7, full bool) []byte {
	b = appendFixed(b, p, full)
	if l7 == nil {
		return b
	}
	b = appendString(b, sumDNSQuery, l7.DNSQuery)
	b = appendUint(b, sumDNSQType, uint64(l7.DNSQType))
	b = appendUint(b, sumDNSRCode, uint64(l7.DNSRCode))
	b = appendBool(b, sumDNSResponse, l7.DNSResponse)
	for i := range l7.DNSAnswers {
		an := &l7.DNSAnswers[i]
		b = protowire.AppendTag(b, sumDNSAnswers, protowire.BytesType)
		n := sizeString(an.Name) + sizeUint(ansType, uint64(an.Type)) + sizeBytes(len(an.Addr)) +
			sizeString(an.Target) + sizeUint(ansTTL, uint64(an.TTL))
		b = protowire.AppendVarint(b, uint64(n))
		b = appendString(b, ansName, an.Name)
		b = appendUint(b, ansType, uint64(an.Type))
		b = appendBytes(b, ansAddr, an.Addr)
		b = appendString(b, ansTarget, an.Target)
		b = appendUint(b, ansTTL, uint64(an.TTL))
	}
	b = appendString(b, sumTLSSNI, l7.TLSSNI)
	b = appendString(b, sumHTTPHost, l7.HTTPHost)
	b = appendString(b, sumHTTPMethod, l7.HTTPMethod)
	b = appendString(b, sumHTTPUserAgent, l7.HTTPUA)
	b = appendString(b, sumApp, l7.App)
	for _, a := range l7.TLSALPN {
		// a repeated string: every element is written, even an empty one
		b = appendVarint(appendTag(b, sumTLSALPN, protowire.BytesType), uint64(len(a)))
		b = append(b, a...)
	}
	b = appendString(b, sumJA3, l7.JA3)
	b = appendString(b, sumJA4, l7.JA4)
	b = appendUint(b, sumQUICVersion, uint64(l7.QUICVersion))
	return b
}

// appendARP appends p's ARP frame (p.ARP.OK) to b as a PacketBatch.arp
// field holding a pb.ArpSummary: packet time, op, sender and target MAC
// and IPv4 address, outer VLAN, gratuitous, and the Ethernet source when
// the capture has one.
func appendARP(b []byte, p *decode.Packet) []byte {
	a := &p.ARP
	var m [64]byte // at most 11 + 3 + 8 + 6 + 8 + 6 + 4 + 2 + 8 = 56 bytes
	e := appendUint(m[:0], arpTsNs, uint64(p.TsNs))
	e = appendUint(e, arpOp, uint64(a.Op))
	e = appendBytes(e, arpSenderMAC, a.SenderMAC[:])
	e = appendBytes(e, arpSenderIP, a.SenderIP[:])
	e = appendBytes(e, arpTargetMAC, a.TargetMAC[:])
	e = appendBytes(e, arpTargetIP, a.TargetIP[:])
	e = appendUint(e, arpVLAN, uint64(p.VLAN))
	e = appendBool(e, arpGratuitous, a.Gratuitous())
	if a.HasEthSrc {
		e = appendBytes(e, arpEthSrc, a.EthSrc[:])
	}
	b = appendVarint(appendTag(b, batchARP, protowire.BytesType), uint64(len(e)))
	return append(b, e...)
}

// maxFixedSummary bounds the encoded size of a summary's fields 1–21 (no
// L7): tags of one byte (fields 1–15) or two (16–21), varints of at most 10
// bytes (the time), 5 (uint32) or 3 (uint16) bytes, addresses of 16 bytes:
// 11 + 2·18 + 2·4 + 3 + 2·6 + 3 + 2·3 + 2·3 + 3 + 6 + 7 + 3 + 4 + 2·7 + 5 = 127.
const maxFixedSummary = 128

// appendFixed appends fields 1–21 of p's pb.PacketSummary (what
// appendSummary writes before the L7 fields) after one capacity check,
// each field written in place: the per-packet hot path of the batcher,
// about half the cost of appending field by field.
func appendFixed(b []byte, p *decode.Packet, full bool) []byte {
	n := len(b)
	if cap(b)-n < maxFixedSummary {
		b = slices.Grow(b, maxFixedSummary)
	}
	d := (*[maxFixedSummary]byte)(b[n : n+maxFixedSummary])
	var i int
	if ts := uint64(p.TsNs); ts>>56 != 0 && ts>>63 == 0 {
		// every time from 1972 to 2262 is a 9-byte varint: unrolled
		d[0] = sumTsNs << 3
		d[1], d[2], d[3], d[4] = byte(ts)|0x80, byte(ts>>7)|0x80, byte(ts>>14)|0x80, byte(ts>>21)|0x80
		d[5], d[6], d[7], d[8] = byte(ts>>28)|0x80, byte(ts>>35)|0x80, byte(ts>>42)|0x80, byte(ts>>49)|0x80
		d[9] = byte(ts >> 56)
		i = 10
	} else {
		i = putField(d, 0, sumTsNs<<3, ts)
	}
	switch p.AddrLen {
	case 4:
		d[i], d[i+1] = sumSrcAddr<<3|byte(protowire.BytesType), 4
		copy(d[i+2:i+6], p.Src[:4])
		d[i+6], d[i+7] = sumDstAddr<<3|byte(protowire.BytesType), 4
		copy(d[i+8:i+12], p.Dst[:4])
		i += 12
	case 16:
		d[i], d[i+1] = sumSrcAddr<<3|byte(protowire.BytesType), 16
		copy(d[i+2:i+18], p.Src[:])
		d[i+18], d[i+19] = sumDstAddr<<3|byte(protowire.BytesType), 16
		copy(d[i+20:i+36], p.Dst[:])
		i += 36
	}
	i = putField(d, i, sumSrcPort<<3, uint64(p.SrcPort))
	i = putField(d, i, sumDstPort<<3, uint64(p.DstPort))
	i = putField(d, i, sumProto<<3, uint64(p.Proto))
	i = putField(d, i, sumIPBytes<<3, uint64(p.IPBytes))
	i = putField(d, i, sumPayloadBytes<<3, uint64(p.PayloadBytes))
	i = putField(d, i, sumTCPFlags<<3, uint64(p.TCPFlags))
	if p.ICMPType|p.ICMPCode != 0 {
		i = putField(d, i, sumICMPType<<3, uint64(p.ICMPType))
		i = putField(d, i, sumICMPCode<<3, uint64(p.ICMPCode))
	}
	if p.VLAN|p.InnerVLAN != 0 {
		i = putField(d, i, sumVLAN<<3, uint64(p.VLAN))
		i = putField(d, i, sumInnerVLAN<<3, uint64(p.InnerVLAN))
	}
	if p.Tunnel != 0 || p.TunnelID != 0 {
		i = putField(d, i, sumTunnel<<3, uint64(p.Tunnel))
		i = putField(d, i, sumTunnelID<<3, uint64(p.TunnelID))
	}
	if full || p.Fragment {
		i = putField2(d, i, sumIPID<<3, uint64(p.IPID))
	}
	if p.Fragment {
		d[i], d[i+1], d[i+2] = sumFragment<<3|0x80, 1, 1
		i += 3
	}
	i = putField2(d, i, sumTTL<<3, uint64(p.TTL))
	if full {
		i = putField2(d, i, sumTCPSeq<<3, uint64(p.Seq))
		i = putField2(d, i, sumTCPAck<<3, uint64(p.Ack))
	}
	i = putField2(d, i, sumTCPWindow<<3, uint64(p.Window))
	return b[:n+i]
}

// putField writes a varint field of number 1–15 (tag, the wire type
// varint being 0) at d[i:] unless v is 0 (proto3), and returns the index
// after it.
func putField(d *[maxFixedSummary]byte, i int, tag byte, v uint64) int {
	if v == 0 {
		return i
	}
	d[i] = tag
	i++
	for v >= 0x80 {
		d[i] = byte(v) | 0x80
		v >>= 7
		i++
	}
	d[i] = byte(v)
	return i + 1
}

// putField2 is putField for field numbers 16–2047, whose tag t<<3 takes two
// bytes.
func putField2(d *[maxFixedSummary]byte, i int, tag uint64, v uint64) int {
	if v == 0 {
		return i
	}
	d[i], d[i+1] = byte(tag)|0x80, byte(tag>>7)
	i += 2
	for v >= 0x80 {
		d[i] = byte(v) | 0x80
		v >>= 7
		i++
	}
	d[i] = byte(v)
	return i + 1
}

// sizeUint, sizeBytes and sizeString are the encoded sizes of a DNSAnswer
// field (all its field numbers take a one-byte tag).
func sizeUint(_ protowire.Number, v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

func sizeBytes(n int) int {
	if n == 0 {
		return 0
	}
	return 1 + protowire.SizeBytes(n)
}

func sizeString(s string) int { return sizeBytes(len(s)) }

// appendBatchHeader appends the PacketBatch fields that precede its packets.
func appendBatchHeader(b []byte, sensor, boot string, seq uint64, bucket uint32) []byte {
	b = appendString(b, batchSensor, sensor)
	b = appendString(b, batchBoot, boot)
	b = appendUint(b, batchSeq, seq)
	return appendUint(b, batchBucket, uint64(bucket))
}

// appendBatchTrailer appends the PacketBatch fields that follow its packets.
func appendBatchTrailer(b []byte, eof bool, sentNs int64) []byte {
	b = appendBool(b, batchEOF, eof)
	return appendUint(b, batchSentNs, uint64(sentNs))
}
