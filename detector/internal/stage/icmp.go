package stage

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// icmpPackets calls fn for every ICMP or ICMPv6 packet summary
// (PacketBatch.packets, field 5) of a PacketBatch, with its time (ts_ns,
// Unix ns), addresses (aliasing data), protocol and ICMP type. Only fields
// 1-10 of a summary are read (protowire; ts_ns 1, src_addr 2, dst_addr 3,
// proto 6, icmp_type 10, in the schema's field order; a summary is
// skipped once a field beyond 10 appears, and other protocols cost a few
// tag reads). A summary that does not parse is an error after the
// summaries before it were reported.
func icmpPackets(data []byte, fn func(ts int64, src, dst []byte, proto, typ uint32)) error {
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
		var (
			ts          int64
			src, dst    []byte
			proto, icmp uint32
		)
	summary:
		for len(v) > 0 {
			num, typ, n := protowire.ConsumeTag(v)
			if n < 0 {
				return fmt.Errorf("packet summary: tag: %w", protowire.ParseError(n))
			}
			if num > 10 {
				break summary
			}
			v = v[n:]
			switch {
			case typ == protowire.VarintType && (num == 1 || num == 6 || num == 10):
				x, n := protowire.ConsumeVarint(v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
				switch num {
				case 1:
					ts = int64(x)
				case 6:
					proto = uint32(x)
				default:
					icmp = uint32(x)
				}
			case typ == protowire.BytesType && (num == 2 || num == 3):
				b, n := protowire.ConsumeBytes(v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
				if num == 2 {
					src = b
				} else {
					dst = b
				}
			default:
				n := protowire.ConsumeFieldValue(num, typ, v)
				if n < 0 {
					return fmt.Errorf("packet summary: field %d: %w", num, protowire.ParseError(n))
				}
				v = v[n:]
			}
		}
		if proto == 1 || proto == 58 {
			fn(ts, src, dst, proto, icmp)
		}
	}
	return nil
}
