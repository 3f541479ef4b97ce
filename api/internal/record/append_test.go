package record

import (
	"encoding/json"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

func appendFlowCases() []*pb.Flow {
	return []*pb.Flow{
		{},
		{Id: "0123456789abcdef0123456789abcdef", Sensor: "s1", CommunityId: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
			Proto: 6, OrigAddr: []byte{10, 0, 0, 1}, OrigPort: 51234, RespAddr: []byte{192, 0, 2, 1}, RespPort: 443,
			StartNs: 1e18, EndNs: 1e18 + 5e8, OrigPkts: 10, OrigIpBytes: 1200, RespPkts: 8, RespIpBytes: 9000, App: "tls",
			Final: true, EndReason: pb.EndReason_END_FIN, Tunnel: pb.Tunnel_TUNNEL_VXLAN, TunnelId: 42, DirectionGuessed: true},
		{Proto: 58, OrigAddr: make([]byte, 16), RespAddr: []byte{0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
			IcmpType: 128, StartNs: -1, EndNs: 1, FlowStartNs: -5, EndReason: 99, Tunnel: 77},
		{OrigAddr: []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4}, RespAddr: []byte{1, 2, 3}, StartNs: 0, EndNs: 1,
			ServerName: "a<b>&\"c\\\n\t\r\b\f\x01\x7f é \u2028\u2029 日本", History: "ShADadFf", ConnState: "SF",
			OrigName: "\xff\xfe bad utf8", RespName: "x", Direction: "outbound", Vlan: 4095, InnerVlan: 7},
		{StartNs: 0, EndNs: math.MaxInt64, RecordIndex: math.MaxUint32, OrigPkts: math.MaxUint64},
		{OrigCountry: "SE", OrigCity: "Malmö", OrigAsn: math.MaxUint32, OrigAsOrg: "Example \"AS\"", RespCountry: "US",
			RespCity: "<x>", RespAsn: 15169, RespAsOrg: "GOOGLE", AppFromPort: true, Ja3: "e7d705a3286e19ea42f587b344ee6865",
			Ja4: "t13d1516h2_8daaf6152771_02713d6af862", HttpUserAgent: "curl/8.5.0 \u2028\x00"},
	}
}

// TestAppendFlowJSON: the appender writes what encoding/json writes for
// FlowFromPB.
func TestAppendFlowJSON(t *testing.T) {
	for i, f := range appendFlowCases() {
		checkAppend(t, i, f, "batch-sensor")
	}
}

func checkAppend(t *testing.T, i int, f *pb.Flow, sensor string) {
	t.Helper()
	want := FlowFromPB(f)
	if want.Sensor == "" {
		want.Sensor = sensor
	}
	wb, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	if got := AppendFlowJSON(nil, f, sensor); string(got) != string(wb) {
		t.Errorf("case %d:\n got %s\nwant %s", i, got, wb)
	}
}

func TestAppendTime(t *testing.T) {
	for _, ns := range []int64{0, 1, -1, 1e18, -1e18, math.MaxInt64, math.MinInt64, 1714564801123456000, 253402300799999999999 % math.MaxInt64} {
		want, _ := Time(nsTime(ns)).MarshalJSON()
		if got := appendTime(nil, ns); string(got) != string(want) {
			t.Errorf("%d: got %s, want %s", ns, got, want)
		}
	}
}

// FuzzAppendFlowJSON compares the appender with encoding/json on flows
// decoded from arbitrary protobuf bytes (seeds: the table cases).
func FuzzAppendFlowJSON(f *testing.F) {
	for _, c := range appendFlowCases() {
		b, _ := protoMarshal(c)
		f.Add(b, "s")
	}
	f.Fuzz(func(t *testing.T, data []byte, sensor string) {
		var fl pb.Flow
		if protoUnmarshal(data, &fl) != nil {
			return
		}
		checkAppend(t, 0, &fl, sensor)
	})
}

func BenchmarkAppendFlowJSON(b *testing.B) {
	f := appendFlowCases()[1]
	buf := AppendFlowJSON(nil, f, "")
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendFlowJSON(buf[:0], f, "")
	}
}

func protoMarshal(m *pb.Flow) ([]byte, error)   { return proto.Marshal(m) }
func protoUnmarshal(b []byte, m *pb.Flow) error { return proto.Unmarshal(b, m) }
