// Package publish is the last stage of the agent (capture → decode →
// fragment → publish): it batches packet summaries per PACKETS bucket and
// publishes them to JetStream asynchronously, with bounded in-flight
// messages, a Nats-Msg-Id on every message, and retries until acked (a
// broker outage is survived; nothing is dropped).
package publish

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the publisher's counters; any may be nil.
type Metrics struct {
	Messages prometheus.Counter // messages acked by the stream
	Errors   prometheus.Counter // failed publish attempts (each is retried)
}

func inc(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

type inflight struct {
	subject, id string
	data        []byte
	f           jetstream.PubAckFuture
	acked       func() // data may be reused; nil for none
}

// Publisher publishes messages asynchronously and retries each one until the
// stream acks it. Publish and Wait must be called from one goroutine.
type Publisher struct {
	js      jetstream.JetStream
	log     *slog.Logger
	m       Metrics
	pending chan *inflight
	wg      sync.WaitGroup
	acked   atomic.Uint64
	done    chan struct{}
}

// MaxInflight is the default bound on unacked messages.
const MaxInflight = 256

// New starts a publisher on js with at most maxInflight unacked messages
// (MaxInflight when 0). js should be created with
// jetstream.WithPublishAsyncTimeout so that a lost ack turns into a retry.
func New(js jetstream.JetStream, maxInflight int, log *slog.Logger, m Metrics) *Publisher {
	if maxInflight <= 0 {
		maxInflight = MaxInflight
	}
	p := &Publisher{js: js, log: log, m: m, pending: make(chan *inflight, maxInflight), done: make(chan struct{})}
	go p.ackLoop()
	return p
}

// Publish sends data to subject with Nats-Msg-Id id. It blocks while
// maxInflight messages are unacked, and retries (with backoff) while the
// client refuses the message. data must not be modified afterwards.
func (p *Publisher) Publish(subject, id string, data []byte) { p.publish(subject, id, data, nil) }

// publish is Publish that calls acked (when not nil), from the ack loop,
// once the stream has acknowledged the message and data is no longer used.
func (p *Publisher) publish(subject, id string, data []byte, acked func()) {
	it := &inflight{subject: subject, id: id, data: data, acked: acked}
	p.wg.Add(1)
	p.send(it)
	p.pending <- it
}

func (p *Publisher) send(it *inflight) {
	wait := 50 * time.Millisecond
	for {
		m := &nats.Msg{Subject: it.subject, Data: it.data, Header: nats.Header{jetstream.MsgIDHeader: []string{it.id}}}
		f, err := p.js.PublishMsgAsync(m)
		if err == nil {
			it.f = f
			return
		}
		inc(p.m.Errors)
		p.log.Warn("publish failed, retrying", "subject", it.subject, "msg_id", it.id, "err", err)
		time.Sleep(wait)
		wait = min(2*wait, 2*time.Second)
	}
}

func (p *Publisher) ackLoop() {
	defer close(p.done)
	for it := range p.pending {
		wait := 50 * time.Millisecond
		for {
			select {
			case <-it.f.Ok():
			case err := <-it.f.Err():
				inc(p.m.Errors)
				p.log.Warn("publish not acked, retrying", "subject", it.subject, "msg_id", it.id, "err", err)
				time.Sleep(wait)
				wait = min(2*wait, 2*time.Second)
				p.send(it)
				continue
			}
			break
		}
		it.data = nil
		if it.acked != nil {
			it.acked()
		}
		p.acked.Add(1)
		inc(p.m.Messages)
		p.wg.Done()
	}
}

// Wait blocks until every message published so far is acked, or ctx ends.
func (p *Publisher) Wait(ctx context.Context) error {
	c := make(chan struct{})
	go func() { p.wg.Wait(); close(c) }()
	select {
	case <-c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Acked is the number of messages acked so far.
func (p *Publisher) Acked() uint64 { return p.acked.Load() }

// Close stops the ack loop after Wait; call it once, last.
func (p *Publisher) Close() {
	close(p.pending)
	<-p.done
}
