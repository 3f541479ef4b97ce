package store

import (
	"math"
	"net/netip"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/schema/pb"
)

// This file keeps the rollups (migrations 00003, 00006 and 00009), each in
// three tiers: per minute (_1m, column minute), per hour (_1h, column hour)
// and per day (_1d, column day), all UTC and of the record's start:
//
//	flows_1m     (minute, sensor, proto, app)                   records, orig/resp pkts, ip bytes, payload bytes
//	talkers_1m   (minute, sensor, addr)                         sent/recv pkts and ip bytes, records
//	pairs_1m     (minute, sensor, orig_addr, resp_addr, proto)  orig/resp pkts and ip bytes, records
//	ports_1m     (minute, sensor, proto, resp_port)             orig/resp pkts and ip bytes, records
//	countries_1m (minute, sensor, country)                      sent/recv pkts and ip bytes, records
//
// In talkers_* an address counts in both roles: as originator it sent orig_*
// and received resp_*, as responder the reverse; records counts the flow
// records it appears in, once when it is both originator and responder. In
// countries_* a record adds to each distinct country of its ends ('' when
// unknown) once: in the originator's role (sent orig_*, received resp_*),
// and in the responder's role (sent resp_*, received orig_*) when the
// responder's country differs; so a record within one country adds its
// traffic there once, as the originator's (migration 00009; before, it was
// added in both roles). The sums of a batch are added up here and added to
// the tables in the transaction that inserts the batch's new rows, so each
// rollup equals a GROUP BY over flows (TestRollupsEqualGroupBy).

// flowRef is one valid flow of a batch, as encoded.
type flowRef struct {
	f      *pb.Flow
	sensor string // made storable
	start  int64  // Unix microseconds
}

// tier is one granularity of the rollups: a table suffix, the name of the
// time column and the length of a bucket.
type tier struct {
	suffix string // "_1m", "_1h", "_1d"
	col    string // "minute", "hour", "day"
	us     int64  // bucket length in microseconds
}

// tiers are the rollup tiers, in the order every transaction writes them.
var tiers = []tier{{"_1m", "minute", 60e6}, {"_1h", "hour", 3600e6}, {"_1d", "day", 86400e6}}

type rollupKey struct {
	minute int64 // Unix microseconds of the UTC minute (hour, day: the tier's bucket)
	sensor string
	proto  int16
	app    string
}

type rollupSums struct {
	records, origPkts, respPkts, origIPBytes, respIPBytes, origBytes, respBytes int64
}

type talkerKey struct {
	minute int64
	sensor string
	addr   netip.Addr
}

type pairKey struct {
	minute     int64
	sensor     string
	orig, resp netip.Addr
	proto      int16
}

type portKey struct {
	minute int64
	sensor string
	proto  int16
	port   int32
}

type countryKey struct {
	minute  int64
	sensor  string
	country string
}

// roleSums is a talkers_* or countries_* row's counters.
type roleSums struct{ sentPkts, sentIPBytes, recvPkts, recvIPBytes, records int64 }

// dirSums is a pairs_1m or ports_1m row's counters.
type dirSums struct{ origPkts, respPkts, origIPBytes, respIPBytes, records int64 }

// rollups are one batch's sums in one tier, reused from batch to batch.
type rollups struct {
	tier      tier
	flows     map[rollupKey]rollupSums
	talkers   map[talkerKey]roleSums
	pairs     map[pairKey]dirSums
	ports     map[portKey]dirSums
	countries map[countryKey]roleSums
}

func newRollups(t tier) rollups {
	return rollups{tier: t, flows: map[rollupKey]rollupSums{}, talkers: map[talkerKey]roleSums{},
		pairs: map[pairKey]dirSums{}, ports: map[portKey]dirSums{}, countries: map[countryKey]roleSums{}}
}

func (r *rollups) reset() {
	clear(r.flows)
	clear(r.talkers)
	clear(r.pairs)
	clear(r.ports)
	clear(r.countries)
}

// add is a saturating int64 addition of non-negative counters.
func add(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxInt64
}

// bucketOf is the start of the bucket of length m (microseconds: a minute,
// hour or day) holding us (Unix microseconds), like date_bin('1 minute', t,
// '2000-01-01'): rounded down, also before 1970.
func bucketOf(us, m int64) int64 {
	q := us / m
	if us%m < 0 {
		q--
	}
	return q * m
}

// role adds one role of a record to r: sent and received counts, and the
// record once per key (once is false for the responder's role when it has
// the originator's key).
func (s roleSums) role(sentPkts, sentIPBytes, recvPkts, recvIPBytes int64, once bool) roleSums {
	s.sentPkts = add(s.sentPkts, sentPkts)
	s.sentIPBytes = add(s.sentIPBytes, sentIPBytes)
	s.recvPkts = add(s.recvPkts, recvPkts)
	s.recvIPBytes = add(s.recvIPBytes, recvIPBytes)
	if once {
		s.records++
	}
	return s
}

func (s dirSums) add(op, rp, ob, rb int64) dirSums {
	s.origPkts, s.respPkts = add(s.origPkts, op), add(s.respPkts, rp)
	s.origIPBytes, s.respIPBytes = add(s.origIPBytes, ob), add(s.respIPBytes, rb)
	s.records++
	return s
}

// add adds one record to every rollup.
func (r *rollups) add(x flowRef) {
	f := x.f
	minute := bucketOf(x.start, r.tier.us)
	proto := int16(f.GetProto())
	op, ob := i64(f.GetOrigPkts()), i64(f.GetOrigIpBytes())
	rp, rb := i64(f.GetRespPkts()), i64(f.GetRespIpBytes())

	k := rollupKey{minute: minute, sensor: x.sensor, proto: proto}
	if app := f.GetApp(); app != "" {
		k.app = text(app)
	}
	s := r.flows[k]
	s.records++
	s.origPkts, s.respPkts = add(s.origPkts, op), add(s.respPkts, rp)
	s.origIPBytes, s.respIPBytes = add(s.origIPBytes, ob), add(s.respIPBytes, rb)
	s.origBytes = add(s.origBytes, i64(f.GetOrigBytes()))
	s.respBytes = add(s.respBytes, i64(f.GetRespBytes()))
	r.flows[k] = s

	oa, _ := netip.AddrFromSlice(f.GetOrigAddr()) // 16 bytes stay IPv6 (::ffff:a.b.c.d too), as in flows
	ra, _ := netip.AddrFromSlice(f.GetRespAddr())
	ok, rk := talkerKey{minute, x.sensor, oa}, talkerKey{minute, x.sensor, ra}
	r.talkers[ok] = r.talkers[ok].role(op, ob, rp, rb, true)
	r.talkers[rk] = r.talkers[rk].role(rp, rb, op, ob, rk != ok)

	pk := pairKey{minute, x.sensor, oa, ra, proto}
	r.pairs[pk] = r.pairs[pk].add(op, rp, ob, rb)
	tk := portKey{minute, x.sensor, proto, int32(f.GetRespPort())}
	r.ports[tk] = r.ports[tk].add(op, rp, ob, rb)

	oc, rc := countryKey{minute, x.sensor, ""}, countryKey{minute, x.sensor, ""}
	if c := f.GetOrigCountry(); c != "" {
		oc.country = text(c)
	}
	if c := f.GetRespCountry(); c != "" {
		rc.country = text(c)
	}
	r.countries[oc] = r.countries[oc].role(op, ob, rp, rb, true)
	if rc != oc {
		r.countries[rc] = r.countries[rc].role(rp, rb, op, ob, true)
	}
}

func utcMicro(us int64) time.Time { return time.UnixMicro(us).UTC() }

// queue queues the upserts of r into b, in rollupTables order; each
// statement inserts in key order (ORDER BY), the lock order of concurrent
// writers.
func (r *rollups) queue(b *pgx.Batch) {
	sql := tierSQL[r.tier.suffix]
	if len(r.flows) == 0 {
		return
	}
	{
		n := len(r.flows)
		minute, sensor, proto, app := make([]time.Time, 0, n), make([]string, 0, n), make([]int16, 0, n), make([]string, 0, n)
		c := newCols(7, n)
		for k, s := range r.flows {
			minute, sensor, proto, app = append(minute, utcMicro(k.minute)), append(sensor, k.sensor),
				append(proto, k.proto), append(app, k.app)
			c.add(s.records, s.origPkts, s.respPkts, s.origIPBytes, s.respIPBytes, s.origBytes, s.respBytes)
		}
		b.Queue(sql.rollup, append([]any{minute, sensor, proto, app}, c.args()...)...)
	}
	{
		n := len(r.talkers)
		minute, sensor, addr := make([]time.Time, 0, n), make([]string, 0, n), make([]netip.Addr, 0, n)
		c := newCols(5, n)
		for k, s := range r.talkers {
			minute, sensor, addr = append(minute, utcMicro(k.minute)), append(sensor, k.sensor), append(addr, k.addr)
			c.add(s.sentPkts, s.sentIPBytes, s.recvPkts, s.recvIPBytes, s.records)
		}
		b.Queue(sql.talkers, append([]any{minute, sensor, addr}, c.args()...)...)
	}
	{
		n := len(r.pairs)
		minute, sensor, orig, resp, proto := make([]time.Time, 0, n), make([]string, 0, n),
			make([]netip.Addr, 0, n), make([]netip.Addr, 0, n), make([]int16, 0, n)
		c := newCols(5, n)
		for k, s := range r.pairs {
			minute, sensor, orig, resp, proto = append(minute, utcMicro(k.minute)), append(sensor, k.sensor),
				append(orig, k.orig), append(resp, k.resp), append(proto, k.proto)
			c.add(s.origPkts, s.respPkts, s.origIPBytes, s.respIPBytes, s.records)
		}
		b.Queue(sql.pairs, append([]any{minute, sensor, orig, resp, proto}, c.args()...)...)
	}
	{
		n := len(r.ports)
		minute, sensor, proto, port := make([]time.Time, 0, n), make([]string, 0, n), make([]int16, 0, n), make([]int32, 0, n)
		c := newCols(5, n)
		for k, s := range r.ports {
			minute, sensor, proto, port = append(minute, utcMicro(k.minute)), append(sensor, k.sensor),
				append(proto, k.proto), append(port, k.port)
			c.add(s.origPkts, s.respPkts, s.origIPBytes, s.respIPBytes, s.records)
		}
		b.Queue(sql.ports, append([]any{minute, sensor, proto, port}, c.args()...)...)
	}
	{
		n := len(r.countries)
		minute, sensor, country := make([]time.Time, 0, n), make([]string, 0, n), make([]string, 0, n)
		c := newCols(5, n)
		for k, s := range r.countries {
			minute, sensor, country = append(minute, utcMicro(k.minute)), append(sensor, k.sensor), append(country, k.country)
			c.add(s.sentPkts, s.sentIPBytes, s.recvPkts, s.recvIPBytes, s.records)
		}
		b.Queue(sql.countries, append([]any{minute, sensor, country}, c.args()...)...)
	}
}

// cols are counter columns as arrays.
type cols [][]int64

func newCols(k, n int) cols {
	c := make(cols, k)
	for i := range c {
		c[i] = make([]int64, 0, n)
	}
	return c
}

func (c cols) add(v ...int64) {
	for i := range c {
		c[i] = append(c[i], v[i])
	}
}

func (c cols) args() []any {
	a := make([]any, len(c))
	for i := range c {
		a[i] = c[i]
	}
	return a
}

// upsertRollup adds one batch's flows_1m sums ($1…$11: minute, sensor,
// proto, app, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
// orig_bytes, resp_bytes arrays).
const upsertRollup = `INSERT INTO flows_1m AS r (minute, sensor, proto, app, records, orig_pkts, resp_pkts,
	orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::int2[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
	$8::int8[], $9::int8[], $10::int8[], $11::int8[]) ORDER BY 1, 2, 3, 4
ON CONFLICT (minute, sensor, proto, app) DO UPDATE SET
	records = r.records + EXCLUDED.records,
	orig_pkts = r.orig_pkts + EXCLUDED.orig_pkts, resp_pkts = r.resp_pkts + EXCLUDED.resp_pkts,
	orig_ip_bytes = r.orig_ip_bytes + EXCLUDED.orig_ip_bytes, resp_ip_bytes = r.resp_ip_bytes + EXCLUDED.resp_ip_bytes,
	orig_bytes = r.orig_bytes + EXCLUDED.orig_bytes, resp_bytes = r.resp_bytes + EXCLUDED.resp_bytes`

// upsertTalkers adds talkers_1m sums ($1…$8: minute, sensor, addr,
// sent_pkts, sent_ip_bytes, recv_pkts, recv_ip_bytes, records).
const upsertTalkers = `INSERT INTO talkers_1m AS r (minute, sensor, addr, sent_pkts, sent_ip_bytes, recv_pkts,
	recv_ip_bytes, records)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::inet[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
	$8::int8[]) ORDER BY 1, 2, 3
ON CONFLICT (minute, sensor, addr) DO UPDATE SET
	sent_pkts = r.sent_pkts + EXCLUDED.sent_pkts, sent_ip_bytes = r.sent_ip_bytes + EXCLUDED.sent_ip_bytes,
	recv_pkts = r.recv_pkts + EXCLUDED.recv_pkts, recv_ip_bytes = r.recv_ip_bytes + EXCLUDED.recv_ip_bytes,
	records = r.records + EXCLUDED.records`

// upsertPairs adds pairs_1m sums ($1…$10: minute, sensor, orig_addr,
// resp_addr, proto, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
// records).
const upsertPairs = `INSERT INTO pairs_1m AS r (minute, sensor, orig_addr, resp_addr, proto, orig_pkts, resp_pkts,
	orig_ip_bytes, resp_ip_bytes, records)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::inet[], $4::inet[], $5::int2[], $6::int8[], $7::int8[],
	$8::int8[], $9::int8[], $10::int8[]) ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (minute, sensor, orig_addr, resp_addr, proto) DO UPDATE SET
	orig_pkts = r.orig_pkts + EXCLUDED.orig_pkts, resp_pkts = r.resp_pkts + EXCLUDED.resp_pkts,
	orig_ip_bytes = r.orig_ip_bytes + EXCLUDED.orig_ip_bytes, resp_ip_bytes = r.resp_ip_bytes + EXCLUDED.resp_ip_bytes,
	records = r.records + EXCLUDED.records`

// upsertPorts adds ports_1m sums ($1…$9: minute, sensor, proto, resp_port,
// orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, records).
const upsertPorts = `INSERT INTO ports_1m AS r (minute, sensor, proto, resp_port, orig_pkts, resp_pkts,
	orig_ip_bytes, resp_ip_bytes, records)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::int2[], $4::int4[], $5::int8[], $6::int8[], $7::int8[],
	$8::int8[], $9::int8[]) ORDER BY 1, 2, 3, 4
ON CONFLICT (minute, sensor, proto, resp_port) DO UPDATE SET
	orig_pkts = r.orig_pkts + EXCLUDED.orig_pkts, resp_pkts = r.resp_pkts + EXCLUDED.resp_pkts,
	orig_ip_bytes = r.orig_ip_bytes + EXCLUDED.orig_ip_bytes, resp_ip_bytes = r.resp_ip_bytes + EXCLUDED.resp_ip_bytes,
	records = r.records + EXCLUDED.records`

// upsertCountries adds countries_1m sums ($1…$8: minute, sensor, country,
// sent_pkts, sent_ip_bytes, recv_pkts, recv_ip_bytes, records).
const upsertCountries = `INSERT INTO countries_1m AS r (minute, sensor, country, sent_pkts, sent_ip_bytes, recv_pkts,
	recv_ip_bytes, records)
SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
	$8::int8[]) ORDER BY 1, 2, 3
ON CONFLICT (minute, sensor, country) DO UPDATE SET
	sent_pkts = r.sent_pkts + EXCLUDED.sent_pkts, sent_ip_bytes = r.sent_ip_bytes + EXCLUDED.sent_ip_bytes,
	recv_pkts = r.recv_pkts + EXCLUDED.recv_pkts, recv_ip_bytes = r.recv_ip_bytes + EXCLUDED.recv_ip_bytes,
	records = r.records + EXCLUDED.records`

// tierStatements are the upserts of one tier.
type tierStatements struct{ rollup, talkers, pairs, ports, countries string }

// tierSQL are the upserts of each tier (by suffix): the per-minute
// statements above with the tier's tables and time column.
var tierSQL = map[string]tierStatements{}

func init() {
	for _, t := range tiers {
		r := strings.NewReplacer("_1m", t.suffix, "minute", t.col)
		tierSQL[t.suffix] = tierStatements{r.Replace(upsertRollup), r.Replace(upsertTalkers), r.Replace(upsertPairs),
			r.Replace(upsertPorts), r.Replace(upsertCountries)}
	}
}

// flowBatch is flows encoded for COPY plus what the write needs besides
// them. Its buffers are reused from batch to batch (Store.flowBufs).
type flowBatch struct {
	copy    copyBuf
	refs    []flowRef // the rows in copy, in order
	rows    int
	invalid int
	days    map[time.Time]struct{}
	sensors map[string]*sensorSeen
	rollup  []rollups // one per tier, in tiers order
}

func newFlowBatch() *flowBatch {
	b := &flowBatch{days: map[time.Time]struct{}{}, sensors: map[string]*sensorSeen{}}
	for _, t := range tiers {
		b.rollup = append(b.rollup, newRollups(t))
	}
	return b
}

// resetRollups empties the sums of every tier.
func (b *flowBatch) resetRollups() {
	for i := range b.rollup {
		b.rollup[i].reset()
	}
}

// sum adds x to every tier.
func (b *flowBatch) sum(x flowRef) {
	for i := range b.rollup {
		b.rollup[i].add(x)
	}
}

// queue queues every tier's upserts into pb.
func (b *flowBatch) queue(pb *pgx.Batch) {
	for i := range b.rollup {
		b.rollup[i].queue(pb)
	}
}

func (b *flowBatch) reset() {
	b.copy.reset()
	clear(b.refs) // drop the messages
	b.refs = b.refs[:0]
	b.rows, b.invalid = 0, 0
	clear(b.days)
	clear(b.sensors)
	b.resetRollups()
	// A rare huge batch must not pin its buffer forever.
	if cap(b.copy.b) > 64<<20 {
		b.copy.b = append([]byte(nil), copySignature...)
		b.refs = nil
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
		b.refs = append(b.refs, flowRef{f: f, sensor: sensor, start: start})
		b.rows++

		b.days[dayOf(ts(f.GetStartNs()))] = struct{}{}
		s := b.sensors[sensor]
		if s == nil {
			s = &sensorSeen{}
			b.sensors[sensor] = s
		}
		if e := ts(f.GetEndNs()); e.After(s.lastFlow) {
			s.lastFlow = e
		}
	}
}

// sumAll sums every row into b.rollup (the fast path: all rows are new).
func (b *flowBatch) sumAll() {
	b.resetRollups()
	for _, x := range b.refs {
		b.sum(x)
	}
}

// sumInserted sums into b.rollup the rows whose id is in inserted, each id
// once (a batch may hold a row twice; it was inserted once).
func (b *flowBatch) sumInserted(inserted map[string]struct{}) {
	b.resetRollups()
	for _, x := range b.refs {
		id := text(x.f.GetId())
		if _, ok := inserted[id]; ok {
			delete(inserted, id)
			b.sum(x)
		}
	}
}
