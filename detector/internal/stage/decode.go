package stage

import (
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"netwatch/schema/pb"
)

// decoder decodes FlowBatch messages (schema/proto netwatch.v1.FlowBatch)
// with protowire into Flow structs it reuses from one message to the next,
// instead of proto.Unmarshal's fresh Flow, address slices and strings per
// flow (17 % of the stage's CPU and most of its allocations in
// BenchmarkHandle). Addresses alias the message's bytes; strings are
// copied, the low-cardinality ones (sensor, app, conn_state, direction,
// countries, ...) interned. The flows are valid until the next decode: the
// stage keeps no *pb.Flow past a message (rules and models copy what they
// keep). Every field of Flow is decoded; TestDecoderMatchesProto sets every
// field the descriptor lists and compares with proto.Unmarshal, so a field
// added to schema fails it until it is added here. Unknown fields are
// skipped, as proto.Unmarshal would keep and ignore them. Not safe for
// concurrent use.
type decoder struct {
	ptrs   []*pb.Flow // Flow structs to reuse, in chunks made as batches grow
	intern map[string]string
}

var errDecode = errors.New("flow batch does not decode")

// decode returns the batch's sensor and flows, or an error (the message
// is then not a FlowBatch: terminate it).
func (d *decoder) decode(b []byte) (string, []*pb.Flow, error) {
	if d.intern == nil || len(d.intern) > 4096 {
		d.intern = map[string]string{}
	}
	sensor := ""
	n := 0
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return "", nil, fmt.Errorf("%w: %w", errDecode, protowire.ParseError(l))
		}
		b = b[l:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return "", nil, fmt.Errorf("%w: sensor: %w", errDecode, protowire.ParseError(l))
			}
			if !utf8.Valid(v) {
				return "", nil, fmt.Errorf("%w: sensor: invalid UTF-8", errDecode)
			}
			sensor, b = d.str(v), b[l:]
		case num == 2 && typ == protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return "", nil, fmt.Errorf("%w: flow: %w", errDecode, protowire.ParseError(l))
			}
			if n == len(d.ptrs) {
				d.grow()
			}
			f := d.ptrs[n]
			*f = pb.Flow{}
			if err := d.flow(f, v); err != nil {
				return "", nil, fmt.Errorf("%w: flow %d: %w", errDecode, n, err)
			}
			n++
			b = b[l:]
		default:
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return "", nil, fmt.Errorf("%w: field %d: %w", errDecode, num, protowire.ParseError(l))
			}
			b = b[l:]
		}
	}
	return sensor, d.ptrs[:n], nil
}

// grow adds a chunk of Flow structs; the ones already handed out stay
// where they are.
func (d *decoder) grow() {
	chunk := make([]pb.Flow, max(256, len(d.ptrs)))
	for i := range chunk {
		d.ptrs = append(d.ptrs, &chunk[i])
	}
}

// str copies b into a string, interning short ones (sensor names,
// application and state names, countries).
func (d *decoder) str(b []byte) string {
	if len(b) > 24 {
		return string(b)
	}
	if s, ok := d.intern[string(b)]; ok {
		return s
	}
	s := string(b)
	d.intern[s] = s
	return s
}

func (d *decoder) flow(f *pb.Flow, b []byte) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return protowire.ParseError(l)
		}
		b = b[l:]
		switch typ {
		case protowire.VarintType:
			v, l := protowire.ConsumeVarint(b)
			if l < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(l))
			}
			b = b[l:]
			u32 := uint32(v)
			switch num {
			case 4:
				f.Proto = u32
			case 6:
				f.OrigPort = u32
			case 8:
				f.RespPort = u32
			case 9:
				f.Vlan = u32
			case 10:
				f.InnerVlan = u32
			case 11:
				f.IcmpType = u32
			case 12:
				f.IcmpCode = u32
			case 13:
				f.StartNs = int64(v)
			case 14:
				f.EndNs = int64(v)
			case 15:
				f.OrigPkts = v
			case 16:
				f.OrigIpBytes = v
			case 17:
				f.OrigBytes = v
			case 18:
				f.RespPkts = v
			case 19:
				f.RespIpBytes = v
			case 20:
				f.RespBytes = v
			case 21:
				f.OrigTcpFlags = u32
			case 22:
				f.RespTcpFlags = u32
			case 23:
				f.RecordIndex = u32
			case 24:
				f.Final = v != 0
			case 25:
				f.EndReason = pb.EndReason(int32(v))
			case 26:
				f.DirectionGuessed = v != 0
			case 30:
				f.Tunnel = pb.Tunnel(int32(v))
			case 31:
				f.TunnelId = u32
			case 32:
				f.FlowStartNs = int64(v)
			case 44:
				f.OrigAsn = u32
			case 48:
				f.RespAsn = u32
			case 50:
				f.AppFromPort = v != 0
			case 54:
				f.DnsQtype = u32
			case 55:
				f.DnsRcode = u32
			case 56:
				f.DnsResponded = v != 0
			}
		case protowire.BytesType:
			v, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(l))
			}
			b = b[l:]
			if num < protowire.Number(len(stringField)) && stringField[num] && !utf8.Valid(v) {
				return fmt.Errorf("field %d: invalid UTF-8", num) // proto3 strings, as proto.Unmarshal
			}
			switch num {
			case 1:
				f.Id = string(v)
			case 2:
				f.Sensor = d.str(v)
			case 3:
				f.CommunityId = string(v)
			case 5:
				f.OrigAddr = v[:len(v):len(v)]
			case 7:
				f.RespAddr = v[:len(v):len(v)]
			case 27:
				f.App = d.str(v)
			case 28:
				f.ConnState = d.str(v)
			case 29:
				f.History = d.str(v)
			case 33:
				f.ServerName = string(v)
			case 34:
				f.OrigName = string(v)
			case 35:
				f.RespName = string(v)
			case 36:
				f.Direction = d.str(v)
			case 40:
				k, val, err := mapEntry(v)
				if err != nil {
					return fmt.Errorf("features: %w", err)
				}
				if f.Features == nil {
					f.Features = map[string]float64{}
				}
				f.Features[k] = val
			case 42:
				f.OrigCountry = d.str(v)
			case 43:
				f.OrigCity = d.str(v)
			case 45:
				f.OrigAsOrg = d.str(v)
			case 46:
				f.RespCountry = d.str(v)
			case 47:
				f.RespCity = d.str(v)
			case 49:
				f.RespAsOrg = d.str(v)
			case 51:
				f.Ja3 = d.str(v)
			case 52:
				f.Ja4 = d.str(v)
			case 53:
				f.HttpUserAgent = string(v)
			}
		default:
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(l))
			}
			b = b[l:]
		}
	}
	return nil
}

// stringField marks Flow's string fields (proto3: UTF-8 checked).
var stringField = func() (t [64]bool) {
	for _, n := range []int{1, 2, 3, 27, 28, 29, 33, 34, 35, 36, 42, 43, 45, 46, 47, 49, 51, 52, 53} {
		t[n] = true
	}
	return
}()

// mapEntry decodes one map<string, double> entry (key = 1, value = 2).
func mapEntry(b []byte) (string, float64, error) {
	var k string
	var v float64
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return "", 0, protowire.ParseError(l)
		}
		b = b[l:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			s, l := protowire.ConsumeBytes(b)
			if l < 0 {
				return "", 0, protowire.ParseError(l)
			}
			if !utf8.Valid(s) {
				return "", 0, errors.New("invalid UTF-8")
			}
			k, b = string(s), b[l:]
		case num == 2 && typ == protowire.Fixed64Type:
			x, l := protowire.ConsumeFixed64(b)
			if l < 0 {
				return "", 0, protowire.ParseError(l)
			}
			v, b = math.Float64frombits(x), b[l:]
		default:
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				return "", 0, protowire.ParseError(l)
			}
			b = b[l:]
		}
	}
	return k, v, nil
}
