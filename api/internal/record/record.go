// Package record is the api's JSON edge (DESIGN.md: "JSON only at the API
// edge"): the flow, alert and host-metrics objects that the REST endpoints
// read from PostgreSQL and the live feed decodes from protobuf, with one JSON
// shape for both. Field names are the PostgreSQL column names.
package record

import (
	"encoding/json"
	"net/netip"
	"strings"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// TimeLayout is how every time in the api's JSON is written: RFC 3339 in UTC
// with nanoseconds (PostgreSQL keeps microseconds, so stored times end in 000).
const TimeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Time is a time.Time that marshals as TimeLayout in UTC.
type Time time.Time

// MarshalJSON writes t as a TimeLayout string in UTC.
func (t Time) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, len(TimeLayout)+2)
	b = append(b, '"')
	b = time.Time(t).UTC().AppendFormat(b, TimeLayout)
	return append(b, '"'), nil
}

// UnmarshalJSON reads any RFC 3339 time.
func (t *Time) UnmarshalJSON(b []byte) error {
	var tt time.Time
	if err := tt.UnmarshalJSON(b); err != nil {
		return err
	}
	*t = Time(tt)
	return nil
}

// Flow is one flow record (a row of the flows table; Zeek conn.log names).
// Counters are those of this record only: interim records of one flow sum to
// its totals (DESIGN.md "Accounting").
type Flow struct {
	ID               string  `json:"id"`
	CommunityID      string  `json:"community_id"`
	Sensor           string  `json:"sensor"`
	Proto            int     `json:"proto"` // IP protocol number
	OrigAddr         string  `json:"orig_addr"`
	OrigPort         int     `json:"orig_port"`
	RespAddr         string  `json:"resp_addr"`
	RespPort         int     `json:"resp_port"`
	Vlan             int     `json:"vlan"`
	InnerVlan        int     `json:"inner_vlan"`
	IcmpType         int     `json:"icmp_type"`
	IcmpCode         int     `json:"icmp_code"`
	Start            Time    `json:"start"`      // first packet of this record (packet time)
	End              Time    `json:"end"`        // last packet of this record
	FlowStart        Time    `json:"flow_start"` // first packet of the whole flow
	Duration         float64 `json:"duration"`   // end - start, seconds
	OrigPkts         int64   `json:"orig_pkts"`
	OrigIPBytes      int64   `json:"orig_ip_bytes"` // IP-layer bytes, headers included
	OrigBytes        int64   `json:"orig_bytes"`    // transport payload bytes
	RespPkts         int64   `json:"resp_pkts"`
	RespIPBytes      int64   `json:"resp_ip_bytes"`
	RespBytes        int64   `json:"resp_bytes"`
	OrigTCPFlags     int     `json:"orig_tcp_flags"`
	RespTCPFlags     int     `json:"resp_tcp_flags"`
	RecordIndex      int     `json:"record_index"`
	Final            bool    `json:"final"`
	EndReason        string  `json:"end_reason"` // idle, active, fin, rst, eof, shutdown, evicted; "" unknown
	DirectionGuessed bool    `json:"direction_guessed"`
	App              string  `json:"app"`
	ConnState        string  `json:"conn_state"`
	History          string  `json:"history"`
	Tunnel           string  `json:"tunnel"` // gre, erspan, vxlan, geneve, ipip, other; "" none
	TunnelID         int64   `json:"tunnel_id"`
	ServerName       string  `json:"server_name"`
	Direction        string  `json:"direction"`
	OrigName         string  `json:"orig_name"` // names learned from DNS answers
	RespName         string  `json:"resp_name"`
	OrigCountry      string  `json:"orig_country"` // ISO 3166-1 alpha-2; "" unknown
	OrigCity         string  `json:"orig_city"`
	OrigASN          int64   `json:"orig_asn"` // autonomous system number; 0 unknown
	OrigASOrg        string  `json:"orig_as_org"`
	RespCountry      string  `json:"resp_country"`
	RespCity         string  `json:"resp_city"`
	RespASN          int64   `json:"resp_asn"`
	RespASOrg        string  `json:"resp_as_org"`
	AppFromPort      bool    `json:"app_from_port"`   // app named from the responder port, not the payload
	JA3              string  `json:"ja3"`             // JA3 of the originator's TLS ClientHello, MD5 hex
	JA4              string  `json:"ja4"`             // JA4 of the originator's TLS ClientHello
	HTTPUserAgent    string  `json:"http_user_agent"` // first HTTP/1 User-Agent the originator sent
	// OrigHostScore and RespHostScore are the detector's host anomaly
	// scores of the originator and responder in the host window holding
	// the flow's start (api/internal/hostscores), in REST answers; absent
	// while that window is open, when it expired, without a detector host
	// model, and on the live feed (a live flow's window is still open).
	OrigHostScore *HostScore `json:"orig_host_score,omitempty"`
	RespHostScore *HostScore `json:"resp_host_score,omitempty"`
}

// HostScore is one host window's anomaly score (schema.HostScore): the
// isolation forest's score 0..1 (higher: more unusual), whether it is at
// or above the model's threshold, and the window.
type HostScore struct {
	Score       float64 `json:"score"`
	Anomalous   bool    `json:"anomalous"`
	WindowStart Time    `json:"window_start"`
	WindowEnd   Time    `json:"window_end"`
}

// Alert is one alert (a row of the alerts table).
type Alert struct {
	ID          string          `json:"id"`
	Time        Time            `json:"time"` // packet time of the evidence
	Sensor      string          `json:"sensor"`
	Severity    string          `json:"severity"` // info, low, medium, high, critical
	Category    string          `json:"category"`
	Technique   string          `json:"technique"`           // MITRE ATT&CK id
	OrigAddr    *string         `json:"orig_addr,omitempty"` // absent when spoofed or many
	RespAddr    *string         `json:"resp_addr,omitempty"` // absent when many
	Summary     string          `json:"summary"`
	Evidence    json.RawMessage `json:"evidence"` // a JSON object
	Rule        string          `json:"rule"`
	Score       float64         `json:"score"` // 0..1
	WindowStart *Time           `json:"window_start,omitempty"`
	WindowEnd   *Time           `json:"window_end,omitempty"`
	Status      string          `json:"status"`              // open, acknowledged, closed
	StatusBy    string          `json:"status_by"`           // who set the status ("" while open)
	StatusAt    *Time           `json:"status_at,omitempty"` // when; absent while never changed
	StatusNote  string          `json:"status_note"`
}

// Alert statuses (alerts.status).
const (
	StatusOpen         = "open"
	StatusAcknowledged = "acknowledged"
	StatusClosed       = "closed"
)

// Metrics is one host-metrics sample of a sensor (a row of host_metrics).
// Disks, Interfaces and Captures are JSON arrays of DiskUsage,
// InterfaceCounters and CaptureStats objects with the protobuf field names
// (the live feed writes the same fields as the sink stores).
type Metrics struct {
	Sensor        string          `json:"sensor"`
	Host          string          `json:"host"`
	Time          Time            `json:"time"` // wall clock of the sample
	Boot          string          `json:"boot"`
	Seq           int64           `json:"seq"`
	CPUPercent    float64         `json:"cpu_percent"` // all cores, 0..100
	MemTotalBytes int64           `json:"mem_total_bytes"`
	MemUsedBytes  int64           `json:"mem_used_bytes"`
	Load1         float64         `json:"load1"`
	UptimeS       int64           `json:"uptime_s"`
	Disks         json.RawMessage `json:"disks"`
	Interfaces    json.RawMessage `json:"interfaces"`
	Captures      json.RawMessage `json:"captures"`
}

// SeverityRank is 1 (info) to 5 (critical), 0 for an unknown name.
func SeverityRank(name string) int {
	for i, s := range schema.Severities {
		if s == name {
			return i + 1
		}
	}
	return 0
}

// AddrString is the text form of a 4- or 16-byte address ("" otherwise); an
// IPv4-mapped IPv6 address stays one ("::ffff:10.0.0.1"), as PostgreSQL's
// inet prints it.
func AddrString(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return ""
	}
	return a.String()
}

func nsTime(ns int64) Time { return Time(time.Unix(0, ns).UTC()) }

// FlowFromPB converts a protobuf flow record to its JSON form.
func FlowFromPB(f *pb.Flow) Flow {
	fs := f.GetFlowStartNs()
	if fs == 0 {
		fs = f.GetStartNs()
	}
	return Flow{
		ID: f.GetId(), CommunityID: f.GetCommunityId(), Sensor: f.GetSensor(), Proto: int(f.GetProto()),
		OrigAddr: AddrString(f.GetOrigAddr()), OrigPort: int(f.GetOrigPort()),
		RespAddr: AddrString(f.GetRespAddr()), RespPort: int(f.GetRespPort()),
		Vlan: int(f.GetVlan()), InnerVlan: int(f.GetInnerVlan()),
		IcmpType: int(f.GetIcmpType()), IcmpCode: int(f.GetIcmpCode()),
		Start: nsTime(f.GetStartNs()), End: nsTime(f.GetEndNs()), FlowStart: nsTime(fs),
		Duration: float64(f.GetEndNs()-f.GetStartNs()) / 1e9,
		OrigPkts: int64(f.GetOrigPkts()), OrigIPBytes: int64(f.GetOrigIpBytes()), OrigBytes: int64(f.GetOrigBytes()),
		RespPkts: int64(f.GetRespPkts()), RespIPBytes: int64(f.GetRespIpBytes()), RespBytes: int64(f.GetRespBytes()),
		OrigTCPFlags: int(f.GetOrigTcpFlags()), RespTCPFlags: int(f.GetRespTcpFlags()),
		RecordIndex: int(f.GetRecordIndex()), Final: f.GetFinal(), EndReason: schema.EndReasonName(f.GetEndReason()),
		DirectionGuessed: f.GetDirectionGuessed(), App: f.GetApp(), ConnState: f.GetConnState(),
		History: f.GetHistory(), Tunnel: schema.TunnelName(f.GetTunnel()), TunnelID: int64(f.GetTunnelId()),
		ServerName: f.GetServerName(), Direction: f.GetDirection(),
		OrigName: f.GetOrigName(), RespName: f.GetRespName(),
		OrigCountry: f.GetOrigCountry(), OrigCity: f.GetOrigCity(), OrigASN: int64(f.GetOrigAsn()), OrigASOrg: f.GetOrigAsOrg(),
		RespCountry: f.GetRespCountry(), RespCity: f.GetRespCity(), RespASN: int64(f.GetRespAsn()), RespASOrg: f.GetRespAsOrg(),
		AppFromPort: f.GetAppFromPort(), JA3: f.GetJa3(), JA4: f.GetJa4(), HTTPUserAgent: f.GetHttpUserAgent(),
	}
}

// AlertFromPB converts a protobuf alert to its JSON form. Evidence that is
// not a JSON object becomes {}.
func AlertFromPB(a *pb.Alert) Alert {
	out := Alert{
		ID: a.GetId(), Time: nsTime(a.GetTimeNs()), Sensor: a.GetSensor(), Severity: schema.SeverityName(a.GetSeverity()),
		Category: a.GetCategory(), Technique: a.GetTechnique(), Summary: a.GetSummary(),
		Evidence: json.RawMessage("{}"), Rule: a.GetRule(), Score: a.GetScore(), Status: StatusOpen,
	}
	if v := a.GetOrigAddr(); v != "" {
		out.OrigAddr = &v
	}
	if v := a.GetRespAddr(); v != "" {
		out.RespAddr = &v
	}
	if ev := a.GetEvidence(); len(ev) > 0 && json.Valid(ev) && strings.HasPrefix(strings.TrimSpace(string(ev)), "{") {
		out.Evidence = json.RawMessage(ev)
	}
	if a.GetWindowStartNs() != 0 {
		t := nsTime(a.GetWindowStartNs())
		out.WindowStart = &t
	}
	if a.GetWindowEndNs() != 0 {
		t := nsTime(a.GetWindowEndNs())
		out.WindowEnd = &t
	}
	return out
}

type disk struct {
	Mount      string `json:"mount"`
	TotalBytes uint64 `json:"total_bytes"`
	UsedBytes  uint64 `json:"used_bytes"`
}

type iface struct {
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

type capture struct {
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

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage("[]")
	}
	return b
}

// MetricsFromPB converts a protobuf host-metrics sample to its JSON form.
func MetricsFromPB(m *pb.Metrics) Metrics {
	disks := make([]disk, 0, len(m.GetDisks()))
	for _, d := range m.GetDisks() {
		disks = append(disks, disk{d.GetMount(), d.GetTotalBytes(), d.GetUsedBytes()})
	}
	ifs := make([]iface, 0, len(m.GetInterfaces()))
	for _, i := range m.GetInterfaces() {
		ifs = append(ifs, iface{i.GetName(), i.GetRxBytes(), i.GetTxBytes(), i.GetRxPackets(), i.GetTxPackets(),
			i.GetRxErrors(), i.GetTxErrors(), i.GetRxDropped(), i.GetTxDropped()})
	}
	caps := make([]capture, 0, len(m.GetCaptures()))
	for _, c := range m.GetCaptures() {
		caps = append(caps, capture{c.GetSource(), c.GetReceived(), c.GetDropped(), c.GetIfDropped(), c.GetIpPackets(),
			c.GetNonIp(), c.GetMalformed(), c.GetPublishedBatches(), c.GetIpBytes(), c.GetRingPackets(), c.GetRingFreezes(),
			c.GetBufferDropped(), c.GetArp()})
	}
	return Metrics{
		Sensor: m.GetSensor(), Host: m.GetHost(), Time: nsTime(m.GetTimeNs()), Boot: m.GetBoot(), Seq: int64(m.GetSeq()),
		CPUPercent: m.GetCpuPercent(), MemTotalBytes: int64(m.GetMemTotalBytes()), MemUsedBytes: int64(m.GetMemUsedBytes()),
		Load1: m.GetLoad1(), UptimeS: m.GetUptimeS(),
		Disks: mustJSON(disks), Interfaces: mustJSON(ifs), Captures: mustJSON(caps),
	}
}

// Counters is one second of a sensor's traffic (pb.TrafficCounters from the
// COUNTERS stream): every packet the enricher saw in that second of packet
// time.
type Counters struct {
	Sensor       string         `json:"sensor"`
	Time         Time           `json:"time"` // start of the second (packet time)
	Packets      uint64         `json:"packets"`
	IPBytes      uint64         `json:"ip_bytes"`
	BPS          uint64         `json:"bps"` // ip_bytes * 8: the second's bits per second
	PPS          uint64         `json:"pps"` // packets: the second's packets per second
	SYN          uint64         `json:"syn"` // TCP SYN without ACK
	SYNACK       uint64         `json:"syn_ack"`
	RST          uint64         `json:"rst"`
	ICMP         uint64         `json:"icmp"`
	DNSResponses uint64         `json:"dns_responses"`
	Sources      uint64         `json:"sources"` // distinct source addresses (bounded count)
	Responders   []AddrCounters `json:"responders"`
	Sent         Time           `json:"sent"` // wall clock when the enricher published it
}

// AddrCounters is one destination address's share of a second.
type AddrCounters struct {
	Addr    string `json:"addr"`
	Packets uint64 `json:"packets"`
	IPBytes uint64 `json:"ip_bytes"`
	SYN     uint64 `json:"syn"`
}

// CountersFromPB converts a protobuf TrafficCounters to its JSON form.
func CountersFromPB(c *pb.TrafficCounters) Counters {
	t := c.GetTotal()
	out := Counters{Sensor: c.GetSensor(), Time: nsTime(c.GetSecondNs()), Packets: t.GetPackets(), IPBytes: t.GetIpBytes(),
		BPS: t.GetIpBytes() * 8, PPS: t.GetPackets(), SYN: t.GetSyn(), SYNACK: t.GetSynAck(), RST: t.GetRst(),
		ICMP: t.GetIcmp(), DNSResponses: t.GetDnsResponses(), Sources: t.GetSources(), Sent: nsTime(c.GetSentNs()),
		Responders: make([]AddrCounters, 0, len(c.GetResponders()))}
	for _, r := range c.GetResponders() {
		rc := r.GetCounters()
		out.Responders = append(out.Responders, AddrCounters{Addr: AddrString(r.GetAddr()), Packets: rc.GetPackets(),
			IPBytes: rc.GetIpBytes(), SYN: rc.GetSyn()})
	}
	return out
}
