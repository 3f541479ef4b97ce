package stage

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/rules"
	"netwatch/schema/pb"
)

// TestHostAnnotation: 60 SYN probes raise one portscan alert (at 50 ports)
// whose evidence carries the host model's score of the scanner's window
// with the counts so far (50 flows, 50 ports, 1 peer, all failed) and of
// the victim's (50 flows in); a flow 3 minutes later closes both windows,
// which /hosts then lists with their final counts (60). The host model
// raises no alert of its own.
func TestHostAnnotation(t *testing.T) {
	f, err := hostmodel.Load("../../models/host-iforest.model")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig(), HostModel: f}, nil, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	scanner, victim := []byte{10, 0, 0, 66}, []byte{10, 0, 0, 20}
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	batch := &pb.FlowBatch{Sensor: "s1"}
	for p := uint32(1); p <= 60; p++ {
		at := t0 + int64(p)*int64(time.Millisecond)
		batch.Flows = append(batch.Flows, &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: p,
			StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true})
	}
	alerts := st.process(batch.GetSensor(), batch.GetFlows(), "netwatch.flows.s1.1.2")
	if len(alerts) != 1 || alerts[0].GetCategory() != "portscan" {
		t.Fatalf("alerts %v", alerts)
	}
	var ev struct {
		Ports       int `json:"distinct_ports"`
		HostAnomaly struct {
			Model     string  `json:"model"`
			Threshold float64 `json:"threshold"`
			Orig      *struct {
				Score     float64          `json:"score"`
				Anomalous bool             `json:"anomalous"`
				Counts    hostmodel.Counts `json:"counts"`
			} `json:"orig"`
			Resp *struct {
				Score  float64          `json:"score"`
				Counts hostmodel.Counts `json:"counts"`
			} `json:"resp"`
		} `json:"host_anomaly"`
	}
	if err := json.Unmarshal(alerts[0].GetEvidence(), &ev); err != nil {
		t.Fatalf("evidence %s: %v", alerts[0].GetEvidence(), err)
	}
	ha := ev.HostAnomaly
	if ha.Model != hostmodel.ModelName || ha.Threshold != f.Threshold || ha.Orig == nil || ha.Resp == nil {
		t.Fatalf("host_anomaly %+v in %s", ha, alerts[0].GetEvidence())
	}
	wantOrig := hostmodel.Counts{FlowsOut: 50, PeersOut: 1, PortsOut: 50, FailedOut: 50, PktsOut: 50}
	wantResp := hostmodel.Counts{FlowsIn: 50, PeersIn: 1, PktsOut: 50}
	if ha.Orig.Counts != wantOrig || ha.Resp.Counts != wantResp || ha.Orig.Score != f.Score(wantOrig.Vector()) ||
		ha.Orig.Anomalous != f.Anomalous(ha.Orig.Score) {
		t.Errorf("orig %+v, resp %+v", ha.Orig, ha.Resp)
	}
	later := t0 + int64(3*time.Minute)
	if a := st.process("s1", []*pb.Flow{{Proto: 17, OrigAddr: []byte{10, 0, 0, 5}, RespAddr: []byte{10, 0, 0, 53},
		RespPort: 53, StartNs: later, EndNs: later, OrigPkts: 1, RespPkts: 1}}, "netwatch.flows.s1.1.2"); len(a) != 0 {
		t.Errorf("alerts %v", a)
	}
	if n := testutil.ToFloat64(m.HostWindows); n != 2 {
		t.Errorf("host windows scored %v, want 2", n)
	}
	srv := httptest.NewServer(st.HostsHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "?limit=10")
	if err != nil {
		t.Fatal(err)
	}
	var body struct {
		Model string      `json:"model"`
		Hosts []HostScore `json:"hosts"`
	}
	err = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(body.Hosts) != 2 {
		t.Fatalf("GET /hosts: %d %v %+v", resp.StatusCode, err, body)
	}
	for _, h := range body.Hosts {
		if (h.Addr == "10.0.0.66" && h.Counts.PortsOut != 60) || (h.Addr == "10.0.0.20" && h.Counts.FlowsIn != 60) || h.Sensor != "s1" {
			t.Errorf("host %+v", h)
		}
	}
	for _, q := range []string{"?anomalous=maybe", "?limit=0", "?limit=x"} {
		r, err := http.Get(srv.URL + q)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, r.StatusCode)
		}
	}
	off := New(Config{Rules: rules.DefaultConfig()}, nil, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rec := httptest.NewRecorder()
	off.HostsHandler()(rec, httptest.NewRequest("GET", "/hosts", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("no model: status %d", rec.Code)
	}
}
