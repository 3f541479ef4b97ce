package rules

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

var (
	scanner = netip.MustParseAddr("10.0.0.66").AsSlice()
	victim  = netip.MustParseAddr("10.0.0.20").AsSlice()
	// t0 is 2026-01-01T00:00:10Z: 10 s into a one-minute window.
	t0 = time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
)

// synProbe is a SYN to a closed port answered by RST-ACK (conn_state REJ).
func synProbe(port uint32, at int64) *pb.Flow {
	return &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
		StartNs: at, EndNs: at + 1e5, OrigPkts: 1, OrigIpBytes: 44, RespPkts: 1, RespIpBytes: 40,
		OrigTcpFlags: flagSYN, RespTcpFlags: flagRST | flagACK, Final: true}
}

func udpProbe(port uint32, at int64) *pb.Flow {
	return &pb.Flow{Proto: 17, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
		StartNs: at, EndNs: at, OrigPkts: 1, OrigIpBytes: 28, Final: true}
}

// conversation is an HTTP-like exchange with payload both ways.
func conversation(port uint32, at int64) *pb.Flow {
	return &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000 + port, RespAddr: victim, RespPort: port,
		StartNs: at, EndNs: at + 5e7, OrigPkts: 6, OrigBytes: 300, RespPkts: 6, RespBytes: 5000,
		OrigTcpFlags: flagSYN | flagACK | flagFIN, RespTcpFlags: flagSYN | flagACK | flagFIN, Final: true}
}

// run feeds flows to e and returns the first publish of each alert
// (updates of an alert already published are left out: TestUpdates
// covers them).
func run(e *Engine, flows []*pb.Flow) []*pb.Alert {
	var out []*pb.Alert
	for _, a := range runAll(e, flows) {
		if UpdateOf(a) == 0 {
			out = append(out, a)
		}
	}
	return out
}

// runAll is run with the updates.
func runAll(e *Engine, flows []*pb.Flow) []*pb.Alert {
	var out []*pb.Alert
	for _, f := range flows {
		out = append(out, e.Observe("s1", f)...)
	}
	return out
}

func TestPortscan(t *testing.T) {
	ms := int64(time.Millisecond)
	gen := func(n int, mk func(uint32, int64) *pb.Flow, step int64) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < n; i++ {
			fs = append(fs, mk(uint32(1+i), t0+int64(i)*step))
		}
		return fs
	}
	twice := func(fs []*pb.Flow) []*pb.Flow { return append(fs, fs...) }
	cases := []struct {
		name     string
		flows    []*pb.Flow
		alerts   int
		severity pb.Severity
	}{
		{"150 SYN probes, 1 ms apart", gen(150, synProbe, ms), 1, pb.Severity_SEVERITY_HIGH},
		{"20 SYN probes", gen(20, synProbe, ms), 0, 0},
		{"49 SYN probes (threshold-1)", gen(49, synProbe, ms), 0, 0},
		{"50 SYN probes (threshold)", gen(50, synProbe, ms), 1, pb.Severity_SEVERITY_HIGH},
		{"20 probes each sent twice", twice(gen(20, synProbe, ms)), 0, 0},
		{"92 UDP probes without reply", gen(92, udpProbe, ms), 1, pb.Severity_SEVERITY_HIGH},
		{"slow: 60 probes 0.5 s apart (30 s, one window)", gen(60, synProbe, 500*ms), 1, pb.Severity_SEVERITY_MEDIUM},
		{"150 conversations", gen(150, conversation, ms), 0, 0},
		{"55 probes over 40 s", gen(55, synProbe, 40*1000*ms/55), 1, pb.Severity_SEVERITY_MEDIUM},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := run(New(DefaultConfig()), c.flows)
			if len(got) != c.alerts {
				t.Fatalf("alerts = %d, want %d", len(got), c.alerts)
			}
			if c.alerts == 0 {
				return
			}
			a := got[0]
			win := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
			if want := schema.AlertID("s1", "portscan", "10.0.0.66", "10.0.0.20", win); a.Id != want {
				t.Errorf("id = %s, want %s", a.Id, want)
			}
			if a.Severity != c.severity || a.Category != "portscan" || a.Technique != "T1046" ||
				a.OrigAddr != "10.0.0.66" || a.RespAddr != "10.0.0.20" || a.Rule != "portscan" ||
				a.WindowStartNs != win || a.WindowEndNs != win+int64(time.Minute) || a.Sensor != "s1" {
				t.Errorf("alert = %v", a)
			}
			var ev struct {
				DistinctPorts int      `json:"distinct_ports"`
				Sample        []uint32 `json:"sample_tcp_ports"`
				WindowStart   int64    `json:"window_start_ns"`
			}
			if err := json.Unmarshal(a.Evidence, &ev); err != nil {
				t.Fatalf("evidence %s: %v", a.Evidence, err)
			}
			if ev.DistinctPorts != 50 || ev.WindowStart != win {
				t.Errorf("evidence = %s", a.Evidence)
			}
		})
	}
}

func TestPortscanReplaySameID(t *testing.T) {
	var flows []*pb.Flow
	for i := 0; i < 150; i++ {
		flows = append(flows, synProbe(uint32(1+i), t0+int64(i)*int64(time.Millisecond)))
	}
	a1 := run(New(DefaultConfig()), flows)
	a2 := run(New(DefaultConfig()), flows)
	if len(a1) != 1 || len(a2) != 1 || a1[0].Id != a2[0].Id || string(a1[0].Evidence) != string(a2[0].Evidence) {
		t.Fatalf("replay: %v vs %v", a1, a2)
	}
	// The same engine seeing the flows again does not alert twice.
	e := New(DefaultConfig())
	if n := len(run(e, append(flows, flows...))); n != 1 {
		t.Fatalf("alerts over a redelivery = %d, want 1", n)
	}
}

func TestRetractFiresAgain(t *testing.T) {
	e := New(DefaultConfig())
	var flows []*pb.Flow
	for i := 0; i < 50; i++ {
		flows = append(flows, synProbe(uint32(1+i), t0))
	}
	a := run(e, flows)
	if len(a) != 1 {
		t.Fatalf("alerts = %d", len(a))
	}
	e.Retract(a[0])
	b := run(e, flows[len(flows)-1:]) // the redelivered last flow
	if len(b) != 1 || b[0].Id != a[0].Id {
		t.Fatalf("after retract: %v", b)
	}
}

func TestWindowsSplitAndExpire(t *testing.T) {
	e := New(DefaultConfig())
	win := time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC).UnixNano()
	// 30 ports just before the boundary, 30 after: no window reaches 50.
	var flows []*pb.Flow
	for i := 0; i < 30; i++ {
		flows = append(flows, synProbe(uint32(1+i), win-1e9), synProbe(uint32(100+i), win+1e9))
	}
	if a := run(e, flows); len(a) != 0 {
		t.Fatalf("alerts = %d, want 0 (split across windows)", len(a))
	}
	// A flow three windows later expires both windows (one window of lateness).
	run(e, []*pb.Flow{synProbe(1, win+int64(3*time.Minute))})
	// The new syn_flood state and the probe's single (its originator's
	// first probe: portscan and hostsweep states are opened at a second).
	if e.Keys() != 2 {
		t.Fatalf("keys = %d, want 2", e.Keys())
	}
}

func TestHostsweep(t *testing.T) {
	mk := func(n int, proto uint32) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < n; i++ {
			f := synProbe(22, t0+int64(i)*int64(time.Millisecond))
			f.RespAddr = []byte{10, 1, byte(i / 250), byte(1 + i%250)}
			if proto == 1 {
				f = &pb.Flow{Proto: 1, IcmpType: 8, OrigAddr: scanner, RespAddr: f.RespAddr, StartNs: f.StartNs, EndNs: f.EndNs, OrigPkts: 1, RespPkts: 1}
			}
			fs = append(fs, f)
		}
		return fs
	}
	for _, c := range []struct {
		name   string
		flows  []*pb.Flow
		alerts int
	}{
		{"254 hosts port 22", mk(254, 6), 1},
		{"31 hosts port 22", mk(31, 6), 0},
		{"32 hosts ping", mk(32, 1), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			var got []*pb.Alert
			for _, a := range run(New(DefaultConfig()), c.flows) {
				if a.Category == "hostsweep" {
					got = append(got, a)
				}
			}
			if len(got) != c.alerts {
				t.Fatalf("hostsweep alerts = %d, want %d", len(got), c.alerts)
			}
			if c.alerts == 1 && (got[0].Technique != "T1018" || got[0].OrigAddr != "10.0.0.66" || got[0].RespAddr != "") {
				t.Errorf("alert = %v", got[0])
			}
		})
	}
}

func TestIsProbe(t *testing.T) {
	openSyn := &pb.Flow{Proto: 6, OrigPkts: 2, RespPkts: 1, OrigTcpFlags: flagSYN | flagRST, RespTcpFlags: flagSYN | flagACK}
	for _, c := range []struct {
		name string
		f    *pb.Flow
		want bool
	}{
		{"SYN no reply", &pb.Flow{Proto: 6, OrigPkts: 1, OrigTcpFlags: flagSYN}, true},
		{"SYN RST", synProbe(1, 0), true},
		{"SYN scan open port", openSyn, true},
		{"conversation", conversation(80, 0), false},
		{"UDP no reply", udpProbe(1, 0), true},
		{"UDP answered", &pb.Flow{Proto: 17, OrigPkts: 1, RespPkts: 1, RespBytes: 40}, false},
		{"ICMP", &pb.Flow{Proto: 1, IcmpType: 8}, false},
	} {
		if got := IsProbe(c.f); got != c.want {
			t.Errorf("%s: IsProbe = %v, want %v", c.name, got, c.want)
		}
	}
}
