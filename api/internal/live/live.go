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
	"github.com/nats-io/nats.go/jetstream"
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
	DefaultWriteTimeout = 10 * time.Second
	DefaultStallTimeout = 10 * time.Second
)

// Hub subscribes to the pipeline's subjects and serves WebSocket clients on
// /api/v1/live. The zero value is not usable: call New, then Start.
type Hub struct {
	nc   *nats.Conn
	js   jetstream.JetStream // for /api/v1/replay; nil disables it
	pool *pgxpool.Pool       // for the flows replay of /api/v1/live; nil disables it
	log  *slog.Logger

	// Buffer is the number of messages queued per client; a client that
	// falls further behind loses messages (counted and reported to it).
	Buffer int
	// PingInterval is how often clients are pinged.
	PingInterval time.Duration
	// WriteTimeout bounds one write to a client (a frame, a ping); a
	// client whose socket stays full that long is disconnected without a
	// report. Live clients' data frames leave room in the socket (see
	// write), so this is the last resort: where the send queue cannot be
	// measured (not Linux, not TCP), or for replays.
	WriteTimeout time.Duration
	// StallTimeout: a client that keeps losing messages (new drops at
	// every one-second report) for this long, or that the writer could not
	// send a single data frame to for this long (its socket does not drain:
	// it stopped reading), is told how many messages it missed
	// ({"type":"dropped","dropped":N,"closing":true}) and disconnected
	// (close 1008). 0 means never.
	StallTimeout time.Duration

	upgrader websocket.Upgrader

	mu      sync.Mutex
	clients map[*client]struct{}
	closed  bool
	wg      sync.WaitGroup

	// Subscriptions exist only while a live client wants their type: with
	// no client the api neither receives nor decodes the FLOWS traffic.
	subMu      sync.Mutex
	started    bool          // Start was called
	subsClosed bool          // Close was called
	want       [numTypes]int // live clients that want each type
	subs       [numTypes]*nats.Subscription

	mClients  prometheus.Gauge
	mDropped  prometheus.Counter
	mSent     *prometheus.CounterVec
	mReceived *prometheus.CounterVec
	mBad      *prometheus.CounterVec
	mStalled  prometheus.Counter
	sent      [numTypes]prometheus.Counter // mSent by type
	received  [numTypes]prometheus.Counter // mReceived by type
}

// Message types of the live feed, as bits of a client's type mask.
const (
	typeFlow = iota
	typeAlert
	typeMetrics
	typeCounters
	numTypes
)

var typeNames = [numTypes]string{"flow", "alert", "metrics", "counters"}

// allTypes is the mask of a client without a types filter.
const allTypes = 1<<numTypes - 1

// New returns a hub reading from nc; pool (may be nil) serves replays.
// Its metrics are registered on reg.
func New(nc *nats.Conn, pool *pgxpool.Pool, log *slog.Logger, reg prometheus.Registerer) *Hub {
	h := &Hub{nc: nc, pool: pool, log: log, Buffer: DefaultBuffer, PingInterval: DefaultPingInterval,
		WriteTimeout: DefaultWriteTimeout, StallTimeout: DefaultStallTimeout,
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
		mStalled: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_api_ws_stalled_disconnects_total",
			Help: "WebSocket clients disconnected for staying too slow (StallTimeout)."}),
		mBad: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_api_live_decode_errors_total",
			Help: "NATS messages of the live feed that did not decode, by type."}, []string{"type"}),
	}
	if nc != nil {
		h.js, _ = jetstream.New(nc)
	}
	if reg != nil {
		reg.MustRegister(h.mClients, h.mDropped, h.mSent, h.mReceived, h.mBad, h.mStalled)
	}
	for i, n := range typeNames {
		h.sent[i] = h.mSent.WithLabelValues(n)
		h.received[i] = h.mReceived.WithLabelValues(n)
	}
	return h
}

// Start lets live clients subscribe the hub to the FLOWS, ALERTS and
// METRICS subjects (core NATS: the feed shows new messages only). The hub
// holds a subject's subscription only while at least one live client wants
// its type, so with no client the feed costs nothing.
func (h *Hub) Start() error {
	h.subMu.Lock()
	h.started = true
	h.subMu.Unlock()
	if h.nc == nil {
		return nil
	}
	return h.nc.Flush()
}

// acquire counts a live client wanting the types of mask, subscribes to the
// subjects no client wanted so far and waits until the server has the new
// subscriptions (so that the client gets every message published once it is
// connected). On error nothing stays acquired.
func (h *Hub) acquire(mask uint8) error {
	h.subMu.Lock()
	var err error
	added := false
	for i := range numTypes {
		if mask&(1<<i) == 0 {
			continue
		}
		h.want[i]++
		if h.subs[i] != nil || h.nc == nil || !h.started || h.subsClosed {
			continue
		}
		subject, fn := h.subject(i)
		sub, serr := h.nc.Subscribe(subject, fn)
		if serr != nil {
			err = fmt.Errorf("subscribe %s: %w", subject, serr)
			break
		}
		_ = sub.SetPendingLimits(1<<20, 512<<20)
		h.subs[i], added = sub, true
	}
	h.subMu.Unlock()
	if err == nil && added {
		err = h.nc.Flush()
	}
	if err != nil {
		h.release(mask) // a type whose want++ was skipped by the break has want 0 and is skipped too
	}
	return err
}

// release undoes acquire(mask), unsubscribing from subjects no client wants.
func (h *Hub) release(mask uint8) {
	h.subMu.Lock()
	defer h.subMu.Unlock()
	for i := range numTypes {
		if mask&(1<<i) == 0 || h.want[i] == 0 {
			continue
		}
		h.want[i]--
		if h.want[i] == 0 && h.subs[i] != nil {
			_ = h.subs[i].Unsubscribe()
			h.subs[i] = nil
		}
	}
}

func (h *Hub) subject(typ int) (string, nats.MsgHandler) {
	switch typ {
	case typeFlow:
		return schema.FlowsPrefix + ".>", h.onFlows
	case typeAlert:
		return schema.AlertsPrefix + ".>", h.onAlert
	case typeCounters:
		return schema.CountersPrefix + ".>", h.onCounters
	}
	return schema.MetricsPrefix + ".>", h.onMetrics
}

// Subscribed reports whether the hub holds a subscription for messages of
// type typ (flow, alert or metrics).
func (h *Hub) Subscribed(typ string) bool {
	h.subMu.Lock()
	defer h.subMu.Unlock()
	for i, n := range typeNames {
		if n == typ {
			return h.subs[i] != nil
		}
	}
	return false
}

// unsubscribe drops every subscription for good (Close).
func (h *Hub) unsubscribe() {
	h.subMu.Lock()
	defer h.subMu.Unlock()
	h.subsClosed = true
	for i, s := range h.subs {
		if s != nil {
			_ = s.Unsubscribe()
			h.subs[i] = nil
		}
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
	typ      string // flow, alert, metrics
	sensor   string
	addrs    [2]netip.Addr // flow or alert; invalid when absent
	ports    [2]int        // flows only
	proto    int           // flows only
	severity int           // alerts only: record.SeverityRank
	data     []byte        // the JSON message
}

type message struct {
	Type     string           `json:"type"`
	Flow     *record.Flow     `json:"flow,omitempty"`
	Alert    *record.Alert    `json:"alert,omitempty"`
	Metrics  *record.Metrics  `json:"metrics,omitempty"`
	Counters *record.Counters `json:"counters,omitempty"`
	Dropped  uint64           `json:"dropped,omitempty"`
	// Closing is set on the last dropped report before the server closes a
	// client that stayed too slow (StallTimeout).
	Closing bool `json:"closing,omitempty"`
}

func marshal(m message) []byte {
	b, _ := json.Marshal(m)
	return b
}

func parseAddr(s string) netip.Addr {
	a, _ := netip.ParseAddr(s)
	return a
}

func flowEvent(f record.Flow) event {
	return event{typ: "flow", sensor: f.Sensor, addrs: [2]netip.Addr{parseAddr(f.OrigAddr), parseAddr(f.RespAddr)},
		ports: [2]int{f.OrigPort, f.RespPort}, proto: f.Proto, data: marshal(message{Type: "flow", Flow: &f})}
}

func pbAddr(b []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(b) // ::ffff:10.0.0.1 stays IPv6, as stored
	return a
}

// appendFlowMessage appends {"type":"flow","flow":<f>}, what marshal writes
// for a flow message, without reflection.
func appendFlowMessage(b []byte, f *pb.Flow, sensor string) []byte {
	b = append(b, `{"type":"flow","flow":`...)
	b = record.AppendFlowJSON(b, f, sensor)
	return append(b, '}')
}

// listeners appends to buf the live clients that want messages of type typ.
func (h *Hub) listeners(typ int, buf []*client) []*client {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		if c.live && c.mask&(1<<typ) != 0 {
			buf = append(buf, c)
		}
	}
	return buf
}

// onFlows fans a FlowBatch out: decoded once, each flow matched against
// the filters of the clients that want flows and encoded to JSON once, only
// when one of them wants it and has room in its queue; those clients share
// the bytes. A client whose queue is full costs a filter check and a drop
// count per flow, not an encoding.
func (h *Hub) onFlows(m *nats.Msg) {
	var stack [8]*client
	cs := h.listeners(typeFlow, stack[:0])
	if len(cs) == 0 {
		return // the last client just left; its subscription is going
	}
	var b pb.FlowBatch
	if err := proto.Unmarshal(m.Data, &b); err != nil {
		h.mBad.WithLabelValues("flow").Inc()
		return
	}
	flows := b.GetFlows()
	h.received[typeFlow].Add(float64(len(flows)))
	var match [8]*client
	var buf []byte
	sent := 0
	for _, f := range flows {
		sensor := f.GetSensor()
		if sensor == "" {
			sensor = b.GetSensor()
		}
		e := event{typ: "flow", sensor: sensor, addrs: [2]netip.Addr{pbAddr(f.GetOrigAddr()), pbAddr(f.GetRespAddr())},
			ports: [2]int{int(f.GetOrigPort()), int(f.GetRespPort())}, proto: int(f.GetProto())}
		to := match[:0]
		for _, c := range cs {
			if c.filter.matchFields(&e) {
				if len(c.send) == cap(c.send) {
					h.drop(c) // no room: not worth encoding for
					continue
				}
				to = append(to, c)
			}
		}
		if len(to) == 0 {
			continue
		}
		if buf == nil {
			buf = make([]byte, 0, 1024*len(flows))
		}
		start := len(buf)
		buf = appendFlowMessage(buf, f, sensor)
		sent += h.send(to, buf[start:len(buf):len(buf)]) // later appends never touch these bytes
	}
	if sent > 0 {
		h.sent[typeFlow].Add(float64(sent))
	}
}

// drop counts a message c wanted but had no room for (reported to it).
func (h *Hub) drop(c *client) {
	c.mu.RLock()
	if !c.sealed {
		c.dropped.Add(1)
		h.mDropped.Inc()
	}
	c.mu.RUnlock()
}

// send queues data to every client of to without blocking and returns how
// many took it; a full queue drops the message (counted, and reported to
// the client).
func (h *Hub) send(to []*client, data []byte) int {
	n := 0
	for _, c := range to {
		c.mu.RLock()
		if !c.sealed {
			select {
			case c.send <- data:
				n++
			default:
				c.dropped.Add(1)
				h.mDropped.Inc()
			}
		}
		c.mu.RUnlock()
	}
	return n
}

func (h *Hub) onAlert(m *nats.Msg) {
	var a pb.Alert
	if err := proto.Unmarshal(m.Data, &a); err != nil {
		h.mBad.WithLabelValues("alert").Inc()
		return
	}
	h.received[typeAlert].Inc()
	if a.GetSensor() == "" {
		a.Sensor = schema.SensorFromSubject(m.Subject)
	}
	e := event{typ: "alert", sensor: a.GetSensor(), addrs: [2]netip.Addr{parseAddr(a.GetOrigAddr()), parseAddr(a.GetRespAddr())},
		proto: -1, ports: [2]int{-1, -1}, severity: int(a.GetSeverity())}
	h.broadcast(typeAlert, &e, func() []byte {
		al := record.AlertFromPB(&a)
		return marshal(message{Type: "alert", Alert: &al})
	})
}

func (h *Hub) onMetrics(m *nats.Msg) {
	var x pb.Metrics
	if err := proto.Unmarshal(m.Data, &x); err != nil {
		h.mBad.WithLabelValues("metrics").Inc()
		return
	}
	h.received[typeMetrics].Inc()
	if x.GetSensor() == "" {
		x.Sensor = schema.SensorFromSubject(m.Subject)
	}
	e := event{typ: "metrics", sensor: x.GetSensor(), proto: -1, ports: [2]int{-1, -1}}
	h.broadcast(typeMetrics, &e, func() []byte {
		mt := record.MetricsFromPB(&x)
		return marshal(message{Type: "metrics", Metrics: &mt})
	})
}

func (h *Hub) onCounters(m *nats.Msg) {
	var x pb.TrafficCounters
	if err := proto.Unmarshal(m.Data, &x); err != nil {
		h.mBad.WithLabelValues("counters").Inc()
		return
	}
	h.received[typeCounters].Inc()
	if x.GetSensor() == "" {
		x.Sensor = schema.SensorFromSubject(m.Subject)
	}
	e := event{typ: "counters", sensor: x.GetSensor(), proto: -1, ports: [2]int{-1, -1}}
	h.broadcast(typeCounters, &e, func() []byte {
		c := record.CountersFromPB(&x)
		return marshal(message{Type: "counters", Counters: &c})
	})
}

// broadcast sends e to the clients wanting typ whose filter matches it;
// e.data, when nil, is encoded once and only if one does.
func (h *Hub) broadcast(typ int, e *event, encode func() []byte) {
	var stack, match [8]*client
	to := match[:0]
	for _, c := range h.listeners(typ, stack[:0]) {
		if c.filter.matchFields(e) {
			to = append(to, c)
		}
	}
	if len(to) == 0 {
		return
	}
	if e.data == nil {
		e.data = encode()
	}
	if n := h.send(to, e.data); n > 0 {
		h.sent[typ].Add(float64(n))
	}
}

// Filter is a client's choice of messages, from the query parameters
// types, sensor, addr, port and proto. Address, port and protocol apply to
// flows; the address also to alerts; metrics pass on sensor alone.
type Filter struct {
	Types  map[string]bool // nil: all
	Sensor string
	// MinSeverity is the least severity rank (record.SeverityRank) of the
	// alerts wanted; 0 all.
	MinSeverity int
	// Batch (batch=1) lets the server put several messages in one text
	// frame, one JSON object a line, when they queue up: fewer frames and
	// system calls for a busy feed.
	Batch bool
	Addr  netip.Prefix // invalid: any
	Port  int          // -1 any
	Proto int          // -1 any
}

// ParseFilter reads a Filter from URL query parameters.
func ParseFilter(r *http.Request) (Filter, error) {
	q := query{r}
	f := Filter{Sensor: q.Get("sensor"), Port: -1, Proto: -1}
	if v := q.Get("types"); v != "" {
		f.Types = map[string]bool{}
		for _, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			switch t {
			case "flow", "alert", "metrics", "counters":
				f.Types[t] = true
			case "flows", "alerts":
				f.Types[strings.TrimSuffix(t, "s")] = true
			default:
				return f, fmt.Errorf("types: %q is not flow, alert, metrics or counters", t)
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
	switch v := q.Get("batch"); v {
	case "", "0", "false":
	case "1", "true":
		f.Batch = true
	default:
		return f, fmt.Errorf("batch: %q is not 1 or 0", v)
	}
	if v := q.Get("severity"); v != "" {
		if f.MinSeverity = record.SeverityRank(v); f.MinSeverity == 0 {
			return f, fmt.Errorf("severity: %q is not one of info, low, medium, high, critical", v)
		}
	}
	return f, nil
}

// query reads r's query parameters through rest.QueryParam (traced for
// the OpenAPI test).
type query struct{ r *http.Request }

func (q query) Get(name string) string { return rest.QueryParam(q.r, name) }

// mask is the set of message types f wants, as type bits.
func (f *Filter) mask() uint8 {
	if f.Types == nil {
		return allTypes
	}
	var m uint8
	for i, n := range typeNames {
		if f.Types[n] {
			m |= 1 << i
		}
	}
	return m
}

func (f *Filter) match(e event) bool {
	if f.Types != nil && !f.Types[e.typ] {
		return false
	}
	return f.matchFields(&e)
}

// matchFields is match without the type check (the hub picks clients by
// type once per message).
func (f *Filter) matchFields(e *event) bool {
	if f.Sensor != "" && f.Sensor != e.sensor {
		return false
	}
	if e.typ == "metrics" || e.typ == "counters" {
		return true
	}
	if f.Addr.IsValid() && !f.Addr.Contains(e.addrs[0]) && !f.Addr.Contains(e.addrs[1]) {
		return false
	}
	if e.typ == "alert" {
		return e.severity >= f.MinSeverity
	}
	if f.Port >= 0 && f.Port != e.ports[0] && f.Port != e.ports[1] {
		return false
	}
	return f.Proto < 0 || f.Proto == e.proto
}

type client struct {
	conn    *websocket.Conn
	send    chan []byte
	filter  Filter
	mask    uint8         // filter.mask(); 0 for a replay
	live    bool          // false for a replay, which gets no live messages
	dropped atomic.Uint64 // messages dropped since the client connected
	// mu guards sealed: the hub queues and counts drops under a read lock,
	// so once seal has set it nothing more reaches send or dropped.
	mu       sync.RWMutex
	sealed   bool
	done     chan struct{}
	stopOnce sync.Once
}

func (c *client) stop() { c.stopOnce.Do(func() { close(c.done) }) }

// seal stops the hub queuing messages to c (it is being closed) and
// returns how many messages c missed and was not told about: those
// dropped beyond reported, the one the writer holds (held, may be nil)
// and those still queued, which will now never be sent.
func (c *client) seal(held []byte, reported uint64) uint64 {
	c.mu.Lock()
	c.sealed = true
	c.mu.Unlock()
	n := c.dropped.Load() - reported
	if held != nil {
		n++
	}
	for {
		select {
		case <-c.send:
			n++
		default:
			return n
		}
	}
}

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
		rest.WriteError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if rp != nil && h.pool == nil {
		rest.WriteError(w, r, http.StatusServiceUnavailable, "replay needs the database")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		rest.WriteError(w, r, http.StatusBadRequest, "this endpoint is a WebSocket: send an Upgrade request")
		return
	}
	var run func(ctx context.Context, c *client) error
	if rp != nil {
		run = func(ctx context.Context, c *client) error { return h.replay(ctx, c, rp) }
	}
	h.serve(w, r, f, run)
}

// serve runs one WebSocket connection: live messages of f when run is nil,
// else what run queues (a replay, which gets no live messages).
func (h *Hub) serve(w http.ResponseWriter, r *http.Request, f Filter, run func(ctx context.Context, c *client) error) {
	h.mu.Lock()
	closed := h.closed
	if !closed {
		h.wg.Add(1)
	}
	h.mu.Unlock()
	if closed {
		rest.WriteError(w, r, http.StatusServiceUnavailable, "shutting down")
		return
	}
	defer h.wg.Done()
	var mask uint8
	if run == nil {
		// Subscribe before the handshake completes, so that the client
		// gets everything published once it is connected.
		mask = f.mask()
		if err := h.acquire(mask); err != nil {
			h.log.Warn("live subscribe", "err", err)
			rest.WriteError(w, r, http.StatusServiceUnavailable, "live feed unavailable")
			return
		}
		defer h.release(mask)
	}
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered the client
	}
	// No per-message deflate on writes: compressing every message for
	// every client (a new deflate stream per message, no context
	// takeover) costs more CPU than the rest of the feed.
	conn.EnableWriteCompression(false)
	c := &client{conn: conn, send: make(chan []byte, max(h.Buffer, 1)), filter: f, mask: mask, live: run == nil, done: make(chan struct{})}
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
	if run != nil {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-c.done
			cancel()
		}()
		go func() {
			if err := run(ctx, c); err != nil && !errors.Is(err, context.Canceled) {
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

// maxBatch bounds the bytes of one batched frame.
const maxBatch = 64 << 10

// gorillaBuffer is the upgrader's WriteBufferSize: a longer message goes
// out as fragments of this size, each with its own frame header.
const gorillaBuffer = 16 << 10

// The writer looks again at a socket that had no room for the next data
// frame after stuckPoll, doubling the wait while there is still none, up to
// stuckPollMax.
const (
	stuckPoll    = time.Millisecond
	stuckPollMax = 16 * time.Millisecond
)

// writeBatch writes first and the messages queued behind it as one text
// frame, one JSON object a line (Filter.Batch), up to maxBatch bytes and
// the room win found in the socket. It returns a message it took from the
// queue that did not fit, to be written next.
func (h *Hub) writeBatch(c *client, first []byte, win *sendWindow, wt time.Duration) (rest []byte, err error) {
	limit := min(maxBatch, max(win.room(), len(first)))
	_ = c.conn.SetWriteDeadline(time.Now().Add(wt))
	w, err := c.conn.NextWriter(websocket.TextMessage)
	if err != nil {
		return nil, err
	}
	n := len(first)
	_, err = w.Write(first)
	for err == nil && n < limit {
		var b []byte
		select {
		case b = <-c.send:
		default:
		}
		if b == nil {
			break
		}
		if n+1+len(b) > limit {
			rest = b
			break
		}
		if _, err = w.Write(newline); err == nil {
			_, err = w.Write(b)
		}
		n += len(b) + 1
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	win.wrote(n + n/gorillaBuffer*frameOverhead)
	return rest, err
}

var newline = []byte{'\n'}

// write is the connection's one writer: it sends queued messages, pings
// and drop reports until c stops.
//
// A live client's data frames go out only while its socket has room
// (sendWindow): when it has none, the writer holds the next message and
// looks again after 1 to 16 ms, the client's queue fills and further
// messages for it are dropped and counted, while the other clients are
// never waited for. Drops are reported once a second while the socket
// drains; a socket that does not drain gets no report until it does, or
// until the client is closed. A client is closed as too slow when, for
// StallTimeout, either it lost messages every second or the writer could
// not write a single data frame to it; it is then sent a last report
// ({"type":"dropped","dropped":N,"closing":true}, N counting every message
// it missed and was not told about: dropped, held and still queued) and a
// close frame 1008 "too slow: M messages dropped" (M: every message it
// missed since it connected). Both fit in the room kept free in its socket,
// so they reach a client that stopped reading entirely, once it reads again.
// A connection closed otherwise (no pong, read error, hub shutdown) also
// gets such a last report, when it missed anything, before its close frame.
func (h *Hub) write(c *client) {
	ping := time.NewTicker(h.PingInterval)
	defer ping.Stop()
	report := time.NewTicker(time.Second)
	defer report.Stop()
	wt := h.WriteTimeout
	if wt <= 0 {
		wt = DefaultWriteTimeout
	}
	stallTimeout := h.StallTimeout
	win := &sendWindow{} // replays wait for their client: no window
	if c.live {
		win = newSendWindow(c.conn.NetConn())
	}
	retry := time.NewTimer(stuckPoll)
	retry.Stop()
	defer retry.Stop()
	poll := stuckPoll // the next wait for room
	send := func(b []byte) bool {
		_ = c.conn.SetWriteDeadline(time.Now().Add(wt))
		return c.conn.WriteMessage(websocket.TextMessage, b) == nil
	}
	var (
		held      []byte        // the next data message, waiting for room in the socket
		heldSince time.Time     // since when no data frame could be written
		lossy     time.Duration // consecutive report ticks that saw new drops
		seen      uint64        // c.dropped at the last tick
		reported  uint64        // drops told to the client
	)
	// deliver writes b and, batching, the messages queued behind it, as
	// long as the socket has room; it returns what has to wait.
	deliver := func(b []byte) (rest []byte, wrote, ok bool) {
		for b != nil {
			if !win.fits(len(b)) {
				return b, wrote, true
			}
			var err error
			if c.filter.Batch && len(c.send) > 0 {
				b, err = h.writeBatch(c, b, win, wt)
			} else {
				_ = c.conn.SetWriteDeadline(time.Now().Add(wt))
				err = c.conn.WriteMessage(websocket.TextMessage, b)
				win.wrote(len(b) + len(b)/gorillaBuffer*frameOverhead)
				b = nil
			}
			if err != nil {
				return nil, wrote, false
			}
			wrote = true
		}
		return nil, wrote, true
	}
	// last tells c what it missed (when anything) and sends the close frame.
	last := func(code int, reason func(total uint64) string) {
		missed := uint64(0)
		if c.live {
			missed = c.seal(held, reported)
		}
		deadline := time.Now().Add(time.Second)
		if missed > 0 {
			_ = c.conn.SetWriteDeadline(deadline)
			_ = c.conn.WriteMessage(websocket.TextMessage, marshal(message{Type: "dropped", Dropped: missed, Closing: true}))
		}
		_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, reason(reported+missed)), deadline)
	}
	for {
		in := c.send
		if held != nil {
			in = nil // no room: leave the rest queued
		}
		select {
		case b := <-in:
			rest, _, ok := deliver(b)
			if !ok {
				c.stop()
				return
			}
			if held = rest; held != nil {
				heldSince, poll = time.Now(), stuckPoll
				retry.Reset(poll)
			}
		case <-retry.C:
			rest, wrote, ok := deliver(held)
			if !ok {
				c.stop()
				return
			}
			if held = rest; held != nil {
				if wrote {
					heldSince, poll = time.Now(), stuckPoll
				} else {
					poll = min(2*poll, stuckPollMax)
				}
				retry.Reset(poll)
			}
		case <-report.C:
			total := c.dropped.Load()
			if total == seen {
				lossy = 0
			} else {
				lossy += time.Second
			}
			seen = total
			stuck := held != nil && time.Since(heldSince) >= stallTimeout
			if stallTimeout > 0 && (lossy >= stallTimeout || stuck) {
				h.mStalled.Inc()
				last(websocket.ClosePolicyViolation, func(total uint64) string {
					return fmt.Sprintf("too slow: %d messages dropped", total)
				})
				c.stop()
				return
			}
			if held != nil || total == reported {
				continue // nothing to tell, or no room to tell it: later
			}
			if !send(marshal(message{Type: "dropped", Dropped: total - reported})) {
				c.stop()
				return
			}
			reported = total
		case <-ping.C:
			if err := c.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(wt)); err != nil {
				c.stop()
				return
			}
		case <-c.done:
			last(websocket.CloseGoingAway, func(uint64) string { return "server closing" })
			return
		}
	}
}
