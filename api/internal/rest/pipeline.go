package rest

import (
	"context"
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/record"
	"netwatch/schema"
)

// Consumer is one consumer's backlog.
type Consumer struct {
	Name        string `json:"name"`
	Durable     bool   `json:"durable"`
	Pending     uint64 `json:"pending"`     // num_pending + ack_pending: not yet processed
	NumPending  uint64 `json:"num_pending"` // not yet delivered
	AckPending  int    `json:"ack_pending"` // delivered, not yet acked
	Redelivered int    `json:"redelivered"`
	Waiting     int    `json:"waiting"` // pull requests waiting
	Delivered   uint64 `json:"delivered_seq"`
	AckFloor    uint64 `json:"ack_floor_seq"`
}

// Stream is one stream's state and its consumers.
type Stream struct {
	Name      string       `json:"name"`
	Messages  uint64       `json:"messages"`
	Bytes     uint64       `json:"bytes"`
	FirstSeq  uint64       `json:"first_seq"`
	LastSeq   uint64       `json:"last_seq"`
	FirstTime *record.Time `json:"first_time,omitempty"`
	LastTime  *record.Time `json:"last_time,omitempty"`
	Pending   uint64       `json:"pending"` // sum over durable consumers
	Consumers []Consumer   `json:"consumers"`
	Error     string       `json:"error,omitempty"`
}

// Pipeline is the body of GET /api/v1/pipeline. Pending sums the pending
// messages of every durable consumer: 0 means the pipeline has drained.
type Pipeline struct {
	Streams []Stream `json:"streams"`
	Pending uint64   `json:"pending"`
}

func (a *API) pipeline(w http.ResponseWriter, r *http.Request) {
	if a.JS == nil {
		WriteError(w, r, http.StatusServiceUnavailable, "no NATS connection")
		return
	}
	// A connection lost after start is 503 at once, not a request that
	// waits for the query timeout and answers 504 as if the database were
	// slow.
	if nc := a.JS.Conn(); nc != nil && !nc.IsConnected() {
		writeProblem(w, r, http.StatusServiceUnavailable, "NATS connection "+nc.Status().String()+": the pipeline's streams cannot be read")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), natsTimeout)
	defer cancel()
	out := Pipeline{Streams: []Stream{}}
	for _, name := range []string{schema.StreamPackets, schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics, schema.StreamCounters} {
		st := Stream{Name: name, Consumers: []Consumer{}}
		s, err := a.JS.Stream(ctx, name)
		if err != nil {
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				a.natsFail(w, r, "stream "+name, err)
				return
			}
			st.Error = "stream not found"
			out.Streams = append(out.Streams, st)
			continue
		}
		si := s.CachedInfo()
		st.Messages, st.Bytes = si.State.Msgs, si.State.Bytes
		st.FirstSeq, st.LastSeq = si.State.FirstSeq, si.State.LastSeq
		if !si.State.FirstTime.IsZero() && si.State.Msgs > 0 {
			ft, lt := record.Time(si.State.FirstTime), record.Time(si.State.LastTime)
			st.FirstTime, st.LastTime = &ft, &lt
		}
		lister := s.ListConsumers(ctx)
		for ci := range lister.Info() {
			c := Consumer{Name: ci.Name, Durable: ci.Config.Durable != "",
				NumPending: ci.NumPending, AckPending: ci.NumAckPending, Redelivered: ci.NumRedelivered,
				Waiting: ci.NumWaiting, Delivered: ci.Delivered.Stream, AckFloor: ci.AckFloor.Stream}
			c.Pending = c.NumPending + uint64(max(c.AckPending, 0))
			if c.Durable {
				st.Pending += c.Pending
			}
			st.Consumers = append(st.Consumers, c)
		}
		if err := lister.Err(); err != nil {
			a.natsFail(w, r, "list consumers of "+name, err)
			return
		}
		sort.Slice(st.Consumers, func(i, j int) bool { return st.Consumers[i].Name < st.Consumers[j].Name })
		out.Pending += st.Pending
		out.Streams = append(out.Streams, st)
	}
	WriteJSON(w, http.StatusOK, out)
}

// natsTimeout bounds the JetStream requests of one /api/v1/pipeline answer
// (5 stream infos and consumer lists; each is one request-reply of a few
// milliseconds to a healthy server).
const natsTimeout = 5 * time.Second

// natsFail answers 503: the JetStream API did not answer (a server down or
// partitioned, no responders, a timeout), which is NATS's unavailability,
// not a database fault or timeout.
func (a *API) natsFail(w http.ResponseWriter, r *http.Request, op string, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	if a.Log != nil {
		a.Log.Warn(op, "path", r.URL.Path, "err", err)
	}
	writeProblem(w, r, http.StatusServiceUnavailable, "NATS: "+op+": "+err.Error())
}
