package live

import (
	"net/http/httptest"
	"net/netip"
	"testing"

	"netwatch/api/internal/record"
	"netwatch/schema/pb"
)

func TestFilter(t *testing.T) {
	flow := flowEvent(record.Flow{Sensor: "s1", Proto: 6, OrigAddr: "10.0.0.1", OrigPort: 5000, RespAddr: "192.0.2.1", RespPort: 443})
	alert := event{typ: "alert", sensor: "s1", addrs: [2]netip.Addr{netip.MustParseAddr("10.0.0.9")}, proto: -1, ports: [2]int{-1, -1}}
	metrics := event{typ: "metrics", sensor: "s1", proto: -1, ports: [2]int{-1, -1}}
	for _, tc := range []struct {
		query                string
		flow, alert, metrics bool
	}{
		{"", true, true, true},
		{"types=flow", true, false, false},
		{"types=alerts,metrics", false, true, true},
		{"sensor=s2", false, false, false},
		{"sensor=s1&port=443", true, true, true},
		{"port=80", false, true, true},
		{"proto=udp", false, true, true},
		{"addr=192.0.2.0/24", true, false, true},
		{"addr=10.0.0.9", false, true, true},
	} {
		f, err := ParseFilter(httptest.NewRequest("GET", "/?"+tc.query, nil))
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if f.match(flow) != tc.flow || f.match(alert) != tc.alert || f.match(metrics) != tc.metrics {
			t.Errorf("%s: flow %v alert %v metrics %v; want %v %v %v", tc.query,
				f.match(flow), f.match(alert), f.match(metrics), tc.flow, tc.alert, tc.metrics)
		}
	}
	for _, q := range []string{"types=packets", "port=x", "proto=999", "addr=nope"} {
		if _, err := ParseFilter(httptest.NewRequest("GET", "/?"+q, nil)); err == nil {
			t.Errorf("%s: no error", q)
		}
	}
}

// BenchmarkFlowEvent is the per-flow cost of the live feed: protobuf to the
// JSON message, once per flow whatever the number of clients.
func BenchmarkFlowEvent(b *testing.B) {
	f := &pb.Flow{Id: "0123456789abcdef0123456789abcdef", Sensor: "s1", CommunityId: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
		Proto: 6, OrigAddr: []byte{10, 0, 0, 1}, OrigPort: 51234, RespAddr: []byte{192, 0, 2, 1}, RespPort: 443,
		StartNs: 1e18, EndNs: 1e18 + 5e8, OrigPkts: 10, OrigIpBytes: 1200, RespPkts: 8, RespIpBytes: 9000, App: "tls"}
	e := flowEvent(record.FlowFromPB(f))
	b.SetBytes(int64(len(e.data)))
	b.ReportAllocs()
	for b.Loop() {
		flowEvent(record.FlowFromPB(f))
	}
}

// BenchmarkBroadcast fans one flow out to 100 filtered clients.
func BenchmarkBroadcast(b *testing.B) {
	h := New(nil, nil, nil, nil)
	for i := 0; i < 100; i++ {
		c := &client{send: make(chan []byte, 1), live: true, filter: Filter{Port: i, Proto: -1}}
		h.clients[c] = struct{}{}
	}
	e := flowEvent(record.Flow{Sensor: "s1", Proto: 6, OrigAddr: "10.0.0.1", OrigPort: 5000, RespAddr: "192.0.2.1", RespPort: 1})
	b.ReportAllocs()
	for b.Loop() {
		h.broadcast(e)
	}
}
