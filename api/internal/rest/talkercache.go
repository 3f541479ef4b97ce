package rest

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultTalkerCacheBytes is the default bound of the TalkerCache: 256 MiB,
// about 5.5 M cached rollup rows (48 bytes each), e.g. a day of per-minute
// buckets of 4,000 talkers, or 24 hours and two hours of minutes of the
// benchmark's 25,000 talkers an hour (docs/PERFORMANCE.md).
const DefaultTalkerCacheBytes = 256 << 20

// TalkerCache is an exact in-memory cache of the talkers rollup buckets
// (one minute of talkers_1m, one hour of talkers_1h, one day of talkers_1d:
// each bucket's rows, all sensors) that top talkers (sides both, src, dst)
// adds up in Go instead of in one SQL GROUP BY over tens of thousands of
// rollup rows a minute. The seconds of a range that cut a minute still come
// from flows (a small SQL, as rollupFrom does), and pairs (side=pair) stay
// on SQL.
//
// Exactness without help from the sink: the sink's rollup job adds a flow
// record to every rollup of its minute, hour and day in one transaction,
// and a bucket's sum(records) in flows_<tier> only grows (retention drops
// whole days: it becomes 0). That sum is the bucket's version. A request
// reads the versions of all its buckets (one small GROUP BY per piece of the
// range) before it loads any bucket; a bucket cached with another version
// (or not cached) is loaded again, with one SQL per piece, and stored with
// the version read before the load (the data loaded may be newer: the next
// request loads it again). So an answer equals the SQL GROUP BY over the
// same rollups, and so over flows.
//
// Memory is bounded by an LRU over the buckets' bytes (48 per row: two
// int32 ids, five int64 counters) plus the interned addresses (their text
// and 16 bytes of overhead each, whose table is emptied together with
// every bucket when it alone would exceed a quarter of the bound). It is
// safe for concurrent use.
type TalkerCache struct {
	max int64

	mu      sync.Mutex
	bytes   int64 // buckets' bytes + interned addresses'
	lru     *list.List
	buckets map[tcKey]*list.Element // of *tcBucket
	ids     map[string]int32        // interned addr::text and sensor
	names   []string
	nameB   int64
	gen     uint64 // incremented when the interned ids are dropped (resetLocked)
	loadsN  atomic.Int64

	collProbed, collBytewise bool

	hits, misses, loads, evictions prometheus.Counter
	bytesG                         prometheus.Gauge
}

// tcKey names a bucket: tier suffix (_1m, _1h, _1d) and its start (Unix s).
type tcKey struct {
	tier  string
	start int64
}

// tcBucket is one cached rollup bucket: row i is sensor sensor[i], address
// addr[i] (interned ids) and counters vals[5i:5i+5] = sent IP bytes, received
// IP bytes, sent packets, received packets, records.
type tcBucket struct {
	key     tcKey
	version int64
	sensor  []int32
	addr    []int32
	vals    []int64
}

func (b *tcBucket) size() int64 { return int64(len(b.addr))*48 + 128 }

// NewTalkerCache returns a cache of at most maxBytes (> 0) whose metrics
// (netwatch_api_rollup_cache_*: hits, misses, loads, evictions, bytes) are
// registered on reg when it is not nil.
func NewTalkerCache(maxBytes int64, reg prometheus.Registerer) *TalkerCache {
	c := &TalkerCache{max: maxBytes, lru: list.New(), buckets: map[tcKey]*list.Element{}, ids: map[string]int32{},
		hits: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_rollup_cache_hits_total",
			Help: "Rollup buckets top talkers found in the cache at their current version."}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_rollup_cache_misses_total",
			Help: "Rollup buckets top talkers had to load (absent, evicted or changed since cached)."}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_rollup_cache_loads_total",
			Help: "SQL queries that loaded rollup buckets into the cache (one per tier and range of a request)."}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_rollup_cache_evictions_total",
			Help: "Rollup buckets evicted from the cache to keep it within its bytes."}),
		bytesG: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_api_rollup_cache_bytes",
			Help: "Bytes held by the rollup cache (buckets and interned addresses)."}),
	}
	if reg != nil {
		reg.MustRegister(c.hits, c.misses, c.loads, c.evictions, c.bytesG)
	}
	return c
}

// Reset empties the cache (the benchmark's cold runs).
func (c *TalkerCache) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resetLocked()
}

func (c *TalkerCache) resetLocked() {
	c.gen++
	c.lru.Init()
	c.buckets = map[tcKey]*list.Element{}
	c.ids = map[string]int32{}
	c.names = nil
	c.nameB, c.bytes = 0, 0
	c.bytesG.Set(0)
}

// bytewise reports whether the database orders text as Go compares strings
// (bytewise: collation C, POSIX or C.UTF-8), so that the cache's tie-break
// between equal values is the SQL's ORDER BY host(addr); probed once.
func (c *TalkerCache) bytewise(ctx context.Context, a *API) (bool, error) {
	c.mu.Lock()
	probed, ok := c.collProbed, c.collBytewise
	c.mu.Unlock()
	if probed {
		return ok, nil
	}
	probe := []string{"10.0.0.9", "10.0.0.10", "10.0.1", "1000", "10:0::1", "fe80::1", "FE80::2", "10-0", "a", "B", "::1", "1.2"}
	var got []string
	if err := a.Pool.QueryRow(ctx, "SELECT array_agg(x ORDER BY x) FROM unnest($1::text[]) x", probe).Scan(&got); err != nil {
		return false, err
	}
	want := slices.Clone(probe)
	slices.Sort(want)
	ok = slices.Equal(got, want)
	c.mu.Lock()
	c.collProbed, c.collBytewise = true, ok
	c.mu.Unlock()
	return ok, nil
}

// TalkerCacheStats are what the cache holds, and how many load queries it
// has run.
type TalkerCacheStats struct {
	Buckets int
	Bytes   int64
	Loads   int64
}

// Stats reports the buckets and bytes held.
func (c *TalkerCache) Stats() TalkerCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return TalkerCacheStats{Buckets: len(c.buckets), Bytes: c.bytes, Loads: c.loadsN.Load()}
}

// internLocked maps local ids of names (a load's own table) to the cache's.
func (c *TalkerCache) internLocked(names []string) []int32 {
	out := make([]int32, len(names))
	for i, s := range names {
		id, ok := c.ids[s]
		if !ok {
			id = int32(len(c.names))
			c.ids[s] = id
			c.names = append(c.names, s)
			c.nameB += int64(len(s)) + 16 + 32 // string, slice entry, map entry
			c.bytes += int64(len(s)) + 48
		}
		out[i] = id
	}
	return out
}

// localIDs is a load's own intern table (no lock per row).
type localIDs struct {
	ids   map[string]int32
	names []string
}

func (l *localIDs) id(b []byte) int32 {
	if id, ok := l.ids[string(b)]; ok {
		return id
	}
	s := string(b)
	id := int32(len(l.names))
	l.ids[s] = id
	l.names = append(l.names, s)
	return id
}

// tcPiece is a part of a request's range read from one tier: its buckets
// and their versions (sum(records) of flows<tier>, 0 for none).
type tcPiece struct {
	rollupPiece
	versions []int64 // per bucket from p.from, step p.tier.step
	got      []*tcBucket
}

// topTalkersCached answers top talkers (sides both/src/dst) for f from the
// cache, or ok false when it cannot (an open range, no whole minute inside,
// a collation that does not order addresses bytewise, missing tiers): then
// the caller uses SQL.
func (a *API) topTalkersCached(ctx context.Context, sch *dbSchema, f FlowFilter, side, by string, limit int) (out []Talker, ok bool, err error) {
	return a.topTalkersCachedNeed(ctx, sch, f, side, by, limit, nil)
}

// topTalkersCachedNeed is topTalkersCached that also records, in need when
// not nil, the bytes of every bucket the answer used (KeepTalkersWarm's
// measure of what its ranges take).
func (a *API) topTalkersCachedNeed(ctx context.Context, sch *dbSchema, f FlowFilter, side, by string, limit int,
	need map[tcKey]int64) (out []Talker, ok bool, err error) {
	c := a.Talkers
	if c == nil || f.From.IsZero() || f.To.IsZero() {
		return nil, false, nil
	}
	if bytewise, err := c.bytewise(ctx, a); err != nil || !bytewise {
		return nil, false, err
	}
	from, to := ceilMinute(f.From), f.To.Truncate(time.Minute)
	if !from.Before(to) {
		return nil, false, nil
	}
	var pieces []*tcPiece
	for _, p := range rollupPieces(sch, "talkers", from, to, 24*time.Hour) {
		if !sch.hasTable("flows"+p.tier.suffix) || !sch.hasTable("talkers"+p.tier.suffix) {
			return nil, false, nil
		}
		n := int(p.to.Sub(p.from) / p.tier.step)
		pieces = append(pieces, &tcPiece{rollupPiece: p, versions: make([]int64, n), got: make([]*tcBucket, n)})
	}
	c.mu.Lock()
	if c.nameB > c.max/4 {
		// The interned addresses alone take a quarter of the bound:
		// start afresh (the ids in cached buckets go with them).
		c.evictions.Add(float64(len(c.buckets)))
		c.resetLocked()
	}
	gen := c.gen
	c.mu.Unlock()
	// The seconds at the ends, from flows: two small GROUP BYs, run beside
	// the cache's work (on other connections of the pool).
	type edgeRow struct {
		addr               string
		sb, rb, sp, rp, nr int64
	}
	edgeOut := make([][]edgeRow, 2)
	edgeErr := make([]error, 2)
	var wg sync.WaitGroup
	edge := func(k int, x, y time.Time) {
		defer wg.Done()
		w := &where{sch: sch}
		w.timeRange("start", x, y)
		if f.Sensor != "" {
			w.add("sensor = " + w.arg(f.Sensor))
		}
		rows, err := a.Pool.Query(ctx, `SELECT addr::text, `+sch.sum("sent_ip_bytes")+`, `+sch.sum("recv_ip_bytes")+`, `+
			sch.sum("sent_pkts")+`, `+sch.sum("recv_pkts")+`, `+sch.sum("records")+` FROM (`+
			fmt.Sprintf(edgeRows["talkers"], w.sql())+`) e GROUP BY addr`, w.args...)
		if err != nil {
			edgeErr[k] = err
			return
		}
		defer rows.Close()
		for rows.Next() {
			var e edgeRow
			if err := rows.Scan(&e.addr, &e.sb, &e.rb, &e.sp, &e.rp, &e.nr); err != nil {
				edgeErr[k] = err
				return
			}
			edgeOut[k] = append(edgeOut[k], e)
		}
		edgeErr[k] = rows.Err()
	}
	if from.After(f.From) {
		wg.Add(1)
		go edge(0, f.From, from)
	}
	if f.To.After(to) {
		wg.Add(1)
		go edge(1, to, f.To)
	}
	cacheErr := func() error {
		// Versions first, then the loads.
		for _, p := range pieces {
			if err := c.readVersions(ctx, a, p); err != nil {
				return err
			}
		}
		for _, p := range pieces {
			if err := c.fill(ctx, a, p, gen); err != nil {
				return err
			}
		}
		return nil
	}()
	wg.Wait()
	if errors.Is(cacheErr, errTalkerCacheReset) {
		return nil, false, nil // ids dropped meanwhile: SQL
	}
	for _, err := range append(edgeErr, cacheErr) {
		if err != nil {
			return nil, false, err
		}
	}
	if need != nil {
		for _, p := range pieces {
			for _, b := range p.got {
				need[b.key] = b.size()
			}
		}
	}
	edges := append(edgeOut[0], edgeOut[1]...)
	// Intern the edges' addresses and snapshot the table.
	c.mu.Lock()
	if c.gen != gen {
		c.mu.Unlock()
		return nil, false, nil // ids dropped meanwhile (Reset): SQL
	}
	edgeNames := make([]string, len(edges))
	for i, e := range edges {
		edgeNames[i] = e.addr
	}
	edgeIDs := c.internLocked(edgeNames)
	names := c.names[:len(c.names):len(c.names)]
	sensorID := int32(-1)
	if f.Sensor != "" {
		if id, ok := c.ids["s:"+f.Sensor]; ok {
			sensorID = id
		}
	}
	c.mu.Unlock()
	// Add up in dense arrays indexed by the interned id.
	n := len(names)
	acc := make([]int64, 5*n)
	seen := make([]bool, n)
	var touched []int32
	for _, p := range pieces {
		for _, b := range p.got {
			for i, id := range b.addr {
				if f.Sensor != "" && b.sensor[i] != sensorID {
					continue
				}
				if !seen[id] {
					seen[id] = true
					touched = append(touched, id)
				}
				v, s := b.vals[5*i:5*i+5], acc[5*int(id):5*int(id)+5]
				s[0] += v[0]
				s[1] += v[1]
				s[2] += v[2]
				s[3] += v[3]
				s[4] += v[4]
			}
		}
	}
	for i, e := range edges {
		id := edgeIDs[i]
		if !seen[id] {
			seen[id] = true
			touched = append(touched, id)
		}
		s := acc[5*int(id) : 5*int(id)+5]
		s[0] += e.sb
		s[1] += e.rb
		s[2] += e.sp
		s[3] += e.rp
		s[4] += e.nr
	}
	// The SQL's ORDER BY value DESC, host(addr) (bytewise: probed), LIMIT:
	// the best limit of the touched ids in a heap whose root is the worst.
	vi := map[string]int{"bytes": 0, "pkts": 2}[by] // sent; +1: received
	value := func(id int32) int64 {
		s := acc[5*int(id) : 5*int(id)+5]
		switch {
		case by == "flows":
			return s[4]
		case side == "src":
			return s[vi]
		case side == "dst":
			return s[vi+1]
		default:
			return s[vi] + s[vi+1]
		}
	}
	host := func(id int32) string { h, _, _ := strings.Cut(names[id], "/"); return h }
	type ranked struct {
		v  int64
		id int32
	}
	// worse reports whether x ranks after y.
	worse := func(x, y ranked) bool {
		if x.v != y.v {
			return x.v < y.v
		}
		return host(x.id) > host(y.id)
	}
	h := make([]ranked, 0, min(limit, len(touched)))
	down := func(i int) {
		for {
			l, m := 2*i+1, i
			if l < len(h) && worse(h[l], h[m]) {
				m = l
			}
			if l+1 < len(h) && worse(h[l+1], h[m]) {
				m = l + 1
			}
			if m == i {
				return
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	for _, id := range touched {
		x := ranked{value(id), id}
		if len(h) < limit {
			h = append(h, x)
			for i := len(h) - 1; i > 0 && worse(h[i], h[(i-1)/2]); i = (i - 1) / 2 {
				h[i], h[(i-1)/2] = h[(i-1)/2], h[i]
			}
		} else if worse(h[0], x) {
			h[0] = x
			down(0)
		}
	}
	slices.SortFunc(h, func(x, y ranked) int {
		if worse(x, y) {
			return 1
		}
		if worse(y, x) {
			return -1
		}
		return 0
	})
	touched = touched[:0]
	for _, x := range h {
		touched = append(touched, x.id)
	}
	out = []Talker{}
	for _, id := range touched {
		s := acc[5*int(id) : 5*int(id)+5]
		out = append(out, Talker{Addr: host(id), SentBytes: s[0], RecvBytes: s[1], SentPkts: s[2], RecvPkts: s[3],
			Flows: s[4], Bytes: s[0] + s[1], Pkts: s[2] + s[3]})
	}
	return out, true, nil
}

// readVersions reads the versions of p's buckets: sum(records) of
// flows<tier> per bucket (all sensors).
func (c *TalkerCache) readVersions(ctx context.Context, a *API, p *tcPiece) error {
	col := p.tier.col
	rows, err := a.Pool.Query(ctx, `SELECT extract(epoch FROM `+col+`)::bigint, sum(records)::bigint FROM flows`+p.tier.suffix+
		` WHERE `+col+` >= $1 AND `+col+` < $2 GROUP BY 1`, p.from, p.to)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var t, v int64
		if err := rows.Scan(&t, &v); err != nil {
			return err
		}
		if i := (t - p.from.Unix()) / int64(p.tier.step/time.Second); i >= 0 && i < int64(len(p.versions)) {
			p.versions[i] = v
		}
	}
	return rows.Err()
}

// errTalkerCacheReset: the cache's interned ids were dropped during a
// request, whose buckets then mix two numberings.
var errTalkerCacheReset = errors.New("rollup cache reset during the request")

// fill finds p's buckets in the cache at their versions and loads the
// others with one SQL (from the first to the last of them); gen is the
// numbering of interned ids the request started with.
func (c *TalkerCache) fill(ctx context.Context, a *API, p *tcPiece, gen uint64) error {
	step := int64(p.tier.step / time.Second)
	first, last := -1, -1
	c.mu.Lock()
	if c.gen != gen {
		c.mu.Unlock()
		return errTalkerCacheReset
	}
	for i := range p.got {
		k := tcKey{p.tier.suffix, p.from.Unix() + int64(i)*step}
		if e, ok := c.buckets[k]; ok && e.Value.(*tcBucket).version == p.versions[i] {
			c.lru.MoveToFront(e)
			p.got[i] = e.Value.(*tcBucket)
			c.hits.Inc()
			continue
		}
		c.misses.Inc()
		if first < 0 {
			first = i
		}
		last = i
	}
	c.mu.Unlock()
	if first < 0 {
		return nil
	}
	c.loads.Inc()
	c.loadsN.Add(1)
	lo := p.from.Add(time.Duration(first) * p.tier.step)
	hi := p.from.Add(time.Duration(last+1) * p.tier.step)
	col := p.tier.col
	rows, err := a.Pool.Query(ctx, `SELECT extract(epoch FROM `+col+`)::bigint, 's:' || sensor, addr::text, sent_ip_bytes,
		recv_ip_bytes, sent_pkts, recv_pkts, records FROM talkers`+p.tier.suffix+` WHERE `+col+` >= $1 AND `+col+` < $2`, lo, hi)
	if err != nil {
		return err
	}
	defer rows.Close()
	binary8 := true
	for _, fd := range rows.FieldDescriptions() {
		if fd.DataTypeOID == 20 && fd.Format != pgx.BinaryFormatCode {
			binary8 = false
		}
	}
	loaded := make([]*tcBucket, last+1-first)
	for i := range loaded {
		loaded[i] = &tcBucket{key: tcKey{p.tier.suffix, lo.Unix() + int64(i)*step}, version: p.versions[first+i]}
	}
	local := &localIDs{ids: map[string]int32{}}
	for rows.Next() {
		var t int64
		var v [5]int64
		var sensor, addr []byte
		if binary8 {
			raw := rows.RawValues()
			if len(raw) != 8 || len(raw[0]) != 8 {
				return fmt.Errorf("talkers%s: unexpected row layout", p.tier.suffix)
			}
			t = int64(binary.BigEndian.Uint64(raw[0]))
			sensor, addr = raw[1], raw[2]
			for j := range v {
				if len(raw[3+j]) != 8 {
					return fmt.Errorf("talkers%s: unexpected counter", p.tier.suffix)
				}
				v[j] = int64(binary.BigEndian.Uint64(raw[3+j]))
			}
		} else if err := rows.Scan(&t, &sensor, &addr, &v[0], &v[1], &v[2], &v[3], &v[4]); err != nil {
			return err
		}
		i := (t - lo.Unix()) / step
		if i < 0 || i >= int64(len(loaded)) {
			continue
		}
		b := loaded[i]
		b.sensor = append(b.sensor, local.id(sensor))
		b.addr = append(b.addr, local.id(addr))
		b.vals = append(b.vals, v[:]...)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return errTalkerCacheReset
	}
	global := c.internLocked(local.names)
	for i, b := range loaded {
		for j, id := range b.sensor {
			b.sensor[j] = global[id]
		}
		for j, id := range b.addr {
			b.addr[j] = global[id]
		}
		p.got[first+i] = b // also those cached between first and last: now reloaded
		if e, ok := c.buckets[b.key]; ok {
			c.bytes -= e.Value.(*tcBucket).size()
			c.lru.Remove(e)
		}
		c.buckets[b.key] = c.lru.PushFront(b)
		c.bytes += b.size()
	}
	for c.bytes > c.max && c.lru.Len() > 0 {
		e := c.lru.Back()
		b := e.Value.(*tcBucket)
		c.lru.Remove(e)
		delete(c.buckets, b.key)
		c.bytes -= b.size()
		c.evictions.Inc()
	}
	c.bytesG.Set(float64(c.bytes))
	return nil
}

// KeepTalkersWarm keeps the buckets of the dashboard's usual ranges in the
// cache until ctx ends, checking every interval (> 0): the last hour and
// the last 24 hours up to the newest minute of flows_1m (or now, when that
// is later than now: a clock ahead), and the per-minute buckets of the hour
// after the one the last 24 hours start in, which that range needs from the
// next whole hour on. Without it, the first "last 24 hours" request after an
// hour boundary loads up to 59 minutes of talkers_1m (about 3 s over the
// benchmark's 10 M flows, docs/PERFORMANCE.md); with it, requests find
// their buckets loaded and changed ones reloaded in the background. Errors
// are logged and retried at the next check. A nil cache returns at once.
func (a *API) KeepTalkersWarm(ctx context.Context, interval time.Duration) {
	if a.Talkers == nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		need, err := a.WarmTalkers(ctx)
		if err != nil && ctx.Err() == nil {
			a.Log.Warn("keep the rollup cache warm", "err", err)
		}
		if err == nil && need > a.Talkers.max {
			// The bound is below what the ranges need: every check would
			// load them all again, for nothing. Requests still use the cache.
			a.Log.Warn("rollup cache too small to keep the last 24 hours warm: warming stopped; raise -cache.rollup-bytes",
				"bytes", a.Talkers.max, "needed", need)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// WarmTalkers is one check of KeepTalkersWarm: it loads (or reloads, when
// their version changed) the buckets of those ranges, and returns the bytes
// those buckets take (each once), which KeepTalkersWarm compares with the
// cache's bound.
func (a *API) WarmTalkers(ctx context.Context) (need int64, err error) {
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		return 0, err
	}
	if !sch.hasTable("flows_1m") || !sch.hasTable("talkers_1m") {
		return 0, nil
	}
	var newest *time.Time
	if err := a.Pool.QueryRow(ctx, "SELECT max(minute) FROM flows_1m").Scan(&newest); err != nil || newest == nil {
		return 0, err
	}
	end := newest.Add(time.Minute).UTC()
	if now := time.Now().Truncate(time.Minute).Add(time.Minute); end.After(now) {
		end = now
	}
	next := end.Add(-24 * time.Hour).Truncate(time.Hour).Add(time.Hour + time.Minute)
	used := map[tcKey]int64{}
	for _, from := range []time.Time{end.Add(-time.Hour), end.Add(-24 * time.Hour), next} {
		if !from.Before(end) {
			continue
		}
		if _, _, err := a.topTalkersCachedNeed(ctx, sch, FlowFilter{From: from, To: end}, "both", "bytes", 1, used); err != nil {
			return 0, err
		}
	}
	for _, n := range used {
		need += n
	}
	return need, nil
}
