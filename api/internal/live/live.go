// Package live is the api's real-time side: it subscribes to the FLOWS,
// ALERTS and METRICS subjects, decodes the protobuf messages and fans them
// out as JSON to WebSocket clients, each with its own filter and a bounded
// buffer; it also replays stored flows of a past time range (DESIGN.md,
// "Replay").
package live

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/api/internal/record"
	"netwatch/api/internal/rest"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Defaults of Hub's tunables.
const (
	DefaultBuffer       = 1024             // messages queued per client before dropping
	DefaultPingInterval = 20 * time.Second // a client that answers no ping for 2 intervals is closed
	writeTimeout        = 10 * time.Second
)

// Hub subscribes to the pipeline's subjects and serves WebSocket clients on
// /api/v1/live. The zero value is not usable: call New, then Start.
type Hub struct {
	nc   *nats.Conn
	pool *pgxpool.Pool // for replay; nil disables it
	log  *slog.Logger

	// Buffer is the number of messages queued per client; a client that
	// falls further behind loses messages (counted and reported to it).
	Buffer int
	// PingInterval is how often clients are pinged.
	PingInterval time.Duration

	upgrader websocket.Upgrader

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool
	subs    []*nats.Subscription
	wg      sync.WaitGroup

	mClients  prometheus.Gauge
	mDropped  prometheus.Counter
	mSent     *prometheus.CounterVec
	mReceived *prometheus.CounterVec
	mBad      *prometheus.CounterVec
}

// New returns a hub reading from nc; pool (may be nil) serves replays.
// Its metrics are registered on reg.
func New(nc *nats.Conn, pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer) *Hub {
	h := &Hub{nc: nc, pool: pool, log: log, Buffer: DefaultBuffer, PingInterval: DefaultPingInterval,
		clients:  map[*client]struct{}{},
		upgrader: websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 16 << 10, EnableCompression: true},
		mClients: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_api_ws_clients",
			Help: "WebSocket clients connected to the live feed."}),
		mDropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_ws_dropped_messages_total",
			Help: "Live messages dropped because a client's buffer was full."}),
		mSent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_api_ws_messages_total",
			Help: "Messages queued to WebSocket clients, by type."}, []string{"type"}),
		mReceived: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_api_live_received_total",
			Help: "Records received from NATS for the live feed, by type."}, []string{"type"}),
		mBad: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_api_live_decode_errors_total",
			Help: "NATS messages of the live feed that did not decode, by type."}, []string{"type"}),
	}
	if reg != nil {
		reg.MustRegister(h.mClients, h.mDropped, h.mSent, h.mReceived, h.mBad)
	}
	return h
}

// Start subscribes to the FLOWS, ALERTS and METRICS subjects (core NATS:
// the feed shows new messages only).
func (h *Hub) Start() error {
	for _, s := range []struct {
		subject string
		fn      nats.MsgHandler
	}{
		{schema.FlowsPrefix + ".>", h.onFlows},
		{schema.AlertsPrefix + ".>", h.onAlert},
		{schema.MetricsPrefix + ".>", h.onMetrics},
	} {
		sub, err := h.nc.Subscribe(s.subject, s.fn)
		if err != nil {
			h.unsubscribe()
			return fmt.Errorf("subscribe %s: %w", s.subject, err)
		}
		_ = sub.SetPendingLimits(1<<20, 512<<20)
		h.mu.Lock()
		h.subs = append(h.subs, sub)
		h.mu.Unlock()
	}
	return h.nc.Flush()
}

func (h *Hub) unsubscribe() {
	h.mu.Lock()
	subs := h.subs
	h.subs = nil
	h.mu.Unlock()
	for _, s := range subs {
		_ = s.Unsubscribe()
	}
}

// Close unsubscribes, closes every client connection with a "going away"
// close frame (http.Server.Shutdown does not track hijacked connections)
// and waits for their goroutines.
func (h *Hub) Close() {
	h.unsubscribe()
	h.mu.Lock()
	h.closed = true
	cs := make([]*client, 0, len(h.clients))
	for c := range h.clients {
		cs = append(cs, c)
	}
	h.mu.Unlock()
	for _, c := range cs {
		c.stop()
	}
	h.wg.Wait()
}

// Clients is the number of connected clients.
func (h *Hub) Clients() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}

// event is one message for clients with what filters look at.
type event struct {
	typ    string // flow, alert, metrics
	sensor string
	addrs  [2]netip.Addr // flow or alert; invalid when absent
	ports  [2]int        // flows only
	proto  int           // flows only
	data   []byte        // the JSON message
}

type message struct {
	Type    string          `json:"type"`
	Flow    *record.Flow    `json:"flow,omitempty"`
	Alert   *record.Alert   `json:"alert,omitempty"`
	Metrics *record.Metrics `json:"metrics,omitempty"`
	Dropped uint64          `json:"dropped,omitempty"`
}

func marshal(m message) []byte {
	b, _ := json.Marshal(m)
	return b
}

func parseAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a.Unmap()
}

func flowEvent(f record.Flow) event {
	return event{typ: "flow", sensor: f.Sensor, addrs: [2]netip.Addr{parseAddr(f.OrigAddr), parseAddr(f.RespAddr)},
		ports: [2]int{f.OrigPort, f.RespPort}, proto: f.Proto, data: marshal(message{Type: "flow", Flow: &f})}
}

func (h *Hub) onFlows(m *nats.Msg) {
	var b pb.FlowBatch
	if err := proto.Unmarshal(m.Data, &b); err != nil {
		h.mBad.WithLabelValues("flow").Inc()
		return
	}
	h.mReceived.WithLabelValues("flow").Add(float64(len(b.GetFlows())))
	if h.Clients() == 0 {
		return
	}
	for _, f := range b.GetFlows() {
		if f.GetSensor() == "" {
			f.Sensor = b.GetSensor()
		}
		h.broadcast(flowEvent(record.FlowFromPB(f)))
	}
}

func (h *Hub) onAlert(m *nats.Msg) {
	var a pb.Alert
	if err := proto.Unmarshal(m.Data, &a); err != nil {
		h.mBad.WithLabelValues("alert").Inc()
		return
	}
	h.mReceived.WithLabelValues("alert").Inc()
	if h.Clients() == 0 {
		return
	}
	if a.GetSensor() == "" {
		a.Sensor = schema.SensorFromSubject(m.Subject)
	}
	al := record.AlertFromPB(&a)
	h.broadcast(event{typ: "alert", sensor: al.Sensor, addrs: [2]netip.Addr{parseAddr(a.GetOrigAddr()), parseAddr(a.GetRespAddr())},
		proto: -1, ports: [2]int{-1, -1}, data: marshal(message{Type: "alert", Alert: &al})})
}

func (h *Hub) onMetrics(m *nats.Msg) {
	var x pb.Metrics
	if err := proto.Unmarshal(m.Data, &x); err != nil {
		h.mBad.WithLabelValues("metrics").Inc()
		return
	}
	h.mReceived.WithLabelValues("metrics").Inc()
	if h.Clients() == 0 {
		return
	}
	if x.GetSensor() == "" {
		x.Sensor = schema.SensorFromSubject(m.Subject)
	}
	mt := record.MetricsFromPB(&x)
	h.broadcast(event{typ: "metrics", sensor: mt.Sensor, proto: -1, ports: [2]int{-1, -1},
		data: marshal(message{Type: "metrics", Metrics: &mt})})
}

func (h *Hub) broadcast(e event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		if !c.live || !c.filter.match(e) {
			continue
		}
		select {
		case c.send <- e.data:
			h.mSent.WithLabelValues(e.typ).Inc()
		default:
			c.dropped.Add(1)
			h.mDropped.Inc()
		}
	}
}

// Filter is a client's choice of messages, from the query parameters
// types, sensor, addr, port and proto. Address, port and protocol apply to
// flows; the address also to alerts; metrics pass on sensor alone.
type Filter struct {
	Types  map[string]bool // nil: all
	Sensor string
	Addr   netip.Prefix // invalid: any
	Port   int          // -1 any
	Proto  int          // -1 any
}

// ParseFilter reads a Filter from URL query parameters.
func ParseFilter(r *http.Request) (Filter, error) {
	q := r.URL.Query()
	f := Filter{Sensor: q.Get("sensor"), Port: -1, Proto: -1}
	if v := q.Get("types"); v != "" {
		f.Types = map[string]bool{}
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			switch t {
			case "flow", "alert", "metrics":
				f.Types[t] = true
			case "flows", "alerts":
				f.Types[strings.TrimSuffix(t, "s")] = true
			default:
				return f, fmt.Errorf("types: %q is not flow, alert or metrics", t)
			}
		}
	}
	pf, ok, err := rest.ParseAddr(q.Get("addr"))
	if err != nil {
		return f, err
	}
	if ok {
		f.Addr = pf
	}
	if v := q.Get("port"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 {
			return f, fmt.Errorf("port: %q is not an integer from 0 to 65535", v)
		}
		f.Port = n
	}
	if f.Proto, err = rest.ParseProto(q.Get("proto")); err != nil {
		return f, err
	}
	return f, nil
}

func (f *Filter) match(e event) bool {
	if f.Types != nil && !f.Types[e.typ] {
		return false
	}
	if f.Sensor != "" && f.Sensor != e.sensor {
		return false
	}
	if e.typ == "metrics" {
		return true
	}
	if f.Addr.IsValid() && !f.Addr.Contains(e.addrs[0]) && !f.Addr.Contains(e.addrs[1]) {
		return false
	}
	if e.typ == "alert" {
		return true
	}
	if f.Port >= 0 && f.Port != e.ports[0] && f.Port != e.ports[1] {
		return false
	}
	return f.Proto < 0 || f.Proto == e.proto
}

type client struct {
	conn     *websocket.Conn
	send     chan []byte
	filter   Filter
	live     bool          // false for a replay, which gets no live messages
	dropped  atomic.Uint64 // dropped since the last report
	done     chan struct{}
	stopOnce sync.Once
}

func (c *client) stop() { c.stopOnce.Do(func() { close(c.done) }) }

// ServeHTTP upgrades the request to a WebSocket and streams messages until
// the client goes away or the hub closes. With a from parameter it replays
// stored flows instead (see replay).
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r)
	var rp *replay
	if err == nil {
		rp, err = parseReplay(r)
	}
	if err != nil {
		rest.WriteError(w, http.StatusBadRequest, err.Error())
		return
	}
	if rp != nil && h.pool == nil {
		rest.WriteError(w, http.StatusServiceUnavailable, "replay needs the database")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		rest.WriteError(w, http.StatusBadRequest, "this endpoint is a WebSocket: send an Upgrade request")
		return
	}
	h.mu.Lock()
	closed := h.closed
	if !closed {
		h.wg.Add(1)
	}
	h.mu.Unlock()
	if closed {
		rest.WriteError(w, http.StatusServiceUnavailable, "shutting down")
		return
	}
	defer h.wg.Done()
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the client
	}
	c := &client{conn: conn, send: make(chan []byte, max(h.Buffer, 1)), filter: f, live: rp == nil, done: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		conn.Close()
		return
	}
	h.clients[c] = struct{}{}
	h.mClients.Inc()
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.clients, c)
		h.mu.Unlock()
		h.mClients.Dec()
		conn.Close()
	}()

	go h.read(c)
	if rp != nil {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-c.done
			cancel()
		}()
		go func() {
			if err := h.replay(ctx, c, rp); err != nil && !errors.Is(err, context.Canceled) {
				h.log.Warn("replay", "err", err)
				select {
				case c.send <- marshalError(err):
				case <-c.done:
				}
			}
		}()
		defer cancel()
	}
	h.write(c)
}

func marshalError(err error) []byte {
	b, _ := json.Marshal(map[string]string{"type": "error", "error": err.Error()})
	return b
}

// read consumes client frames (pongs, close) and stops c when the
// connection fails or no pong came within two ping intervals.
func (h *Hub) read(c *client) {
	defer c.stop()
	c.conn.SetReadLimit(4096)
	wait := 2 * h.PingInterval
	_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	c.conn.SetPongHandler(func(string) error { return c.conn.SetReadDeadline(time.Now().Add(wait)) })
	for {
		if _, _, err := c.conn.ReadMessage(); err != nil {
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(wait))
	}
}

// write sends queued messages, pings, and drop reports until c stops.
func (h *Hub) write(c *client) {
	ping := time.NewTicker(h.PingInterval)
	defer ping.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	send := func(b []byte) bool {
		_ = c.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return c.conn.WriteMessage(websocket.TextMessage, b) == nil
	}
	for {
		select {
		case b := <-c.send:
			if !send(b) {
				c.stop()
				return
			}
		case <-report.C:
			if n := c.dropped.Swap(0); n > 0 {
				if !send(marshal(message{Type: "dropped", Dropped: n})) {
					c.stop()
					return
				}
			}
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				c.stop()
				return
			}
		case <-c.done:
			_ = c.conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseGoingAway, "server closing"), time.Now().Add(time.Second))
			return
		}
	}
}
