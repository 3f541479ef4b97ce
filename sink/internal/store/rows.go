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
	"id", "sensor", "community_id", "proto", "orig_addr", "orig_port", "resp_addr", "resp_port",
	"vlan", "inner_vlan", "icmp_type", "icmp_code", "start", "end", "flow_start",
	"orig_pkts", "orig_ip_bytes", "orig_bytes", "resp_pkts", "resp_ip_bytes", "resp_bytes",
	"orig_tcp_flags", "resp_tcp_flags", "record_index", "final", "end_reason", "direction_guessed",
	"app", "conn_state", "history", "tunnel", "tunnel_id", "server_name", "direction",
	"orig_name", "resp_name")

// rollupTable is flows_1m: not staged, written by flowsTable.ins (or, on
// WriteFlows' fast path, by upsertRollup).
var rollupTable = &table{name: "flows_1m"}

func init() {
	t := flowsTable
	t.ins = `WITH ins AS (` + t.ins + `
	RETURNING start, sensor, proto, app, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes
), up AS (
	INSERT INTO flows_1m AS r (minute, sensor, proto, app, records, orig_pkts, resp_pkts,
		orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes)
	SELECT date_bin('1 minute', start, timestamptz '2000-01-01 00:00:00+00'), sensor, proto, app, count(*),
		sum(orig_pkts), sum(resp_pkts), sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes)
	FROM ins GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
	ON CONFLICT (minute, sensor, proto, app) DO UPDATE SET
		records = r.records + EXCLUDED.records,
		orig_pkts = r.orig_pkts + EXCLUDED.orig_pkts, resp_pkts = r.resp_pkts + EXCLUDED.resp_pkts,
		orig_ip_bytes = r.orig_ip_bytes + EXCLUDED.orig_ip_bytes, resp_ip_bytes = r.resp_ip_bytes + EXCLUDED.resp_ip_bytes,
		orig_bytes = r.orig_bytes + EXCLUDED.orig_bytes, resp_bytes = r.resp_bytes + EXCLUDED.resp_bytes
)
SELECT count(*) FROM ins`
}

var alertsTable = newTable("alerts",
	"id", "time", "sensor", "severity", "category", "technique", "orig_addr", "resp_addr",
	"summary", "evidence", "rule", "window_start", "window_end", "score")

var metricsTable = newTable("host_metrics",
	"sensor", "boot", "seq", "time", "host", "cpu_percent", "mem_total_bytes", "mem_used_bytes",
	"load1", "uptime_s", "disks", "interfaces", "captures")

// ts is Unix nanoseconds as a UTC time.
func ts(ns int64) time.Time { return time.Unix(0, ns).UTC() }

// i64 is a counter as bigint, saturating at MaxInt64.
func i64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// text makes s storable in a PostgreSQL text column: valid UTF-8 without NUL.
func text(s string) string {
	if utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}

// rowBatch is rows for one table plus what the write needs besides them.
type rowBatch struct {
	rows    [][]any
	days    map[time.Time]struct{}
	sensors map[string]*sensorSeen
	invalid int // records skipped because they can never be stored
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

// evidenceJSON is the alert evidence as jsonb text: '{}' when empty; JSON
// that PostgreSQL would reject (invalid, or with a \u0000 escape) is kept as
// a string under "raw".
func evidenceJSON(ev []byte) string {
	ev = bytes.TrimSpace(ev)
	if len(ev) == 0 {
		return "{}"
	}
	if json.Valid(ev) && !bytes.Contains(ev, []byte(`\u0000`)) && utf8.Valid(ev) {
		return string(ev)
	}
	raw, _ := json.Marshal(map[string]string{"raw": text(string(ev))})
	return strings.ReplaceAll(string(raw), `\u0000`, "")
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
}

func jsonArray[T any](v []T) string {
	if len(v) == 0 {
		return "[]"
	}
	b, _ := json.Marshal(v)
	return strings.ReplaceAll(string(b), `\u0000`, "")
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
	for _, c := range m.GetCaptures() {
		caps = append(caps, captureJSON{text(c.GetSource()), c.GetReceived(), c.GetDropped(), c.GetIfDropped(),
			c.GetIpPackets(), c.GetNonIp(), c.GetMalformed(), c.GetPublishedBatches(), c.GetIpBytes()})
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
