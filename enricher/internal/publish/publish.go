// Package publish batches flow records per FLOWS subject and publishes them
// to JetStream (enricher stage: consume → flow → publish → ack). A record's
// input messages are released only after the FlowBatch holding it is
// acknowledged by the stream.
package publish

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/enricher/internal/flow"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Config tunes a Publisher.
type Config struct {
	MaxFlows    int           // flows per FlowBatch before it is sent (256)
	Linger      time.Duration // longest a record waits for its batch to fill (100 ms)
	MaxInflight int           // FlowBatches published and not yet acknowledged (256)
}

// Metrics are the publisher's counters; nil fields are not counted.
type Metrics struct {
	Batches prometheus.Counter // FlowBatches acknowledged
	Errors  prometheus.Counter // failed publish attempts (each is retried)
}

type batch struct {
	sensor string
	flows  []*pb.Flow
	refs   []flow.Ref
	since  time.Time
}

type inflight struct {
	msg    *nats.Msg
	future jetstream.PubAckFuture
	refs   []flow.Ref
}

// Publisher groups records that share a subject into FlowBatch messages
// with Nats-Msg-Id = schema.BatchID of their flow ids. Add, FlushDue and
// FlushAll must be called from one goroutine; release is called from the
// publisher's own goroutine with the refs of every acknowledged batch.
type Publisher struct {
	js      jetstream.JetStream
	cfg     Config
	log     *slog.Logger
	m       Metrics
	release func([]flow.Ref)
	pending map[string]*batch
	order   []string // subjects in order of their first pending record (deterministic flush)
	queue   chan inflight
	wg      sync.WaitGroup
	ctx     context.Context
}

// New starts a publisher; ctx bounds retries (cancel it to give up on
// unacknowledged batches, whose inputs are then never released).
func New(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger, m Metrics, release func([]flow.Ref)) *Publisher {
	if cfg.MaxFlows <= 0 {
		cfg.MaxFlows = 256
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 256
	}
	p := &Publisher{js: js, cfg: cfg, log: log, m: m, release: release, pending: map[string]*batch{},
		queue: make(chan inflight, cfg.MaxInflight), ctx: ctx}
	p.wg.Add(1)
	go p.wait()
	return p
}

// Add queues one record on its subject and sends the batch when full.
func (p *Publisher) Add(r flow.Record) {
	f := r.Flow
	subj := schema.FlowsSubject(f.Sensor, schema.AddrBucket(f.OrigAddr), schema.AddrBucket(f.RespAddr))
	b := p.pending[subj]
	if b == nil {
		b = &batch{sensor: f.Sensor, since: time.Now()}
		p.pending[subj] = b
		p.order = append(p.order, subj)
	}
	b.flows = append(b.flows, f)
	b.refs = append(b.refs, r.Refs...)
	if len(b.flows) >= p.cfg.MaxFlows {
		p.send(subj, b)
	}
}

// FlushDue sends the batches older than the linger at now.
func (p *Publisher) FlushDue(now time.Time) {
	p.flush(func(b *batch) bool { return now.Sub(b.since) >= p.cfg.Linger })
}

// FlushAll sends every pending batch.
func (p *Publisher) FlushAll() { p.flush(func(*batch) bool { return true }) }

// Pending is the number of records not yet sent.
func (p *Publisher) Pending() int {
	n := 0
	for _, b := range p.pending {
		n += len(b.flows)
	}
	return n
}

func (p *Publisher) flush(due func(*batch) bool) {
	keep := p.order[:0]
	for _, subj := range p.order {
		b := p.pending[subj]
		if b == nil {
			continue
		}
		if due(b) {
			p.send(subj, b)
			continue
		}
		keep = append(keep, subj)
	}
	clear(p.order[len(keep):])
	p.order = keep
}

func (p *Publisher) send(subj string, b *batch) {
	delete(p.pending, subj)
	ids := make([]string, len(b.flows))
	for i, f := range b.flows {
		ids[i] = f.Id
	}
	data, err := proto.Marshal(&pb.FlowBatch{Sensor: b.sensor, Flows: b.flows})
	if err != nil { // cannot happen for well-formed messages
		p.log.Error("marshal flow batch", "subject", subj, "err", err)
		return
	}
	msg := nats.NewMsg(subj)
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, schema.BatchID(ids))
	in := inflight{msg: msg, refs: b.refs}
	in.future, err = p.js.PublishMsgAsync(msg)
	if err != nil {
		p.count(p.m.Errors)
		in.future = nil // the waiter publishes it synchronously
	}
	p.queue <- in // blocks when MaxInflight batches are unacknowledged
}

// Close waits until every sent batch is acknowledged (or the publisher's
// context ends). Add must not be called afterwards.
func (p *Publisher) Close() {
	close(p.queue)
	p.wg.Wait()
}

func (p *Publisher) wait() {
	defer p.wg.Done()
	for in := range p.queue {
		ok := false
		if in.future != nil {
			select {
			case <-in.future.Ok():
				ok = true
			case err := <-in.future.Err():
				p.count(p.m.Errors)
				p.log.Warn("publish flows", "subject", in.msg.Subject, "err", err)
			case <-p.ctx.Done():
			}
		}
		if !ok {
			ok = p.retry(in.msg)
		}
		if ok {
			p.count(p.m.Batches)
			p.release(in.refs)
		}
	}
}

// retry publishes msg synchronously until the stream acknowledges it (the
// same Nats-Msg-Id makes a duplicate harmless) or the context ends.
func (p *Publisher) retry(msg *nats.Msg) bool {
	wait := 100 * time.Millisecond
	for p.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
		m := nats.NewMsg(msg.Subject)
		m.Data, m.Header = msg.Data, msg.Header
		_, err := p.js.PublishMsg(ctx, m)
		cancel()
		if err == nil {
			return true
		}
		p.count(p.m.Errors)
		p.log.Warn("publish flows, retrying", "subject", msg.Subject, "err", err, "wait", wait)
		select {
		case <-p.ctx.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	return false
}

func (p *Publisher) count(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}
