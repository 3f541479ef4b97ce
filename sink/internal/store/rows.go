package store

import (
	"bytes"
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// table describes one partitioned table, its per-session staging table and
// the columns the sink writes.
type table struct {
	name  string   // partitioned table, e.g. "flows"
	stage string   // TEMP staging table of the same shape
	cols  []string // columns copied, in row order
	// ins is INSERT … SELECT … ON CONFLICT DO NOTHING from stage; its
	// RowsAffected is the number of rows inserted. flowsTable's is a query
	// that also adds the rows it inserts to flows_1m and returns their number.
	ins string
	// pre, when set, runs after the COPY into stage and before ins.
	pre string
}

func newTable(name string, cols ...string) *table {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = `"` + c + `"`
	}
	list := strings.Join(q, ", ")
	stage := name + "_stage"
	return &table{name: name, stage: stage, cols: cols,
		ins: "INSERT INTO " + name + " (" + list + ") SELECT " + list + " FROM " + stage + " ON CONFLICT DO NOTHING"}
}

var flowsTable = newTable("flows",
	"batch", "id", "sensor", "community_id", "proto", "orig_addr", "orig_port", "resp_addr", "resp_port",
	"vlan", "inner_vlan", "icmp_type", "icmp_code", "start", "end", "flow_start",
	"orig_pkts", "orig_ip_bytes", "orig_bytes", "resp_pkts", "resp_ip_bytes", "resp_bytes",
	"orig_tcp_flags", "resp_tcp_flags", "record_index", "final", "end_reason", "direction_guessed",
	"app", "conn_state", "history", "tunnel", "tunnel_id", "server_name", "direction",
	"orig_name", "resp_name", "orig_country", "orig_city", "orig_asn", "orig_as_org",
	"resp_country", "resp_city", "resp_asn", "resp_as_org", "app_from_port", "ja3", "ja4", "http_user_agent")

// The rollup tables are not staged: WriteFlows adds to them the sums of the
// rows it newly inserted (rollup.go).
var (
	rollupTable    = &table{name: "flows_1m"}
	talkersTable   = &table{name: "talkers_1m"}
	pairsTable     = &table{name: "pairs_1m"}
	portsTable     = &table{name: "ports_1m"}
	countriesTable = &table{name: "countries_1m"}
	// rollupTables are the rollups of every tier (rollup.go: tiers), in the
	// order every transaction writes them (the lock order between
	// concurrent writers).
	rollupTables = []*table{rollupTable, talkersTable, pairsTable, portsTable, countriesTable}
)

func init() {
	for _, t := range tiers[1:] {
		for _, m := range rollupTables[:5] {
			rollupTables = append(rollupTables, &table{name: strings.TrimSuffix(m.name, "_1m") + t.suffix})
		}
	}
}

var alertsTable = newTable("alerts",
	"id", "time", "sensor", "severity", "category", "technique", "orig_addr", "resp_addr",
	"summary", "evidence", "rule", "window_start", "window_end", "score")

var metricsTable = newTable("host_metrics",
	"sensor", "boot", "seq", "time", "host", "cpu_percent", "mem_total_bytes", "mem_used_bytes",
	"load1", "uptime_s", "disks", "interfaces", "captures")

// captureTable is capture_stats, written with host_metrics (one row per
// pb.Metrics.captures entry) in the same transaction.
var captureTable = newTable("capture_stats",
	"time", "sensor", "boot", "seq", "source", "received", "dropped", "if_dropped", "ip_packets", "ip_bytes",
	"non_ip", "malformed", "ring_packets", "ring_freezes", "buffer_dropped", "arp")

// stagedTables are the tables written through a per-session staging table.
var stagedTables = []*table{flowsTable, alertsTable, metricsTable, captureTable}

func init() {
	// One row per alert id (00008): an id not stored yet is inserted with
	// the time and window start of its earliest message in the batch and
	// the evidence of its latest; an id already stored is updated in place
	// when the batch holds newer evidence (a later time), keeping the
	// operator's triage status; a redelivered or older message changes
	// nothing. RowsAffected counts the new alerts. Concurrent sinks are
	// serialised per id by pre (transaction advisory locks, taken in id
	// order so that two batches cannot deadlock).
	t := alertsTable
	latest := make([]string, 0, len(t.cols))
	for _, c := range t.cols {
		switch c {
		case "time", "window_start":
			latest = append(latest, `f."`+c+`"`)
		default:
			latest = append(latest, `s."`+c+`"`)
		}
	}
	t.pre = `SELECT count(pg_advisory_xact_lock(hashtext(id))) FROM (SELECT DISTINCT id FROM ` + t.stage + ` ORDER BY id) x`
	t.ins = `WITH s AS (SELECT DISTINCT ON (id) * FROM ` + t.stage + ` ORDER BY id, time DESC),
f AS (SELECT DISTINCT ON (id) id, time, window_start FROM ` + t.stage + ` ORDER BY id, time),
upd AS (UPDATE alerts a SET severity = s.severity, summary = s.summary, evidence = s.evidence,
		window_end = s.window_end, score = s.score, last_time = s.time, updates = a.updates + 1
	FROM s WHERE a.id = s.id AND s.time > COALESCE(a.last_time, a.time)
	RETURNING a.id)
INSERT INTO alerts (` + quotedCols(t.cols) + `, last_time)
SELECT ` + strings.Join(latest, ", ") + `, CASE WHEN s.time > f.time THEN s.time END
FROM s JOIN f USING (id)
WHERE NOT EXISTS (SELECT 1 FROM alerts a WHERE a.id = s.id)
ON CONFLICT DO NOTHING`
}

// ts is Unix nanoseconds as a UTC time.
func ts(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// i64 is a counter as bigint, saturating at MaxInt64.
func i64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// text makes s storable in a PostgreSQL text column, which takes neither
// NUL nor invalid UTF-8, by the sink's one rule for text (README "Text"):
// a NUL byte becomes the four characters \x00 and every byte that is not
// part of a valid UTF-8 sequence becomes \xNN (lower-case hex), the escaping
// Zeek uses in its logs and the agent uses for packet strings. Valid text,
// a U+FFFD in it included, is kept as is. One bad value never fails a batch.
func text(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return string(appendText(make([]byte, 0, len(s)+16), s, false))
}

// appendText appends s to b by text's rule; inJSON writes the backslash of
// an escape as \\ (a JSON string's escaped backslash).
func appendText(b []byte, s string, inJSON bool) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if s[i] == 0 || (r == utf8.RuneError && n <= 1) {
			if inJSON {
				b = append(b, '\\')
			}
			b = append(b, '\\', 'x', hex[s[i]>>4], hex[s[i]&15])
			i++
			continue
		}
		b = append(b, s[i:i+n]...)
		i += n
	}
	return b
}

// rowBatch is rows for one table plus what the write needs besides them.
type rowBatch struct {
	rows [][]any
	// child rows go into a second table in the same transaction
	// (capture_stats of host_metrics), with their own days.
	child     *table
	childRows [][]any
	childDays map[time.Time]struct{}
	days      map[time.Time]struct{}
	sensors   map[string]*sensorSeen
	invalid   int // records skipped because they can never be stored
}

type sensorSeen struct {
	host     string
	lastFlow time.Time // zero when no flow
}

func newRowBatch() *rowBatch {
	return &rowBatch{days: map[time.Time]struct{}{}, sensors: map[string]*sensorSeen{}}
}

func (b *rowBatch) sensor(name string) *sensorSeen {
	s := b.sensors[name]
	if s == nil {
		s = &sensorSeen{}
		b.sensors[name] = s
	}
	return s
}

// addAlert appends a. An alert without id is skipped and counted in invalid.
func (b *rowBatch) addAlert(a *pb.Alert) {
	if a.GetId() == "" {
		b.invalid++
		return
	}
	t := ts(a.GetTimeNs())
	var ws, we any
	if a.GetWindowStartNs() != 0 {
		ws = ts(a.GetWindowStartNs())
	}
	if a.GetWindowEndNs() != 0 {
		we = ts(a.GetWindowEndNs())
	}
	score := a.GetScore()
	if math.IsNaN(score) || math.IsInf(score, 0) {
		score = 0
	}
	b.rows = append(b.rows, []any{
		text(a.GetId()), t, text(a.GetSensor()), schema.SeverityName(a.GetSeverity()), text(a.GetCategory()),
		text(a.GetTechnique()), addrOrNil(a.GetOrigAddr()), addrOrNil(a.GetRespAddr()),
		text(a.GetSummary()), evidenceJSON(a.GetEvidence()), text(a.GetRule()), ws, we, score,
	})
	b.days[dayOf(t)] = struct{}{}
	b.sensor(text(a.GetSensor()))
}

// addrOrNil parses a text address; empty or unparsable gives NULL.
func addrOrNil(s string) any {
	if s == "" {
		return nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil
	}
	return a
}

// evidenceJSON is the alert evidence as jsonb text: '{}' when empty. Text
// follows text's rule: a byte of invalid UTF-8 becomes \\xNN inside the JSON
// (the string value \xNN) and a \u0000 escape, which jsonb rejects, becomes
// the string \x00 (the document is decoded and encoded again). Evidence that
// is not JSON is kept as a string under "raw".
func evidenceJSON(ev []byte) string {
	ev = bytes.TrimSpace(ev)
	if len(ev) == 0 {
		return "{}"
	}
	fixed := ev
	if !utf8.Valid(ev) {
		fixed = appendText(nil, string(ev), true)
	}
	if !json.Valid(fixed) {
		raw, _ := json.Marshal(map[string]string{"raw": text(string(ev))})
		return string(raw)
	}
	if !bytes.Contains(fixed, []byte(`\u0000`)) {
		return string(fixed)
	}
	d := json.NewDecoder(bytes.NewReader(fixed))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		raw, _ := json.Marshal(map[string]string{"raw": text(string(ev))})
		return string(raw)
	}
	var out bytes.Buffer
	e := json.NewEncoder(&out)
	e.SetEscapeHTML(false)
	_ = e.Encode(textJSON(v))
	return string(bytes.TrimSpace(out.Bytes()))
}

// textJSON applies text to every string (keys too) of a decoded document.
func textJSON(v any) any {
	switch x := v.(type) {
	case string:
		return text(x)
	case []any:
		for i := range x {
			x[i] = textJSON(x[i])
		}
		return x
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[text(k)] = textJSON(e)
		}
		return m
	}
	return v
}

type diskJSON struct {
	Mount      string `json:"mount"`
	TotalBytes uint64 `json:"total_bytes"`
	UsedBytes  uint64 `json:"used_bytes"`
}

type ifaceJSON struct {
	Name      string `json:"name"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
}

type captureJSON struct {
	Source           string `json:"source"`
	Received         uint64 `json:"received"`
	Dropped          uint64 `json:"dropped"`
	IfDropped        uint64 `json:"if_dropped"`
	IPPackets        uint64 `json:"ip_packets"`
	NonIP            uint64 `json:"non_ip"`
	Malformed        uint64 `json:"malformed"`
	PublishedBatches uint64 `json:"published_batches"`
	IPBytes          uint64 `json:"ip_bytes"`
	RingPackets      uint64 `json:"ring_packets"`
	RingFreezes      uint64 `json:"ring_freezes"`
	BufferDropped    uint64 `json:"buffer_dropped"`
	ARP              uint64 `json:"arp"`
}

func jsonArray[T any](v []T) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v) // its strings went through text: no NUL
	return string(b)
}

// addMetrics appends m. A sample without sensor is skipped and counted.
func (b *rowBatch) addMetrics(m *pb.Metrics) {
	if m.GetSensor() == "" {
		b.invalid++
		return
	}
	t := ts(m.GetTimeNs())
	disks := make([]diskJSON, 0, len(m.GetDisks()))
	for _, d := range m.GetDisks() {
		disks = append(disks, diskJSON{text(d.GetMount()), d.GetTotalBytes(), d.GetUsedBytes()})
	}
	ifs := make([]ifaceJSON, 0, len(m.GetInterfaces()))
	for _, i := range m.GetInterfaces() {
		ifs = append(ifs, ifaceJSON{text(i.GetName()), i.GetRxBytes(), i.GetTxBytes(), i.GetRxPackets(),
			i.GetTxPackets(), i.GetRxErrors(), i.GetTxErrors(), i.GetRxDropped(), i.GetTxDropped()})
	}
	caps := make([]captureJSON, 0, len(m.GetCaptures()))
	b.child = captureTable
	if b.childDays == nil {
		b.childDays = map[time.Time]struct{}{}
	}
	sensor, boot, seq := text(m.GetSensor()), text(m.GetBoot()), i64(m.GetSeq())
	seen := map[string]bool{}
	for _, c := range m.GetCaptures() {
		src := text(c.GetSource())
		caps = append(caps, captureJSON{src, c.GetReceived(), c.GetDropped(), c.GetIfDropped(),
			c.GetIpPackets(), c.GetNonIp(), c.GetMalformed(), c.GetPublishedBatches(), c.GetIpBytes(),
			c.GetRingPackets(), c.GetRingFreezes(), c.GetBufferDropped(), c.GetArp()})
		if seen[src] { // the key is (time, sensor, boot, seq, source): the first entry of a source wins
			continue
		}
		seen[src] = true
		b.childRows = append(b.childRows, []any{t, sensor, boot, seq, src, i64(c.GetReceived()), i64(c.GetDropped()),
			i64(c.GetIfDropped()), i64(c.GetIpPackets()), i64(c.GetIpBytes()), i64(c.GetNonIp()), i64(c.GetMalformed()),
			i64(c.GetRingPackets()), i64(c.GetRingFreezes()), i64(c.GetBufferDropped()), i64(c.GetArp())})
		b.childDays[dayOf(t)] = struct{}{}
	}
	finite := func(v float64) float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return 0
		}
		return v
	}
	b.rows = append(b.rows, []any{
		text(m.GetSensor()), text(m.GetBoot()), i64(m.GetSeq()), t, text(m.GetHost()),
		finite(m.GetCpuPercent()), i64(m.GetMemTotalBytes()), i64(m.GetMemUsedBytes()),
		finite(m.GetLoad1()), m.GetUptimeS(), jsonArray(disks), jsonArray(ifs), jsonArray(caps),
	})
	b.days[dayOf(t)] = struct{}{}
	b.sensor(text(m.GetSensor())).host = text(m.GetHost())
}
