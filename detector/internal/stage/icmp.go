package stage

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// summary is the part of a packet summary (schema PacketSummary, fields
// 1-10) the live rules read; src and dst alias the batch's data.
type summary struct {
	ts                   int64 // ts_ns (1), Unix ns
	src, dst             []byte
	sport, dport, proto  uint32 // src_port (4), dst_port (5), proto (6)
	payload, flags, icmp uint32 // payload_bytes (8), tcp_flags (9), icmp_type (10)
}

// icmpPackets calls fn for every ICMP or ICMPv6 packet summary of a
// PacketBatch (packetSummaries), with its time (ts_ns, Unix ns),
// addresses (aliasing data), protocol and ICMP type.
func icmpPackets(data []byte, fn func(ts int64, src, dst []byte, proto, typ uint32)) error {
	return packetSummaries(data, func(p *summary) {
		if p.proto == 1 || p.proto == 58 {
			fn(p.ts, p.src, p.dst, p.proto, p.icmp)
		}
	})
}

// packetSummaries calls fn for every TCP, UDP, ICMP or ICMPv6 packet
// summary (PacketBatch.packets, field 5) of a PacketBatch. Only fields
// 1-10 of a summary are read (protowire; ts_ns 1, src_addr 2, dst_addr 3,
// src_port 4, dst_port 5, proto 6, payload_bytes 8, tcp_flags 9,
// icmp_type 10, in the schema's field order, which the agent writes; a
// summary is left once a field beyond 10 appears). fn's summary is reused
// for the next one. A summary that does not parse is an error after the
// summaries before it were reported.
func packetSummaries(data []byte, fn func(*summary)) error {
	var p summary
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return fmt.Errorf("packet batch: tag: %w", protowire.ParseError(n))
		}
		data = data[n:]
		if num != 5 || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return fmt.Errorf("packet batch: field %d: %w", num, protowire.ParseError(n))
			}
			data = data[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(data)
		if n < 0 {
			return fmt.Errorf("packet batch: packet: %w", protowire.ParseError(n))
		}
		data = data[n:]
		p = summary{}
	fields:
		for len(v) > 0 {
			num, typ, n := protowire.ConsumeTag(v)
			if n < 0 {
				return fmt.Errorf("packet summary: tag: %w", protowire.ParseError(n))
			}
			if num > 10 {
				break fields
			}
			v = v[n:]
			switch {
			case typ == protowire.VarintType && num != 2 && num != 3:
				x, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
				switch num {
				case 1:
					p.ts = int64(x)
				case 4:
					p.sport = uint32(x)
				case 5:
					p.dport = uint32(x)
				case 6:
					p.proto = uint32(x)
				case 8:
					p.payload = uint32(x)
				case 9:
					p.flags = uint32(x)
				case 10:
					p.icmp = uint32(x)
				}
			case typ == protowire.BytesType && (num == 2 || num == 3):
				b, n := protowire.ConsumeBytes(v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
				if num == 2 {
					p.src = b
				} else {
					p.dst = b
				}
			default:
				n := protowire.ConsumeFieldValue(num, typ, v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
			}
		}
		switch p.proto {
		case 1, 6, 17, 58:
			fn(&p)
		}
	}
	return nil
}
