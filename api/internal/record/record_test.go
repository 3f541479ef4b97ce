package record

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

func TestTimeJSON(t *testing.T) {
	b, _ := json.Marshal(Time(time.Date(2024, 5, 1, 14, 0, 0, 120000000, time.FixedZone("x", 2*3600))))
	if string(b) != `"2024-05-01T12:00:00.120000000Z"` {
		t.Errorf("got %s", b)
	}
}

func TestFlowFromPB(t *testing.T) {
	v6 := netip.MustParseAddr("2001:db8::1").AsSlice()
	mapped := netip.MustParseAddr("::ffff:192.0.2.1").AsSlice()
	f := FlowFromPB(&pb.Flow{Id: "x", OrigAddr: v6, RespAddr: mapped, Proto: 58, IcmpType: 128,
		StartNs: 1_000_000_000, EndNs: 3_500_000_000, EndReason: pb.EndReason_END_RST, Tunnel: pb.Tunnel_TUNNEL_GRE})
	if f.OrigAddr != "2001:db8::1" || f.RespAddr != "::ffff:192.0.2.1" || f.IcmpType != 128 || f.Duration != 2.5 || // mapped stays IPv6, as in flows (inet)
		f.EndReason != "rst" || f.Tunnel != "gre" || time.Time(f.FlowStart) != time.Time(f.Start) {
		t.Errorf("%+v", f)
	}
	if FlowFromPB(&pb.Flow{OrigAddr: []byte{1, 2, 3}}).OrigAddr != "" {
		t.Error("3-byte address accepted")
	}
	if schema.EndReasonName(pb.EndReason_END_UNKNOWN) != "" || schema.TunnelName(pb.Tunnel_TUNNEL_NONE) != "" ||
		schema.TunnelName(pb.Tunnel_TUNNEL_OTHER) != "other" || schema.EndReasonName(pb.EndReason_END_SHUTDOWN) != "shutdown" {
		t.Error("enum names")
	}
}

func TestAlertFromPB(t *testing.T) {
	a := AlertFromPB(&pb.Alert{Id: "a", Severity: pb.Severity_SEVERITY_CRITICAL, Evidence: []byte(`[1,2]`), RespAddr: "10.0.0.1"})
	b, _ := json.Marshal(a)
	s := string(b)
	if !strings.Contains(s, `"severity":"critical"`) || !strings.Contains(s, `"evidence":{}`) ||
		strings.Contains(s, `"orig_addr"`) || !strings.Contains(s, `"resp_addr":"10.0.0.1"`) || strings.Contains(s, "window_start") {
		t.Errorf("%s", s)
	}
	if schema.SeverityName(pb.Severity_SEVERITY_UNKNOWN) != "unknown" || SeverityRank("medium") != 3 || SeverityRank("x") != 0 {
		t.Error("severity names")
	}
}

func TestMetricsFromPB(t *testing.T) {
	m := MetricsFromPB(&pb.Metrics{Sensor: "s", Interfaces: []*pb.InterfaceCounters{{Name: "eth0", RxBytes: 5}}})
	b, _ := json.Marshal(m)
	s := string(b)
	if !strings.Contains(s, `"disks":[]`) || !strings.Contains(s, `"interfaces":[{"name":"eth0","rx_bytes":5,`) ||
		!strings.Contains(s, `"captures":[]`) {
		t.Errorf("%s", s)
	}
}
