package output

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leodido/go-syslog/v4/rfc5424"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"netwatch/schema/pb"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func testAlert() *pb.Alert {
	return &pb.Alert{Id: "d160b108ce20182f96670bb844fe9013", TimeNs: 1767225610049100000, Sensor: "s1",
		Severity: pb.Severity_SEVERITY_HIGH, Category: "portscan", Technique: "T1046", OrigAddr: "10.0.0.66",
		RespAddr: "10.0.0.20", Summary: `10.0.0.66 probed 50 distinct ports on 10.0.0.20 within 0.0s "quoted" ]`,
		Evidence: []byte(`{"distinct_ports":50,"update":1}`), Rule: "portscan",
		WindowStartNs: 1767225600000000000, WindowEndNs: 1767225660000000000, Score: 0.5}
}

// TestWebhookRetries: a real local HTTP server answers 503 twice, then 200:
// the alert arrives once, as JSON with the field names, after two
// retries.
func TestWebhookRetries(t *testing.T) {
	var calls atomic.Int32
	got := make(chan map[string]any, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || r.Header.Get("Authorization") != "Bearer x" {
			t.Errorf("request %s %s %v", r.Method, r.Header.Get("Content-Type"), r.Header)
		}
		if n <= 2 {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		var doc map[string]any
		if err := json.NewDecoder(r.Body).Decode(&doc); err != nil {
			t.Errorf("body: %v", err)
		}
		got <- doc
	}))
	defer srv.Close()
	m := NewMetrics(prometheus.NewRegistry())
	w := NewWebhook(WebhookConfig{URL: srv.URL, Backoff: 10 * time.Millisecond, Header: http.Header{"Authorization": {"Bearer x"}}}, m, quiet)
	if !w.Send(testAlert()) {
		t.Fatal("not queued")
	}
	var doc map[string]any
	select {
	case doc = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.Close(ctx)
	want := map[string]any{"id": "d160b108ce20182f96670bb844fe9013", "time": "2026-01-01T00:00:10.0491Z", "sensor": "s1",
		"severity": "high", "category": "portscan", "technique": "T1046", "orig_addr": "10.0.0.66", "resp_addr": "10.0.0.20",
		"rule": "portscan", "window_start": "2026-01-01T00:00:00Z", "window_end": "2026-01-01T00:01:00Z", "score": 0.5, "update": float64(1)}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("%s = %v, want %v", k, doc[k], v)
		}
	}
	if ev, ok := doc["evidence"].(map[string]any); !ok || ev["distinct_ports"] != float64(50) {
		t.Errorf("evidence = %v", doc["evidence"])
	}
	if calls.Load() != 3 || testutil.ToFloat64(m.Sent.WithLabelValues("webhook")) != 1 ||
		testutil.ToFloat64(m.Retries.WithLabelValues("webhook")) != 2 || testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")) != 0 {
		t.Errorf("calls %d sent %v retries %v dropped %v", calls.Load(), testutil.ToFloat64(m.Sent.WithLabelValues("webhook")),
			testutil.ToFloat64(m.Retries.WithLabelValues("webhook")), testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")))
	}
}

// TestWebhookPermanent: a 400 is not retried.
func TestWebhookPermanent(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "bad", http.StatusBadRequest)
	}))
	defer srv.Close()
	m := NewMetrics(prometheus.NewRegistry())
	w := NewWebhook(WebhookConfig{URL: srv.URL, Backoff: time.Millisecond}, m, quiet)
	w.Send(testAlert())
	w.Close(context.Background())
	if calls.Load() != 1 || testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")) != 1 {
		t.Errorf("calls %d dropped %v, want 1 and 1", calls.Load(), testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")))
	}
}

// TestWebhookBoundedQueue: with the server stuck, a queue of 2 takes at
// most 3 alerts (one in flight); the rest are dropped at once and counted;
// once the server answers, every queued alert is delivered.
func TestWebhookBoundedQueue(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		<-release
	}))
	defer srv.Close()
	m := NewMetrics(prometheus.NewRegistry())
	w := NewWebhook(WebhookConfig{URL: srv.URL, Queue: 2, Timeout: 30 * time.Second}, m, quiet)
	accepted := 0
	w.Send(testAlert())
	for calls.Load() == 0 { // the first one is in flight
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 9; i++ {
		if w.Send(testAlert()) {
			accepted++
		}
	}
	if accepted != 2 || testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")) != 7 {
		t.Errorf("accepted %d dropped %v, want 2 and 7", accepted, testutil.ToFloat64(m.Dropped.WithLabelValues("webhook")))
	}
	close(release)
	w.Close(context.Background())
	if testutil.ToFloat64(m.Sent.WithLabelValues("webhook")) != 3 {
		t.Errorf("sent %v, want 3", testutil.ToFloat64(m.Sent.WithLabelValues("webhook")))
	}
}

// header5424 is the RFC 5424 header ABNF for this alert: PRI 35 (facility
// 4 security, severity 3 error), VERSION 1, the packet time, HOSTNAME,
// APP-NAME, PROCID digits, MSGID the category.
var header5424 = regexp.MustCompile(`^<35>1 2026-01-01T00:00:10\.0491Z sensorhost netwatch-detector [0-9]+ portscan \[netwatch@32473 `)

func checkSyslog(t *testing.T, raw []byte) {
	t.Helper()
	if !header5424.Match(raw) {
		t.Errorf("header: %q", raw)
	}
	msg, err := rfc5424.NewParser().Parse(raw)
	if err != nil {
		t.Fatalf("RFC 5424 parse %q: %v", raw, err)
	}
	sm := msg.(*rfc5424.SyslogMessage)
	sd := (*sm.StructuredData)["netwatch@32473"]
	if *sm.Message != testAlert().Summary || *sm.Severity != 3 || *sm.Facility != 4 || sd["id"] != testAlert().Id ||
		sd["orig"] != "10.0.0.66" || sd["resp"] != "10.0.0.20" || sd["technique"] != "T1046" || sd["update"] != "1" {
		t.Errorf("parsed %+v %v", sm, sd)
	}
}

// TestSyslogUDP: one alert arrives at a real UDP listener as one RFC 5424
// datagram.
func TestSyslogUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	m := NewMetrics(prometheus.NewRegistry())
	s, err := NewSyslog(SyslogConfig{Addr: "udp://" + pc.LocalAddr().String(), Hostname: "sensorhost"}, m, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(testAlert())
	buf := make([]byte, 64<<10)
	_ = pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	s.Close(context.Background())
	checkSyslog(t, buf[:n])
	if testutil.ToFloat64(m.Sent.WithLabelValues("syslog")) != 1 {
		t.Error("sent != 1")
	}
}

// TestSyslogTCP: two alerts arrive octet-counted (RFC 6587) on a real TCP
// listener; after the listener drops the connection, the next alert
// arrives on a new one.
func TestSyslogTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	frames := make(chan []byte, 8)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for conns := 0; conns < 2; conns++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			for i := 0; i < 2-conns; i++ { // first connection: 2 frames, then hang up
				l, err := r.ReadString(' ')
				if err != nil {
					break
				}
				n, _ := strconv.Atoi(l[:len(l)-1])
				b := make([]byte, n)
				if _, err := io.ReadFull(r, b); err != nil {
					break
				}
				frames <- b
			}
			c.Close()
		}
	}()
	m := NewMetrics(prometheus.NewRegistry())
	s, err := NewSyslog(SyslogConfig{Addr: "tcp://" + ln.Addr().String(), Hostname: "sensorhost"}, m, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(testAlert())
	s.Send(testAlert())
	for i := 0; i < 2; i++ {
		select {
		case f := <-frames:
			checkSyslog(t, f)
		case <-time.After(10 * time.Second):
			t.Fatal("no frame")
		}
	}
	// The server hung up: writes fail (perhaps only the second one after
	// the close), then a redial delivers.
	deadline := time.After(20 * time.Second)
	for delivered := false; !delivered; {
		s.Send(testAlert())
		select {
		case f := <-frames:
			checkSyslog(t, f)
			delivered = true
		case <-time.After(300 * time.Millisecond):
		case <-deadline:
			t.Fatal("no frame after the reconnect")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.Close(ctx)
	ln.Close()
	wg.Wait()
}

func TestParseSyslogAddr(t *testing.T) {
	for in, want := range map[string]string{"udp://h:514": "udp h:514", "tcp://10.0.0.1:601": "tcp 10.0.0.1:601", "h:514": "udp h:514",
		"tls://h:6514": "", "h": "", "udp://": ""} {
		n, a, err := ParseSyslogAddr(in)
		got := n + " " + a
		if err != nil {
			got = ""
		}
		if got != want {
			t.Errorf("ParseSyslogAddr(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
}

// TestSyslogNanosecondTime: an alert whose packet time has nanoseconds
// (1767225610.123456789 s, 2026-01-01T00:00:10.123456789Z) keeps its
// TIMESTAMP: RFC 5424 6.2.3 allows at most 6 TIME-SECFRAC digits, so the
// time is truncated (not rounded) to microseconds, and a strict RFC 5424
// parser reads it back.
func TestSyslogNanosecondTime(t *testing.T) {
	s, err := NewSyslog(SyslogConfig{Addr: "udp://127.0.0.1:9", Hostname: "vm"}, NewMetrics(prometheus.NewRegistry()), quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	for ns, want := range map[int64]string{
		1767225610123456789: "2026-01-01T00:00:10.123456Z",
		1767225610049100000: "2026-01-01T00:00:10.0491Z",
		1767225610000000999: "2026-01-01T00:00:10Z",
	} {
		a := testAlert()
		a.TimeNs = ns
		line, err := s.Format(a)
		if err != nil {
			t.Fatalf("format %d: %v", ns, err)
		}
		if !regexp.MustCompile(`^<35>1 ` + regexp.QuoteMeta(want) + ` vm netwatch-detector `).MatchString(line) {
			t.Errorf("time %d: %q, want TIMESTAMP %s", ns, line, want)
		}
		msg, err := rfc5424.NewParser().Parse([]byte(line))
		if err != nil {
			t.Fatalf("RFC 5424 parse %q: %v", line, err)
		}
		if ts := msg.(*rfc5424.SyslogMessage).Timestamp; ts == nil || ts.UnixNano() != ns-ns%1000 {
			t.Errorf("time %d: parsed timestamp %v, want %d ns", ns, ts, ns-ns%1000)
		}
	}
}
