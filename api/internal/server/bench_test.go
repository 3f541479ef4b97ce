package server_test

import (
	"bytes"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// BenchmarkLiveFanout is the live-feed load: 500 WebSocket clients
// while flows arrive at 5,000 per second in total (FlowBatch messages of
// 250 flows every 50 ms), every client subscribed to alerts and counters
// (one alert and one counters message per second), 50 of them to all flows
// too. It reports the delivery latency (publish to a client's read, from the
// publish time stamped in each message) at p50/p99/max over every message
// every client received, and messages dropped. One iteration is a 5 s run.
func BenchmarkLiveFanout(b *testing.B) {
	for _, batched := range []bool{false, true} {
		b.Run(fmt.Sprintf("batch=%v", batched), func(b *testing.B) { benchFanout(b, batched) })
	}
}

func benchFanout(b *testing.B, batched bool) {
	const clients, flowClients, flowsPerSec, batch, seconds = 500, 50, 5000, 250, 5
	e := newEnv(b)
	e.srv.Hub.Buffer = 4096
	for b.Loop() {
		var mu sync.Mutex
		var lat []time.Duration
		var got, dropped int
		var wg sync.WaitGroup
		conns := make([]*websocket.Conn, clients)
		for i := range conns {
			q := url.Values{"types": {"alert,counters"}}
			if batched {
				q.Set("batch", "1")
			}
			if i < flowClients {
				q.Set("types", "flow,alert,counters")
			}
			c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/api/v1/live", q), nil)
			if err != nil {
				b.Fatal(err)
			}
			conns[i] = c
			wg.Add(1)
			go func() {
				defer wg.Done()
				var local []time.Duration
				n, d, d0 := 0, 0, 0
				for {
					_, frame, err := c.ReadMessage()
					now := time.Now()
					if err != nil {
						break
					}
					for data := range bytes.SplitSeq(frame, []byte{'\n'}) {
						sent, ok := stamp(data)
						if !ok {
							if bytes.HasPrefix(data, []byte(`{"type":"dropped"`)) {
								fmt.Sscanf(string(data), `{"type":"dropped","dropped":%d`, &d0)
								d += d0
							}
							continue
						}
						local = append(local, now.Sub(sent))
						n++
					}
				}
				mu.Lock()
				lat = append(lat, local...)
				got += n
				dropped += d
				mu.Unlock()
			}()
		}
		for e.srv.Hub.Clients() < clients {
			time.Sleep(10 * time.Millisecond)
		}
		tick := time.NewTicker(time.Second * batch / flowsPerSec)
		published := 0
		for i := 0; i < seconds*flowsPerSec/batch; i++ {
			<-tick.C
			now := time.Now()
			flows := make([]*pb.Flow, batch)
			for j := range flows {
				flows[j] = testFlow("s1", j%250, 6, 80)
				flows[j].StartNs = now.UnixNano()
			}
			fb, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1", Flows: flows})
			if err := e.nc.Publish(schema.FlowsSubject("s1", 0, 0), fb); err != nil {
				b.Fatal(err)
			}
			published += batch
			if i%(flowsPerSec/batch) == 0 {
				ab, _ := proto.Marshal(&pb.Alert{Id: fmt.Sprint(i), TimeNs: now.UnixNano(), Sensor: "s1",
					Severity: pb.Severity_SEVERITY_HIGH, Category: "portscan", Summary: "x"})
				cb, _ := proto.Marshal(&pb.TrafficCounters{Sensor: "s1", SecondNs: now.Truncate(time.Second).UnixNano(),
					SentNs: now.UnixNano(), Total: &pb.CounterSet{Packets: 10, IpBytes: 1000}})
				_ = e.nc.Publish(schema.AlertsSubject("s1"), ab)
				_ = e.nc.Publish(schema.CountersSubject("s1"), cb)
			}
		}
		tick.Stop()
		_ = e.nc.Flush()
		time.Sleep(time.Second) // let the last messages arrive
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
		slices.Sort(lat)
		if len(lat) == 0 {
			b.Fatal("no message received")
		}
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
		b.ReportMetric(pct(0.5), "p50_ms")
		b.ReportMetric(pct(0.99), "p99_ms")
		b.ReportMetric(float64(lat[len(lat)-1])/1e6, "max_ms")
		b.ReportMetric(float64(got)/seconds, "msgs/s")
		b.ReportMetric(float64(dropped), "dropped")
		b.Logf("%d flows published, %d messages received by %d clients (%d want flows), %d dropped", published, got, clients, flowClients, dropped)
	}
}

// stamp finds the publish time the benchmark put in a message without
// decoding all of it: a flow's start, an alert's time, counters' sent.
func stamp(data []byte) (time.Time, bool) {
	for _, key := range []string{`"start":"`, `"sent":"`, `"time":"`} {
		if i := bytes.Index(data, []byte(key)); i >= 0 {
			j := i + len(key)
			k := bytes.IndexByte(data[j:], '"')
			if k < 0 {
				return time.Time{}, false
			}
			t, err := time.Parse(time.RFC3339Nano, string(data[j:j+k]))
			return t, err == nil
		}
	}
	return time.Time{}, false
}
