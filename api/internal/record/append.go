package record

import (
	"math"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// AppendFlowJSON appends the JSON of FlowFromPB(f) to b, byte for byte what
// encoding/json writes for that Flow, with sensor as the sensor when f has
// none. It converts straight from the protobuf record: no Flow, no strings,
// no reflection (the live feed encodes every flow a client wants; 8
// allocations and ~9 µs through FlowFromPB and encoding/json).
func AppendFlowJSON(b []byte, f *pb.Flow, sensor string) []byte {
	if s := f.GetSensor(); s != "" {
		sensor = s
	}
	fs := f.GetFlowStartNs()
	if fs == 0 {
		fs = f.GetStartNs()
	}
	b = append(b, `{"id":`...)
	b = appendString(b, f.GetId())
	b = append(b, `,"community_id":`...)
	b = appendString(b, f.GetCommunityId())
	b = append(b, `,"sensor":`...)
	b = appendString(b, sensor)
	b = append(b, `,"proto":`...)
	b = strconv.AppendUint(b, uint64(f.GetProto()), 10)
	b = append(b, `,"orig_addr":`...)
	b = appendAddr(b, f.GetOrigAddr())
	b = append(b, `,"orig_port":`...)
	b = strconv.AppendUint(b, uint64(f.GetOrigPort()), 10)
	b = append(b, `,"resp_addr":`...)
	b = appendAddr(b, f.GetRespAddr())
	b = append(b, `,"resp_port":`...)
	b = strconv.AppendUint(b, uint64(f.GetRespPort()), 10)
	b = append(b, `,"vlan":`...)
	b = strconv.AppendUint(b, uint64(f.GetVlan()), 10)
	b = append(b, `,"inner_vlan":`...)
	b = strconv.AppendUint(b, uint64(f.GetInnerVlan()), 10)
	b = append(b, `,"icmp_type":`...)
	b = strconv.AppendUint(b, uint64(f.GetIcmpType()), 10)
	b = append(b, `,"icmp_code":`...)
	b = strconv.AppendUint(b, uint64(f.GetIcmpCode()), 10)
	b = append(b, `,"start":`...)
	b = appendTime(b, f.GetStartNs())
	b = append(b, `,"end":`...)
	b = appendTime(b, f.GetEndNs())
	b = append(b, `,"flow_start":`...)
	b = appendTime(b, fs)
	b = append(b, `,"duration":`...)
	b = appendFloat(b, float64(f.GetEndNs()-f.GetStartNs())/1e9)
	b = append(b, `,"orig_pkts":`...)
	b = strconv.AppendInt(b, int64(f.GetOrigPkts()), 10)
	b = append(b, `,"orig_ip_bytes":`...)
	b = strconv.AppendInt(b, int64(f.GetOrigIpBytes()), 10)
	b = append(b, `,"orig_bytes":`...)
	b = strconv.AppendInt(b, int64(f.GetOrigBytes()), 10)
	b = append(b, `,"resp_pkts":`...)
	b = strconv.AppendInt(b, int64(f.GetRespPkts()), 10)
	b = append(b, `,"resp_ip_bytes":`...)
	b = strconv.AppendInt(b, int64(f.GetRespIpBytes()), 10)
	b = append(b, `,"resp_bytes":`...)
	b = strconv.AppendInt(b, int64(f.GetRespBytes()), 10)
	b = append(b, `,"orig_tcp_flags":`...)
	b = strconv.AppendUint(b, uint64(f.GetOrigTcpFlags()), 10)
	b = append(b, `,"resp_tcp_flags":`...)
	b = strconv.AppendUint(b, uint64(f.GetRespTcpFlags()), 10)
	b = append(b, `,"record_index":`...)
	b = strconv.AppendUint(b, uint64(f.GetRecordIndex()), 10)
	b = append(b, `,"final":`...)
	b = strconv.AppendBool(b, f.GetFinal())
	b = append(b, `,"end_reason":`...)
	b = appendString(b, endReasonName(f.GetEndReason()))
	b = append(b, `,"direction_guessed":`...)
	b = strconv.AppendBool(b, f.GetDirectionGuessed())
	b = append(b, `,"app":`...)
	b = appendString(b, f.GetApp())
	b = append(b, `,"conn_state":`...)
	b = appendString(b, f.GetConnState())
	b = append(b, `,"history":`...)
	b = appendString(b, f.GetHistory())
	b = append(b, `,"tunnel":`...)
	b = appendString(b, tunnelName(f.GetTunnel()))
	b = append(b, `,"tunnel_id":`...)
	b = strconv.AppendInt(b, int64(f.GetTunnelId()), 10)
	b = append(b, `,"server_name":`...)
	b = appendString(b, f.GetServerName())
	b = append(b, `,"direction":`...)
	b = appendString(b, f.GetDirection())
	b = append(b, `,"orig_name":`...)
	b = appendString(b, f.GetOrigName())
	b = append(b, `,"resp_name":`...)
	b = appendString(b, f.GetRespName())
	b = append(b, `,"orig_country":`...)
	b = appendString(b, f.GetOrigCountry())
	b = append(b, `,"orig_city":`...)
	b = appendString(b, f.GetOrigCity())
	b = append(b, `,"orig_asn":`...)
	b = strconv.AppendUint(b, uint64(f.GetOrigAsn()), 10)
	b = append(b, `,"orig_as_org":`...)
	b = appendString(b, f.GetOrigAsOrg())
	b = append(b, `,"resp_country":`...)
	b = appendString(b, f.GetRespCountry())
	b = append(b, `,"resp_city":`...)
	b = appendString(b, f.GetRespCity())
	b = append(b, `,"resp_asn":`...)
	b = strconv.AppendUint(b, uint64(f.GetRespAsn()), 10)
	b = append(b, `,"resp_as_org":`...)
	b = appendString(b, f.GetRespAsOrg())
	b = append(b, `,"app_from_port":`...)
	b = strconv.AppendBool(b, f.GetAppFromPort())
	b = append(b, `,"ja3":`...)
	b = appendString(b, f.GetJa3())
	b = append(b, `,"ja4":`...)
	b = appendString(b, f.GetJa4())
	b = append(b, `,"http_user_agent":`...)
	b = appendString(b, f.GetHttpUserAgent())
	return append(b, '}')
}

// endReasonNames and tunnelNames hold EndReasonName and TunnelName of the
// enum values this build knows, so that the appender does not allocate.
var endReasonNames, tunnelNames = func() (e, t []string) {
	for i := range pb.EndReason_name {
		if i >= 0 && int(i) >= len(e) {
			e = append(e, make([]string, int(i)+1-len(e))...)
		}
	}
	for i := range e {
		e[i] = schema.EndReasonName(pb.EndReason(i))
	}
	for i := range pb.Tunnel_name {
		if i >= 0 && int(i) >= len(t) {
			t = append(t, make([]string, int(i)+1-len(t))...)
		}
	}
	for i := range t {
		t[i] = schema.TunnelName(pb.Tunnel(i))
	}
	return e, t
}()

func endReasonName(r pb.EndReason) string {
	if r >= 0 && int(r) < len(endReasonNames) {
		return endReasonNames[r]
	}
	return schema.EndReasonName(r)
}

func tunnelName(t pb.Tunnel) string {
	if t >= 0 && int(t) < len(tunnelNames) {
		return tunnelNames[t]
	}
	return schema.TunnelName(t)
}

// appendAddr appends AddrString(a) as a JSON string (addresses need no
// escaping).
func appendAddr(b []byte, a []byte) []byte {
	b = append(b, '"')
	if ip, ok := netip.AddrFromSlice(a); ok {
		b = ip.AppendTo(b)
	}
	return append(b, '"')
}

// appendTime appends Time(ns).MarshalJSON() (TimeLayout in UTC) without
// interpreting the layout: a third of the cost of AppendFormat.
func appendTime(b []byte, ns int64) []byte {
	t := time.Unix(0, ns).UTC()
	y, mo, d := t.Date()
	if y < 0 || y > 9999 {
		b = append(b, '"')
		b = t.AppendFormat(b, TimeLayout)
		return append(b, '"')
	}
	h, mi, s := t.Clock()
	b = append(b, '"')
	b = appendDigits(b, y, 4)
	b = append(b, '-')
	b = appendDigits(b, int(mo), 2)
	b = append(b, '-')
	b = appendDigits(b, d, 2)
	b = append(b, 'T')
	b = appendDigits(b, h, 2)
	b = append(b, ':')
	b = appendDigits(b, mi, 2)
	b = append(b, ':')
	b = appendDigits(b, s, 2)
	b = append(b, '.')
	b = appendDigits(b, t.Nanosecond(), 9)
	return append(b, 'Z', '"')
}

// appendDigits appends the n last decimal digits of v (v >= 0), zero-padded.
func appendDigits(b []byte, v, n int) []byte {
	var buf [9]byte
	for i := n - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:n]...)
}

// appendFloat appends f as encoding/json does (shortest representation,
// exponent form below 1e-6 and from 1e21). f must be finite.
func appendFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string escaped like encoding/json's
// (HTML-safe: <, > and & as \u003c, \u003e, \u0026; U+2028 and U+2029
// escaped; invalid UTF-8 as \ufffd).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
