package store

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"math"
	"strings"
	"unicode/utf8"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// This file encodes flows straight from their protobuf messages into
// PostgreSQL's binary COPY format, without a value per column boxed in an
// interface: one reused buffer per batch, no allocation per row (text that
// must be repaired aside). The format is PostgreSQL's "Binary Format" of COPY
// (https://www.postgresql.org/docs/current/sql-copy.html), each column in its
// type's send/recv representation:
//
//	text        the UTF-8 bytes
//	smallint    2 bytes, integer 4, bigint 8, big-endian two's complement
//	boolean     1 byte, 0 or 1
//	timestamptz int64 microseconds since 2000-01-01 00:00:00 UTC
//	uuid        16 bytes, bytea the bytes
//	inet        family (2 = IPv4, 3 = IPv6), prefix bits, is_cidr (0),
//	            address length, address bytes (src/backend/utils/adt/network.c)
//	NULL        the length -1 and no bytes
//
// Since migration 00013 the optional columns of flows take NULL for an
// unknown value: flowRow writes NULL where the value is "" / 0 / false (a NULL
// is one bit of the row's null bitmap; PostgreSQL calls no receive function
// for it).

// copySignature is the binary COPY header: signature, flags, extension length.
var copySignature = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// pgEpochMicros is 2000-01-01 00:00:00 UTC in Unix microseconds.
const pgEpochMicros = 946684800 * 1e6

// micros is Unix nanoseconds as Unix microseconds, rounded down (as pgx and
// PostgreSQL keep microseconds).
func micros(ns int64) int64 {
	us := ns / 1000
	if ns%1000 < 0 {
		us--
	}
	return us
}

// copyBuf builds one binary COPY stream.
type copyBuf struct{ b []byte }

func (c *copyBuf) reset() { c.b = append(c.b[:0], copySignature...) }

// trailer ends the stream.
func (c *copyBuf) trailer() { c.b = binary.BigEndian.AppendUint16(c.b, 0xffff) }

func (c *copyBuf) fields(n int) { c.b = binary.BigEndian.AppendUint16(c.b, uint16(n)) }

func (c *copyBuf) int16(v int16) {
	c.b = binary.BigEndian.AppendUint32(c.b, 2)
	c.b = binary.BigEndian.AppendUint16(c.b, uint16(v))
}

func (c *copyBuf) int32(v int32) {
	c.b = binary.BigEndian.AppendUint32(c.b, 4)
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(v))
}

func (c *copyBuf) int64(v int64) {
	c.b = binary.BigEndian.AppendUint32(c.b, 8)
	c.b = binary.BigEndian.AppendUint64(c.b, uint64(v))
}

func (c *copyBuf) bool(v bool) {
	c.b = binary.BigEndian.AppendUint32(c.b, 1)
	if v {
		c.b = append(c.b, 1)
	} else {
		c.b = append(c.b, 0)
	}
}

// null appends a NULL.
func (c *copyBuf) null() { c.b = binary.BigEndian.AppendUint32(c.b, 0xffffffff) }

// optInt16 appends v, NULL when 0 (an optional column, 00013).
func (c *copyBuf) optInt16(v int16) {
	if v == 0 {
		c.null()
		return
	}
	c.int16(v)
}

// optInt32 appends v, NULL when 0.
func (c *copyBuf) optInt32(v int32) {
	if v == 0 {
		c.null()
		return
	}
	c.int32(v)
}

// optInt64 appends v, NULL when 0.
func (c *copyBuf) optInt64(v int64) {
	if v == 0 {
		c.null()
		return
	}
	c.int64(v)
}

// optBool appends true, or NULL for false.
func (c *copyBuf) optBool(v bool) {
	if !v {
		c.null()
		return
	}
	c.bool(true)
}

// optText appends s as text(), NULL when empty.
func (c *copyBuf) optText(s string) {
	if s == "" {
		c.null()
		return
	}
	c.text(s)
}

// time is Unix microseconds as timestamptz.
func (c *copyBuf) time(us int64) { c.int64(us - pgEpochMicros) }

// text appends s made storable (text()): valid UTF-8 without NUL.
func (c *copyBuf) text(s string) {
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		s = text(s)
	}
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(s)))
	c.b = append(c.b, s...)
}

// inet appends a 4- or 16-byte address as a host inet (/32, /128).
func (c *copyBuf) inet(a []byte) {
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(4+len(a)))
	if len(a) == 4 {
		c.b = append(c.b, 2, 32, 0, 4)
	} else {
		c.b = append(c.b, 3, 128, 0, 16)
	}
	c.b = append(c.b, a...)
}

// flowColumns is the number of columns flowRow writes (flowsTable.cols).
const flowColumns = 49

// batchOffset is where, from the start of a row flowRow appended, the
// 8 bytes of its batch column (the first) begin: field count (2), length (4).
const batchOffset = 2 + 4

// flowRow appends f with sensor as one row of flowsTable.cols and returns
// the offset of the row in c. Its batch column is 0 until setBatch. f is
// valid (validFlow). An optional value (migration 00013: everything but
// the times, counters, batch, id, ports, proto, addresses, sensor and final)
// that is "" / 0 / false is written as NULL.
func (c *copyBuf) flowRow(f *pb.Flow, sensor string, start, end, flowStart int64) int {
	at := len(c.b)
	c.fields(flowColumns)
	c.int64(0) // batch, set by setBatch
	c.uuid(f.GetId())
	c.text(sensor)
	c.optBytea(communityID(f.GetCommunityId()))
	c.int16(int16(f.GetProto()))
	c.inet(f.GetOrigAddr())
	c.int32(int32(f.GetOrigPort()))
	c.inet(f.GetRespAddr())
	c.int32(int32(f.GetRespPort()))
	c.optInt32(int32(f.GetVlan()))
	c.optInt32(int32(f.GetInnerVlan()))
	c.optInt16(int16(f.GetIcmpType()))
	c.optInt16(int16(f.GetIcmpCode()))
	c.time(start)
	c.time(end)
	c.time(flowStart)
	c.int64(i64(f.GetOrigPkts()))
	c.int64(i64(f.GetOrigIpBytes()))
	c.int64(i64(f.GetOrigBytes()))
	c.int64(i64(f.GetRespPkts()))
	c.int64(i64(f.GetRespIpBytes()))
	c.int64(i64(f.GetRespBytes()))
	c.optInt16(int16(f.GetOrigTcpFlags()))
	c.optInt16(int16(f.GetRespTcpFlags()))
	c.optInt32(int32(f.GetRecordIndex()))
	c.bool(f.GetFinal())
	c.optText(schema.EndReasonName(f.GetEndReason()))
	c.optBool(f.GetDirectionGuessed())
	c.optText(f.GetApp())
	c.optText(f.GetConnState())
	c.optText(f.GetHistory())
	c.optText(schema.TunnelName(f.GetTunnel()))
	c.optInt64(int64(f.GetTunnelId()))
	c.optText(f.GetServerName())
	c.optText(f.GetDirection())
	c.optText(f.GetOrigName())
	c.optText(f.GetRespName())
	c.optText(f.GetOrigCountry())
	c.optText(f.GetOrigCity())
	c.optInt64(int64(f.GetOrigAsn()))
	c.optText(f.GetOrigAsOrg())
	c.optText(f.GetRespCountry())
	c.optText(f.GetRespCity())
	c.optInt64(int64(f.GetRespAsn()))
	c.optText(f.GetRespAsOrg())
	c.optBool(f.GetAppFromPort())
	c.optText(f.GetJa3())
	c.optText(f.GetJa4())
	c.optText(f.GetHttpUserAgent())
	return at
}

// setBatch sets the batch column of the rows at offsets to batch.
func (c *copyBuf) setBatch(offsets []int, batch int64) {
	for _, at := range offsets {
		binary.BigEndian.PutUint64(c.b[at+batchOffset:], uint64(batch))
	}
}

// optBytea appends v as bytea, NULL when empty.
func (c *copyBuf) optBytea(v []byte) {
	if len(v) == 0 {
		c.null()
		return
	}
	c.bytea(v)
}

// uuid appends a 32-hex-digit id (validFlow) as a uuid: its 16 bytes.
func (c *copyBuf) uuid(id string) {
	c.b = binary.BigEndian.AppendUint32(c.b, 16)
	var u [16]byte
	hex.Decode(u[:], []byte(id))
	c.b = append(c.b, u[:]...)
}

// bytea appends v as bytea.
func (c *copyBuf) bytea(v []byte) {
	c.b = binary.BigEndian.AppendUint32(c.b, uint32(len(v)))
	c.b = append(c.b, v...)
}

// communityID is a Community ID as stored in flows.community_id (migration
// 00011): a Community ID v1 ("1:" and the base64 of a 20-byte SHA-1,
// https://github.com/corelight/community-id-spec) is the byte 1 and the 20
// bytes; "" is empty; any other text is its bytes made storable (text),
// behind a 0 byte when it starts with byte 0 or 1. The api reverses it.
func communityID(s string) []byte {
	if s == "" {
		return nil
	}
	if len(s) == 30 && s[:2] == "1:" {
		var h [21]byte
		if n, err := base64.StdEncoding.Decode(h[1:], []byte(s[2:])); err == nil && n == 20 &&
			base64.StdEncoding.EncodeToString(h[1:]) == s[2:] {
			h[0] = 1
			return h[:]
		}
	}
	s = text(s)
	if s[0] <= 1 {
		return append([]byte{0}, s...)
	}
	return []byte(s)
}

// validFlow reports whether f can be stored: an id of 32 hex digits
// (schema.FlowID; stored as a uuid) and addresses of 4 or 16 bytes.
func validFlow(f *pb.Flow) bool {
	oa, ra := len(f.GetOrigAddr()), len(f.GetRespAddr())
	return isFlowID(f.GetId()) && (oa == 4 || oa == 16) && (ra == 4 || ra == 16) && inRange(f)
}

// inRange reports whether f's numbers fit what they are and their columns:
// an IP protocol number, ICMP type and code (8 bits: RFC 791, RFC 792), TCP
// flags (the 12 bits of the flags field with the reserved ones, RFC 9293),
// ports (16 bits), 802.1Q VLAN ids (12 bits: IEEE 802.1Q), a record index
// below 2^31 (integer). No capture yields others; stored, they would wrap in
// the smallint / integer columns (proto 70000 as 4464), so such a record is
// invalid: skipped and counted.
func inRange(f *pb.Flow) bool {
	return f.GetProto() <= 255 && f.GetIcmpType() <= 255 && f.GetIcmpCode() <= 255 &&
		f.GetOrigTcpFlags() <= 0xfff && f.GetRespTcpFlags() <= 0xfff &&
		f.GetOrigPort() <= 65535 && f.GetRespPort() <= 65535 &&
		f.GetVlan() <= 4095 && f.GetInnerVlan() <= 4095 && f.GetRecordIndex() <= math.MaxInt32
}

// isFlowID reports whether id is 32 hex digits.
func isFlowID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}
