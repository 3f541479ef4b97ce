package live

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/api/internal/record"
	"netwatch/api/internal/rest"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// streamOf is the JetStream stream holding each message type.
var streamOf = [numTypes]string{schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics, schema.StreamCounters}

// streamReplay is a request on /api/v1/replay: the messages of the wanted
// types stored in JetStream between From and To (stream time: when they were
// published), at Speed times the original pace (0: as fast as the client
// reads).
type streamReplay struct {
	From, To time.Time
	Speed    float64
}

func parseStreamReplay(r *http.Request) (streamReplay, error) {
	q := query{r}
	rp := streamReplay{Speed: 1}
	var err error
	from, to, speed := q.Get("from"), q.Get("to"), q.Get("speed")
	if from == "" {
		return rp, errors.New("from: required (RFC 3339 start of the range to replay)")
	}
	if rp.From, err = time.Parse(time.RFC3339Nano, from); err != nil {
		return rp, fmt.Errorf("from: %q is not an RFC 3339 time", from)
	}
	if v := to; v != "" {
		if rp.To, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return rp, fmt.Errorf("to: %q is not an RFC 3339 time", v)
		}
		if !rp.From.Before(rp.To) {
			return rp, errors.New("from must be before to")
		}
	}
	if v := speed; v != "" {
		if rp.Speed, err = ParseSpeed(v); err != nil {
			return rp, err
		}
	}
	return rp, nil
}

// ParseSpeed parses a replay pace: 0 (as fast as the client reads) or a
// factor of the original pace from MinSpeed to MaxSpeed (1 real time, 10 ten
// times faster). NaN, infinities, negative numbers and factors so small that
// a record's due time would overflow time.Duration (292 years) are an error
// naming the parameter.
func ParseSpeed(v string) (float64, error) {
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || !(s == 0 || (s >= MinSpeed && s <= MaxSpeed)) {
		return 0, fmt.Errorf("speed: %q is not 0 (as fast as possible) or a number from %g to %g (e.g. 1, 10)", v, MinSpeed, MaxSpeed)
	}
	return s, nil
}

// MinSpeed and MaxSpeed bound a replay's pace factor (ParseSpeed): at 0.001
// a day of records takes under three years, within time.Duration.
const (
	MinSpeed = 0.001
	MaxSpeed = 1e6
)

// ServeReplay serves /api/v1/replay: it upgrades to a WebSocket and sends
// the same messages as /api/v1/live (same types and filters) for a past
// range read from the JetStream streams (FLOWS, ALERTS, METRICS, COUNTERS),
// merged in stream-time order and paced at speed; the records keep their
// original timestamps. It ends with {"type":"replay_end","messages":N}.
// A replay never drops: it waits for the client.
func (h *Hub) ServeReplay(w http.ResponseWriter, r *http.Request) {
	f, err := ParseFilter(r)
	var rp streamReplay
	if err == nil {
		rp, err = parseStreamReplay(r)
	}
	if err != nil {
		rest.WriteError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	if h.js == nil {
		rest.WriteError(w, r, http.StatusServiceUnavailable, "replay needs NATS JetStream")
		return
	}
	if !websocket.IsWebSocketUpgrade(r) {
		rest.WriteError(w, r, http.StatusBadRequest, "this endpoint is a WebSocket: send an Upgrade request")
		return
	}
	h.serve(w, r, f, func(ctx context.Context, c *client) error { return h.streamReplay(ctx, c, f, rp) })
}

// source is one stream's ordered consumer with its next message.
type source struct {
	typ    int
	it     jetstream.MessagesContext
	last   uint64 // the stream's last sequence when the replay began
	head   jetstream.Msg
	headAt time.Time
	done   bool
}

func (s *source) advance(ctx context.Context, to time.Time) error {
	if s.done {
		return nil
	}
	if s.head != nil {
		if md, err := s.head.Metadata(); err == nil && md.Sequence.Stream >= s.last {
			s.stop()
			return nil
		}
	}
	m, err := s.it.Next(jetstream.NextContext(ctx))
	if err != nil {
		s.stop()
		return err
	}
	md, err := m.Metadata()
	if err != nil {
		s.stop()
		return err
	}
	if !to.IsZero() && !md.Timestamp.Before(to) {
		s.stop()
		return nil
	}
	s.head, s.headAt = m, md.Timestamp
	return nil
}

func (s *source) stop() {
	s.done, s.head = true, nil
	s.it.Stop()
}

func (h *Hub) streamReplay(ctx context.Context, c *client, f Filter, rp streamReplay) error {
	var srcs []*source
	mask := f.mask()
	for typ := range numTypes {
		if mask&(1<<typ) == 0 {
			continue
		}
		st, err := h.js.Stream(ctx, streamOf[typ])
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", streamOf[typ], err)
		}
		si := st.CachedInfo()
		if si.State.Msgs == 0 || si.State.LastTime.Before(rp.From) || !rp.To.IsZero() && !si.State.FirstTime.Before(rp.To) {
			continue
		}
		from := rp.From
		cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &from})
		if err != nil {
			return fmt.Errorf("replay consumer on %s: %w", streamOf[typ], err)
		}
		it, err := cons.Messages(jetstream.PullMaxMessages(256))
		if err != nil {
			return fmt.Errorf("replay consumer on %s: %w", streamOf[typ], err)
		}
		s := &source{typ: typ, it: it, last: si.State.LastSeq}
		defer it.Stop()
		if err := s.advance(ctx, rp.To); err != nil {
			return fmt.Errorf("read %s: %w", streamOf[typ], err)
		}
		srcs = append(srcs, s)
	}
	var t0 time.Time
	w0 := time.Now()
	sent := 0
	for {
		var next *source
		for _, s := range srcs {
			if s.head != nil && (next == nil || s.headAt.Before(next.headAt)) {
				next = s
			}
		}
		if next == nil {
			break
		}
		if t0.IsZero() {
			t0 = next.headAt
		}
		if rp.Speed > 0 {
			due := w0.Add(time.Duration(float64(next.headAt.Sub(t0)) / rp.Speed))
			if d := time.Until(due); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				}
			}
		}
		m := next.head
		for _, b := range encodeFor(next.typ, m.Subject(), m.Data(), &f) {
			select {
			case c.send <- b:
				h.sent[next.typ].Inc()
				sent++
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := next.advance(ctx, rp.To); err != nil {
			return fmt.Errorf("read %s: %w", streamOf[next.typ], err)
		}
	}
	b := fmt.Appendf(nil, `{"type":"replay_end","messages":%d}`, sent)
	select {
	case c.send <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// encodeFor returns the live-feed messages one stored NATS message of type
// typ gives a client with filter f (a FlowBatch gives one per matching flow).
// A message that does not decode gives none.
func encodeFor(typ int, subject string, data []byte, f *Filter) [][]byte {
	var out [][]byte
	switch typ {
	case typeFlow:
		var b pb.FlowBatch
		if proto.Unmarshal(data, &b) != nil {
			return nil
		}
		for _, fl := range b.GetFlows() {
			sensor := fl.GetSensor()
			if sensor == "" {
				sensor = b.GetSensor()
			}
			e := event{typ: "flow", sensor: sensor, addrs: [2]netip.Addr{pbAddr(fl.GetOrigAddr()), pbAddr(fl.GetRespAddr())},
				ports: [2]int{int(fl.GetOrigPort()), int(fl.GetRespPort())}, proto: int(fl.GetProto())}
			if f.matchFields(&e) {
				out = append(out, appendFlowMessage(nil, fl, sensor))
			}
		}
	case typeAlert:
		var a pb.Alert
		if proto.Unmarshal(data, &a) != nil {
			return nil
		}
		if a.GetSensor() == "" {
			a.Sensor = schema.SensorFromSubject(subject)
		}
		e := event{typ: "alert", sensor: a.GetSensor(), addrs: [2]netip.Addr{parseAddr(a.GetOrigAddr()), parseAddr(a.GetRespAddr())},
			proto: -1, ports: [2]int{-1, -1}, severity: int(a.GetSeverity())}
		if f.matchFields(&e) {
			al := record.AlertFromPB(&a)
			out = append(out, marshal(message{Type: "alert", Alert: &al}))
		}
	case typeMetrics:
		var x pb.Metrics
		if proto.Unmarshal(data, &x) != nil {
			return nil
		}
		if x.GetSensor() == "" {
			x.Sensor = schema.SensorFromSubject(subject)
		}
		if f.matchFields(&event{typ: "metrics", sensor: x.GetSensor()}) {
			mt := record.MetricsFromPB(&x)
			out = append(out, marshal(message{Type: "metrics", Metrics: &mt}))
		}
	case typeCounters:
		var x pb.TrafficCounters
		if proto.Unmarshal(data, &x) != nil {
			return nil
		}
		if x.GetSensor() == "" {
			x.Sensor = schema.SensorFromSubject(subject)
		}
		if f.matchFields(&event{typ: "counters", sensor: x.GetSensor()}) {
			ct := record.CountersFromPB(&x)
			out = append(out, marshal(message{Type: "counters", Counters: &ct}))
		}
	}
	return out
}
