package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// BenchmarkPostgresFloor measures what PostgreSQL itself spends to store
// flows, outside the sink's design choices: the benchmark's flows, encoded
// by the sink's own COPY encoder (flowRow, so the bytes on the wire are the
// sink's), copied in batches of 5000 into a plain table shaped like flows
// (CREATE TABLE … (LIKE flows): no partition routing, no ledger, no
// rollup_pending) with, in turn, no index, only the primary key (start, id)
// that DESIGN.md requires per flow record, the least the queries
// need (index=required: the key and bloom BRIN indexes on the Community ID
// and the addresses), the key and the BRIN indexes of migrations
// 00011/00014, and those plus the GIN index on both addresses of 00012 (its
// pending list merged at the end, counted). rollups=1m-deltas is
// the least a per-minute rollup can cost: each batch aggregated in Go into
// its talkers, pairs, ports, protocol and country rows of the minute, and
// those rows appended by COPY into narrow tables with only a BRIN index on
// the minute (no key, no upsert, no hour or day tier). rollups=1m-arrays
// packs the same rows into one row per batch and rollup, a column of arrays
// each (the sensor, then minute[], key[]…, counter[]…): the cheapest form
// SQL can still read, at the price of unnest for every query (stored
// uncompressed: STORAGE EXTERNAL).
//
// Metrics: pg-cpu-ns/row is the CPU of the backends (from
// /proc/<pid>/schedstat, so the server must run on this machine) per flow
// row; go-cpu-ns/row the sink-side encoding (and, for the deltas, the
// aggregation) per flow; rows/s-2-cores the flows per second two idle cores
// could store at that cost (2e9 / (pg + go)), before NATS, WAL writer,
// checkpointer and autovacuum; delta-rows/flow the rollup rows a flow
// brings.
//
// Run: go test -run '^$' -bench PostgresFloor -benchtime 40x ./sink/internal/store
// (40 batches, 200,000 flows a case).
func BenchmarkPostgresFloor(b *testing.B) {
	for _, shape := range []string{"scan", "rich"} {
		for _, idx := range []string{"none", "key", "required", "key+brin", "key+brin+gin"} {
			b.Run("flows="+shape+"/index="+idx, func(b *testing.B) { benchFloorFlows(b, shape == "scan", idx) })
		}
	}
	for _, shape := range []string{"scan", "rich"} {
		b.Run("flows="+shape+"/layout=packed/index=key", func(b *testing.B) { benchFloorPacked(b, shape == "scan") })
	}
	b.Run("rollups=1m-deltas/flows=spread", func(b *testing.B) { benchFloorDeltas(b, "rows") })
	b.Run("rollups=1m-arrays/flows=spread", func(b *testing.B) { benchFloorDeltas(b, "arrays") })
	b.Run("rollups=1m-packed/flows=spread", func(b *testing.B) { benchFloorDeltas(b, "packed") })
}

// floorIndexes are the index statements of each case, on table floor_flows.
var floorIndexes = map[string][]string{
	"none": nil,
	"key":  {`ALTER TABLE floor_flows ADD PRIMARY KEY (start, id)`},
	// The least the queries need, each by its cheapest index: the
	// key (idempotence; time range, and sensor as a filter), a bloom BRIN on
	// the Community ID and on each address (the address search by BRIN
	// bloom alone took 126 / 172 ms p50 / p99 over 10 M flows: too slow,
	// but the cheapest).
	"required": {`ALTER TABLE floor_flows ADD PRIMARY KEY (start, id)`,
		`CREATE INDEX ON floor_flows USING brin (community_id bytea_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
			WITH (pages_per_range = 16, autosummarize = on)`,
		`CREATE INDEX ON floor_flows USING brin (orig_addr inet_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
			WITH (pages_per_range = 16, autosummarize = on)`,
		`CREATE INDEX ON floor_flows USING brin (resp_addr inet_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
			WITH (pages_per_range = 16, autosummarize = on)`},
	"key+brin": {`ALTER TABLE floor_flows ADD PRIMARY KEY (start, id)`,
		`CREATE INDEX ON floor_flows USING brin (start) WITH (pages_per_range = 16, autosummarize = on)`,
		`CREATE INDEX ON floor_flows USING brin (batch) WITH (pages_per_range = 16, autosummarize = on)`,
		`CREATE INDEX ON floor_flows USING brin (id uuid_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
			WITH (pages_per_range = 16, autosummarize = on)`,
		`CREATE INDEX ON floor_flows USING brin (community_id bytea_bloom_ops (n_distinct_per_range = 1000, false_positive_rate = 0.001))
			WITH (pages_per_range = 16, autosummarize = on)`},
}

func init() {
	floorIndexes["key+brin+gin"] = append(append([]string(nil), floorIndexes["key+brin"]...),
		`CREATE INDEX floor_flows_gin ON floor_flows USING gin ((ARRAY[orig_addr, resp_addr]))`)
}

func benchFloorFlows(b *testing.B, scan bool, idx string) {
	app := fmt.Sprintf("sinkfloor_%d", time.Now().UnixNano())
	s, _ := openApp(b, app)
	ctx := context.Background()
	for _, q := range append([]string{`CREATE TABLE floor_flows (LIKE flows INCLUDING DEFAULTS)`}, floorIndexes[idx]...) {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	copySQL := "COPY floor_flows (" + quotedCols(flowsTable.cols) + ") FROM STDIN (FORMAT binary)"
	start := time.Now().UTC().Truncate(time.Hour)
	const perBatch = 5000
	fb := newFlowBatch()
	pg0 := backendCPU(b, s, app)
	var goCPU time.Duration
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		batch := benchBatch(n, perBatch, 0, scan, start)
		b.StartTimer()
		c0 := processCPU()
		fb.reset()
		fb.addFlows(batch)
		fb.copy.trailer()
		fb.copy.setBatch(fb.offsets, int64(n+1))
		goCPU += processCPU() - c0
		tag, err := conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(fb.copy.b), copySQL)
		if err != nil || tag.RowsAffected() != perBatch {
			b.Fatalf("copy: %v, %v", tag, err)
		}
	}
	if idx == "key+brin+gin" {
		if _, err := conn.Exec(ctx, `SELECT gin_clean_pending_list('floor_flows_gin')`); err != nil {
			b.Fatal(err)
		}
	}
	reportFloor(b, s, app, pg0, goCPU, float64(b.N*perBatch))
}

func benchFloorPacked(b *testing.B, scan bool) {
	app := fmt.Sprintf("sinkfloor_%d", time.Now().UnixNano())
	s, _ := openApp(b, app)
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, `CREATE TABLE floor_packed (start timestamptz NOT NULL, id uuid NOT NULL,
		batch bigint NOT NULL, rec bytea NOT NULL, PRIMARY KEY (start, id))`); err != nil {
		b.Fatal(err)
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	start := time.Now().UTC().Truncate(time.Hour)
	const perBatch = 5000
	var c copyBuf
	wire := make([][]byte, perBatch)
	pg0 := backendCPU(b, s, app)
	var goCPU time.Duration
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		batch := benchBatch(n, perBatch, 0, scan, start)
		for i, f := range batch.Flows {
			if wire[i], err = proto.Marshal(f); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		c0 := processCPU()
		c.reset()
		for i, f := range batch.Flows {
			c.fields(4)
			c.time(micros(f.GetStartNs()))
			c.uuid(f.GetId())
			c.int64(int64(n + 1))
			c.bytea(wire[i])
		}
		c.trailer()
		goCPU += processCPU() - c0
		tag, err := conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(c.b), "COPY floor_packed FROM STDIN (FORMAT binary)")
		if err != nil || tag.RowsAffected() != perBatch {
			b.Fatalf("copy: %v, %v", tag, err)
		}
	}
	reportFloor(b, s, app, pg0, goCPU, float64(b.N*perBatch))
}

// reportFloor reports the floor metrics for rows flows.
func reportFloor(b *testing.B, s *Store, app string, pg0, goCPU time.Duration, rows float64) {
	b.ReportMetric(float64(goCPU.Nanoseconds())/rows, "go-cpu-ns/row")
	if pg0 < 0 {
		return
	}
	pg1 := backendCPU(b, s, app)
	if pg1 < 0 {
		return
	}
	pg := float64((pg1 - pg0).Nanoseconds()) / rows
	b.ReportMetric(pg, "pg-cpu-ns/row")
	b.ReportMetric(2e9/(pg+float64(goCPU.Nanoseconds())/rows), "rows/s-2-cores")
}

// Keys of the per-minute rollups (rollup.go), for the Go aggregation.
type (
	floorTalker struct {
		minute int64
		addr   netip.Addr
	}
	floorPair struct {
		minute     int64
		orig, resp netip.Addr
		proto      uint32
	}
	floorPort struct {
		minute int64
		proto  uint32
		port   uint32
	}
	floorProto struct {
		minute int64
		proto  uint32
		app    string
	}
	floorCountry struct {
		minute  int64
		country string
	}
	floorSums [5]int64
)

func benchFloorDeltas(b *testing.B, mode string) {
	arrays := mode == "arrays"
	app := fmt.Sprintf("sinkfloor_%d", time.Now().UnixNano())
	s, _ := openApp(b, app)
	ctx := context.Background()
	tables := map[string]string{
		"floor_talkers":   "minute timestamptz, sensor text, addr inet, a bigint, b bigint, c bigint, d bigint, records bigint",
		"floor_pairs":     "minute timestamptz, sensor text, orig_addr inet, resp_addr inet, proto smallint, a bigint, b bigint, c bigint, d bigint, records bigint",
		"floor_ports":     "minute timestamptz, sensor text, proto smallint, resp_port integer, a bigint, b bigint, c bigint, d bigint, records bigint",
		"floor_protos":    "minute timestamptz, sensor text, proto smallint, app text, a bigint, b bigint, c bigint, d bigint, records bigint",
		"floor_countries": "minute timestamptz, sensor text, country text, a bigint, b bigint, c bigint, d bigint, records bigint",
	}
	if arrays {
		tables = map[string]string{
			"floor_talkers":   "sensor text, minute timestamptz[], addr inet[], a int8[], b int8[], c int8[], d int8[], records int8[]",
			"floor_pairs":     "sensor text, minute timestamptz[], orig_addr inet[], resp_addr inet[], proto int2[], a int8[], b int8[], c int8[], d int8[], records int8[]",
			"floor_ports":     "sensor text, minute timestamptz[], proto int2[], resp_port int4[], a int8[], b int8[], c int8[], d int8[], records int8[]",
			"floor_protos":    "sensor text, minute timestamptz[], proto int2[], app text[], a int8[], b int8[], c int8[], d int8[], records int8[]",
			"floor_countries": "sensor text, minute timestamptz[], country text[], a int8[], b int8[], c int8[], d int8[], records int8[]",
		}
	}
	if mode == "packed" {
		for name := range tables {
			tables[name] = "sensor text, rec bytea"
		}
	}
	for name, cols := range tables {
		if mode == "packed" {
			if _, err := s.pool.Exec(ctx, "CREATE TABLE "+name+" ("+cols+"); ALTER TABLE "+name+" ALTER COLUMN rec SET STORAGE EXTERNAL"); err != nil {
				b.Fatal(err)
			}
			continue
		}
		if arrays {
			if _, err := s.pool.Exec(ctx, "CREATE TABLE "+name+" ("+cols+")"); err != nil {
				b.Fatal(err)
			}
			// Uncompressed out-of-line storage: the cheapest measured (the
			// default EXTENDED, pglz, took 3.2 µs a flow, MAIN 3.8, EXTERNAL 2.4).
			if _, err := s.pool.Exec(ctx, `DO $$ DECLARE c text; BEGIN FOR c IN SELECT attname FROM pg_attribute
				WHERE attrelid = '`+name+`'::regclass AND attnum > 1 LOOP
				EXECUTE format('ALTER TABLE `+name+` ALTER COLUMN %I SET STORAGE EXTERNAL', c); END LOOP; END $$`); err != nil {
				b.Fatal(err)
			}
			continue
		}
		if _, err := s.pool.Exec(ctx, "CREATE TABLE "+name+" ("+cols+")"); err != nil {
			b.Fatal(err)
		}
		if _, err := s.pool.Exec(ctx, "CREATE INDEX ON "+name+" USING brin (minute)"); err != nil {
			b.Fatal(err)
		}
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Release()
	start := time.Now().UTC().Truncate(time.Hour)
	const perBatch = 5000
	talkers, pairs, ports := map[floorTalker]*floorSums{}, map[floorPair]*floorSums{}, map[floorPort]*floorSums{}
	protos, ctries := map[floorProto]*floorSums{}, map[floorCountry]*floorSums{}
	add := func(s *floorSums, v ...int64) {
		for i, x := range v {
			s[i] += x
		}
	}
	var bufs [5]copyBuf
	var deltaRows int
	pg0 := backendCPU(b, s, app)
	var goCPU time.Duration
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		batch := benchBatch(n, perBatch, 0, false, start)
		b.StartTimer()
		c0 := processCPU()
		clear(talkers)
		clear(pairs)
		clear(ports)
		clear(protos)
		clear(ctries)
		get := func(m map[floorTalker]*floorSums, k floorTalker) *floorSums {
			v := m[k]
			if v == nil {
				v = &floorSums{}
				m[k] = v
			}
			return v
		}
		for _, f := range batch.Flows {
			min := micros(f.GetStartNs()) / 60e6 * 60e6
			o, _ := netip.AddrFromSlice(f.GetOrigAddr())
			r, _ := netip.AddrFromSlice(f.GetRespAddr())
			op, ob, rp, rb := i64(f.GetOrigPkts()), i64(f.GetOrigIpBytes()), i64(f.GetRespPkts()), i64(f.GetRespIpBytes())
			add(get(talkers, floorTalker{min, o}), op, ob, rp, rb, 1)
			if r != o {
				add(get(talkers, floorTalker{min, r}), rp, rb, op, ob, 1)
			}
			pk := floorPair{min, o, r, f.GetProto()}
			if pairs[pk] == nil {
				pairs[pk] = &floorSums{}
			}
			add(pairs[pk], op, rp, ob, rb, 1)
			tk := floorPort{min, f.GetProto(), f.GetRespPort()}
			if ports[tk] == nil {
				ports[tk] = &floorSums{}
			}
			add(ports[tk], op, rp, ob, rb, 1)
			ak := floorProto{min, f.GetProto(), f.GetApp()}
			if protos[ak] == nil {
				protos[ak] = &floorSums{}
			}
			add(protos[ak], op, rp, ob, rb, 1)
			for i, c := range []string{f.GetOrigCountry(), f.GetRespCountry()} {
				if i == 1 && c == f.GetOrigCountry() {
					break
				}
				ck := floorCountry{min, c}
				if ctries[ck] == nil {
					ctries[ck] = &floorSums{}
				}
				if i == 0 {
					add(ctries[ck], op, ob, rp, rb, 1)
				} else {
					add(ctries[ck], rp, rb, op, ob, 1)
				}
			}
		}
		for i := range bufs {
			bufs[i].reset()
		}
		row := func(c *copyBuf, fields int, minute int64) {
			c.fields(fields)
			c.time(minute)
			c.text("bench")
		}
		sums := func(c *copyBuf, v *floorSums) {
			for _, x := range v {
				c.int64(x)
			}
		}
		if mode == "packed" {
			encodeFloorPacked(&bufs, talkers, pairs, ports, protos, ctries)
		} else if arrays {
			encodeFloorArrays(&bufs, talkers, pairs, ports, protos, ctries)
		} else {
			for k, v := range talkers {
				row(&bufs[0], 8, k.minute)
				bufs[0].inet(k.addr.AsSlice())
				sums(&bufs[0], v)
			}
			for k, v := range pairs {
				row(&bufs[1], 10, k.minute)
				bufs[1].inet(k.orig.AsSlice())
				bufs[1].inet(k.resp.AsSlice())
				bufs[1].int16(int16(k.proto))
				sums(&bufs[1], v)
			}
			for k, v := range ports {
				row(&bufs[2], 9, k.minute)
				bufs[2].int16(int16(k.proto))
				bufs[2].int32(int32(k.port))
				sums(&bufs[2], v)
			}
			for k, v := range protos {
				row(&bufs[3], 9, k.minute)
				bufs[3].int16(int16(k.proto))
				bufs[3].text(k.app)
				sums(&bufs[3], v)
			}
			for k, v := range ctries {
				row(&bufs[4], 8, k.minute)
				bufs[4].text(k.country)
				sums(&bufs[4], v)
			}
		}
		for i := range bufs {
			bufs[i].trailer()
		}
		goCPU += processCPU() - c0
		deltaRows += len(talkers) + len(pairs) + len(ports) + len(protos) + len(ctries)
		for i, t := range []string{"floor_talkers", "floor_pairs", "floor_ports", "floor_protos", "floor_countries"} {
			if _, err := conn.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(bufs[i].b), "COPY "+t+" FROM STDIN (FORMAT binary)"); err != nil {
				b.Fatalf("copy %s: %v", t, err)
			}
		}
	}
	rows := float64(b.N * perBatch)
	b.ReportMetric(float64(deltaRows)/rows, "delta-rows/flow")
	reportFloor(b, s, app, pg0, goCPU, rows)
	// The deltas must sum to the flows written (a floor that stored less
	// would not be one); a packed batch is one row a rollup.
	if mode == "packed" {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM floor_talkers`).Scan(&n); err != nil || n != b.N {
			b.Fatalf("floor_talkers holds %d rows, %v; want %d", n, err, b.N)
		}
		return
	}
	var records int64
	unnest := func(t string) string {
		if arrays {
			return "(SELECT unnest(records) records FROM " + t + ") u"
		}
		return t
	}
	if err := conn.QueryRow(ctx, `SELECT sum(records) FROM `+unnest("floor_protos")).Scan(&records); err != nil || records != int64(rows) {
		b.Fatalf("floor_protos holds %d records, %v; want %d", records, err, int64(rows))
	}
	var talked int64
	if err := conn.QueryRow(ctx, `SELECT sum(records) FROM `+unnest("floor_talkers")).Scan(&talked); err != nil || talked != 2*int64(rows) {
		b.Fatalf("floor_talkers holds %d records, %v; want %d (two ends a flow)", talked, err, 2*int64(rows))
	}
}

// arrayField appends one binary array column of n elements of type oid;
// elems appends the elements (each with its length, as copyBuf's methods
// do). Format: PostgreSQL's array_send (ndim, has-null flag, element type,
// then per dimension its length and lower bound).
func arrayField(c *copyBuf, oid uint32, n int, elems func()) {
	at := len(c.b)
	c.b = append(c.b, 0, 0, 0, 0)
	for _, v := range []uint32{1, 0, oid, uint32(n), 1} {
		c.b = binary.BigEndian.AppendUint32(c.b, v)
	}
	elems()
	binary.BigEndian.PutUint32(c.b[at:], uint32(len(c.b)-at-4))
}

// PostgreSQL type OIDs (pg_type.dat).
const (
	oidInt2        = 21
	oidInt4        = 23
	oidInt8        = 20
	oidText        = 25
	oidInet        = 869
	oidTimestamptz = 1184
)

// encodeFloorArrays writes each rollup's rows as one row of arrays into bufs.
func encodeFloorArrays(bufs *[5]copyBuf, talkers map[floorTalker]*floorSums, pairs map[floorPair]*floorSums,
	ports map[floorPort]*floorSums, protos map[floorProto]*floorSums, ctries map[floorCountry]*floorSums) {
	sums := func(c *copyBuf, vs []*floorSums) {
		for i := range 5 {
			arrayField(c, oidInt8, len(vs), func() {
				for _, v := range vs {
					c.int64(v[i])
				}
			})
		}
	}
	minutes := func(c *copyBuf, ms []int64) {
		arrayField(c, oidTimestamptz, len(ms), func() {
			for _, m := range ms {
				c.time(m)
			}
		})
	}
	{
		c, n := &bufs[0], len(talkers)
		ks, vs := make([]floorTalker, 0, n), make([]*floorSums, 0, n)
		for k, v := range talkers {
			ks, vs = append(ks, k), append(vs, v)
		}
		ms := make([]int64, n)
		for i, k := range ks {
			ms[i] = k.minute
		}
		c.fields(8)
		c.text("bench")
		minutes(c, ms)
		arrayField(c, oidInet, n, func() {
			for _, k := range ks {
				c.inet(k.addr.AsSlice())
			}
		})
		sums(c, vs)
	}
	{
		c, n := &bufs[1], len(pairs)
		ks, vs := make([]floorPair, 0, n), make([]*floorSums, 0, n)
		for k, v := range pairs {
			ks, vs = append(ks, k), append(vs, v)
		}
		ms := make([]int64, n)
		for i, k := range ks {
			ms[i] = k.minute
		}
		c.fields(10)
		c.text("bench")
		minutes(c, ms)
		arrayField(c, oidInet, n, func() {
			for _, k := range ks {
				c.inet(k.orig.AsSlice())
			}
		})
		arrayField(c, oidInet, n, func() {
			for _, k := range ks {
				c.inet(k.resp.AsSlice())
			}
		})
		arrayField(c, oidInt2, n, func() {
			for _, k := range ks {
				c.int16(int16(k.proto))
			}
		})
		sums(c, vs)
	}
	{
		c, n := &bufs[2], len(ports)
		ks, vs := make([]floorPort, 0, n), make([]*floorSums, 0, n)
		for k, v := range ports {
			ks, vs = append(ks, k), append(vs, v)
		}
		ms := make([]int64, n)
		for i, k := range ks {
			ms[i] = k.minute
		}
		c.fields(9)
		c.text("bench")
		minutes(c, ms)
		arrayField(c, oidInt2, n, func() {
			for _, k := range ks {
				c.int16(int16(k.proto))
			}
		})
		arrayField(c, oidInt4, n, func() {
			for _, k := range ks {
				c.int32(int32(k.port))
			}
		})
		sums(c, vs)
	}
	{
		c, n := &bufs[3], len(protos)
		ks, vs := make([]floorProto, 0, n), make([]*floorSums, 0, n)
		for k, v := range protos {
			ks, vs = append(ks, k), append(vs, v)
		}
		ms := make([]int64, n)
		for i, k := range ks {
			ms[i] = k.minute
		}
		c.fields(9)
		c.text("bench")
		minutes(c, ms)
		arrayField(c, oidInt2, n, func() {
			for _, k := range ks {
				c.int16(int16(k.proto))
			}
		})
		arrayField(c, oidText, n, func() {
			for _, k := range ks {
				c.text(k.app)
			}
		})
		sums(c, vs)
	}
	{
		c, n := &bufs[4], len(ctries)
		ks, vs := make([]floorCountry, 0, n), make([]*floorSums, 0, n)
		for k, v := range ctries {
			ks, vs = append(ks, k), append(vs, v)
		}
		ms := make([]int64, n)
		for i, k := range ks {
			ms[i] = k.minute
		}
		c.fields(8)
		c.text("bench")
		minutes(c, ms)
		arrayField(c, oidText, n, func() {
			for _, k := range ks {
				c.text(k.country)
			}
		})
		sums(c, vs)
	}
}

// encodeFloorPacked writes each rollup's rows as one row (sensor, rec) per
// batch, rec the rows as fixed-width little-endian records: the minute
// (Unix µs), the key (addresses as 16 bytes, numbers as 2 or 4 bytes, a
// string with a 1-byte length) and the 5 counters.
func encodeFloorPacked(bufs *[5]copyBuf, talkers map[floorTalker]*floorSums, pairs map[floorPair]*floorSums,
	ports map[floorPort]*floorSums, protos map[floorProto]*floorSums, ctries map[floorCountry]*floorSums) {
	le := binary.LittleEndian
	put := func(c *copyBuf, rec []byte) {
		c.fields(2)
		c.text("bench")
		c.bytea(rec)
	}
	sums := func(r []byte, v *floorSums) []byte {
		for _, x := range v {
			r = le.AppendUint64(r, uint64(x))
		}
		return r
	}
	var r []byte
	for k, v := range talkers {
		r = le.AppendUint64(r, uint64(k.minute))
		a := k.addr.As16()
		r = sums(append(r, a[:]...), v)
	}
	put(&bufs[0], r)
	r = nil
	for k, v := range pairs {
		r = le.AppendUint64(r, uint64(k.minute))
		o, d := k.orig.As16(), k.resp.As16()
		r = append(append(r, o[:]...), d[:]...)
		r = sums(le.AppendUint16(r, uint16(k.proto)), v)
	}
	put(&bufs[1], r)
	r = nil
	for k, v := range ports {
		r = le.AppendUint64(r, uint64(k.minute))
		r = sums(le.AppendUint32(le.AppendUint16(r, uint16(k.proto)), k.port), v)
	}
	put(&bufs[2], r)
	r = nil
	for k, v := range protos {
		r = le.AppendUint64(r, uint64(k.minute))
		r = le.AppendUint16(r, uint16(k.proto))
		r = sums(append(append(r, byte(len(k.app))), k.app...), v)
	}
	put(&bufs[3], r)
	r = nil
	for k, v := range ctries {
		r = le.AppendUint64(r, uint64(k.minute))
		r = sums(append(append(r, byte(len(k.country))), k.country...), v)
	}
	put(&bufs[4], r)
}
