package store

import (
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"time"
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
//	inet        family (2 = IPv4, 3 = IPv6), prefix bits, is_cidr (0),
//	            address length, address bytes (src/backend/utils/adt/network.c)

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
const flowColumns = 36

// flowRow appends f with sensor as one row of flowsTable.cols. f is valid
// (validFlow).
func (c *copyBuf) flowRow(f *pb.Flow, sensor string, start, end, flowStart int64) {
	c.fields(flowColumns)
	c.text(f.GetId())
	c.text(sensor)
	c.text(f.GetCommunityId())
	c.int16(int16(f.GetProto()))
	c.inet(f.GetOrigAddr())
	c.int32(int32(f.GetOrigPort()))
	c.inet(f.GetRespAddr())
	c.int32(int32(f.GetRespPort()))
	c.int32(int32(f.GetVlan()))
	c.int32(int32(f.GetInnerVlan()))
	c.int16(int16(f.GetIcmpType()))
	c.int16(int16(f.GetIcmpCode()))
	c.time(start)
	c.time(end)
	c.time(flowStart)
	c.int64(i64(f.GetOrigPkts()))
	c.int64(i64(f.GetOrigIpBytes()))
	c.int64(i64(f.GetOrigBytes()))
	c.int64(i64(f.GetRespPkts()))
	c.int64(i64(f.GetRespIpBytes()))
	c.int64(i64(f.GetRespBytes()))
	c.int16(int16(f.GetOrigTcpFlags()))
	c.int16(int16(f.GetRespTcpFlags()))
	c.int32(int32(f.GetRecordIndex()))
	c.bool(f.GetFinal())
	c.text(schema.EndReasonName(f.GetEndReason()))
	c.bool(f.GetDirectionGuessed())
	c.text(f.GetApp())
	c.text(f.GetConnState())
	c.text(f.GetHistory())
	c.text(schema.TunnelName(f.GetTunnel()))
	c.int64(int64(f.GetTunnelId()))
	c.text(f.GetServerName())
	c.text(f.GetDirection())
	c.text(f.GetOrigName())
	c.text(f.GetRespName())
}

// validFlow reports whether f can be stored: an id and addresses of 4 or 16
// bytes.
func validFlow(f *pb.Flow) bool {
	oa, ra := len(f.GetOrigAddr()), len(f.GetRespAddr())
	return f.GetId() != "" && (oa == 4 || oa == 16) && (ra == 4 || ra == 16)
}

// rollupKey is one flows_1m row's key.
type rollupKey struct {
	minute int64 // Unix microseconds of the UTC minute
	sensor string
	proto  int16
	app    string
}

// rollupSums is one flows_1m row's counters.
type rollupSums struct {
	records, origPkts, respPkts, origIPBytes, respIPBytes, origBytes, respBytes int64
}

// add is a saturating int64 addition of non-negative counters.
func add(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

func (s *rollupSums) add(f *pb.Flow) {
	s.records++
	s.origPkts = add(s.origPkts, i64(f.GetOrigPkts()))
	s.respPkts = add(s.respPkts, i64(f.GetRespPkts()))
	s.origIPBytes = add(s.origIPBytes, i64(f.GetOrigIpBytes()))
	s.respIPBytes = add(s.respIPBytes, i64(f.GetRespIpBytes()))
	s.origBytes = add(s.origBytes, i64(f.GetOrigBytes()))
	s.respBytes = add(s.respBytes, i64(f.GetRespBytes()))
}

// minuteOf is the start of the UTC minute of us (Unix microseconds), like
// date_bin('1 minute', t, '2000-01-01'): rounded down, also before 1970.
func minuteOf(us int64) int64 {
	const m = 60 * 1e6
	q := us / m
	if us%m < 0 {
		q--
	}
	return q * m
}

// flowBatch is flows encoded for COPY plus what the write needs besides
// them. Its buffers are reused from batch to batch (Store.flowBufs).
type flowBatch struct {
	copy    copyBuf
	rows    int
	invalid int
	days    map[time.Time]struct{}
	sensors map[string]*sensorSeen
	rollup  map[rollupKey]*rollupSums
}

func newFlowBatch() *flowBatch {
	return &flowBatch{days: map[time.Time]struct{}{}, sensors: map[string]*sensorSeen{},
		rollup: map[rollupKey]*rollupSums{}}
}

func (b *flowBatch) reset() {
	b.copy.reset()
	b.rows, b.invalid = 0, 0
	clear(b.days)
	clear(b.sensors)
	clear(b.rollup)
	// A rare huge batch must not pin its buffer forever.
	if cap(b.copy.b) > 64<<20 {
		b.copy.b = append([]byte(nil), copySignature...)
	}
}

// addFlows appends fb's flows. A flow without id or with an address that is
// not 4 or 16 bytes is skipped and counted in invalid.
func (b *flowBatch) addFlows(fb *pb.FlowBatch) {
	for _, f := range fb.GetFlows() {
		if !validFlow(f) {
			b.invalid++
			continue
		}
		sensor := f.GetSensor()
		if sensor == "" {
			sensor = fb.GetSensor()
		}
		sensor = text(sensor)
		start, end := micros(f.GetStartNs()), micros(f.GetEndNs())
		flowStart := start
		if f.GetFlowStartNs() != 0 {
			flowStart = micros(f.GetFlowStartNs())
		}
		b.copy.flowRow(f, sensor, start, end, flowStart)
		b.rows++

		st := ts(f.GetStartNs())
		b.days[dayOf(st)] = struct{}{}
		s := b.sensors[sensor]
		if s == nil {
			s = &sensorSeen{}
			b.sensors[sensor] = s
		}
		if e := ts(f.GetEndNs()); e.After(s.lastFlow) {
			s.lastFlow = e
		}
		k := rollupKey{minute: minuteOf(start), sensor: sensor, proto: int16(f.GetProto())}
		if app := f.GetApp(); app != "" {
			k.app = text(app)
		}
		r := b.rollup[k]
		if r == nil {
			r = &rollupSums{}
			b.rollup[k] = r
		}
		r.add(f)
	}
}

// rollupRows is the rollup as column arrays for upsertRollup, sorted by key
// (the lock order of concurrent writers).
func (b *flowBatch) rollupRows() []any {
	keys := make([]rollupKey, 0, len(b.rollup))
	for k := range b.rollup {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y rollupKey) int {
		switch {
		case x.minute != y.minute:
			return cmpInt(x.minute, y.minute)
		case x.sensor != y.sensor:
			return strings.Compare(x.sensor, y.sensor)
		case x.proto != y.proto:
			return cmpInt(int64(x.proto), int64(y.proto))
		}
		return strings.Compare(x.app, y.app)
	})
	n := len(keys)
	minute := make([]time.Time, n)
	sensor, app := make([]string, n), make([]string, n)
	proto := make([]int16, n)
	cols := make([][]int64, 7)
	for i := range cols {
		cols[i] = make([]int64, n)
	}
	for i, k := range keys {
		minute[i] = time.UnixMicro(k.minute).UTC()
		sensor[i], proto[i], app[i] = k.sensor, k.proto, k.app
		s := b.rollup[k]
		for j, v := range []int64{s.records, s.origPkts, s.respPkts, s.origIPBytes, s.respIPBytes, s.origBytes, s.respBytes} {
			cols[j][i] = v
		}
	}
	return []any{minute, sensor, proto, app, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]}
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// upsertRollup adds one batch's per-minute sums ($1…$11: minute, sensor,
// proto, app, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
// orig_bytes, resp_bytes arrays) to flows_1m.
const upsertRollup = `INSERT INTO flows_1m AS r (minute, sensor, proto, app, records, orig_pkts, resp_pkts,
	orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::int2[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
	$8::int8[], $9::int8[], $10::int8[], $11::int8[]) ORDER BY 1, 2, 3, 4
ON CONFLICT (minute, sensor, proto, app) DO UPDATE SET
	records = r.records + EXCLUDED.records,
	orig_pkts = r.orig_pkts + EXCLUDED.orig_pkts, resp_pkts = r.resp_pkts + EXCLUDED.resp_pkts,
	orig_ip_bytes = r.orig_ip_bytes + EXCLUDED.orig_ip_bytes, resp_ip_bytes = r.resp_ip_bytes + EXCLUDED.resp_ip_bytes,
	orig_bytes = r.orig_bytes + EXCLUDED.orig_bytes, resp_bytes = r.resp_bytes + EXCLUDED.resp_bytes`
