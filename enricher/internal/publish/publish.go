// Package publish batches flow records per FLOWS subject and publishes them
// to JetStream (enricher stage: consume → flow → publish → ack). A record's
// input messages are released only after the FlowBatch holding it is
// acknowledged by the stream.
package publish

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// batch is the open FlowBatch of one subject. Batches stay in the pending
// map when sent (empty), so a subject's string is built once.
type batch struct {
	subj   string
	sensor string
	flows  []*pb.Flow
	refs   []flow.Ref
	since  time.Time
}

// subjectKey identifies a FLOWS subject.
type subjectKey struct {
	sensor     string
	orig, resp uint32
}

type inflight struct {
	msg    *nats.Msg
	future jetstream.PubAckFuture
	refs   []flow.Ref
	buf    *[]byte // msg.Data's buffer, reused once the batch is acknowledged; nil for Send
	other  bool    // not a FlowBatch (not counted in Metrics.Batches)
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
	pending map[subjectKey]*batch
	order   []*batch // non-empty batches in order of their first record (deterministic flush)
	queue   chan inflight
	wg      sync.WaitGroup
	ctx     context.Context
	ids     []byte    // scratch: BatchID input
	bufs    sync.Pool // *[]byte marshal buffers
	fb      pb.FlowBatch
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
	p := &Publisher{js: js, cfg: cfg, log: log, m: m, release: release, pending: map[subjectKey]*batch{},
		queue: make(chan inflight, cfg.MaxInflight), ctx: ctx}
	p.wg.Add(1)
	go p.wait()
	return p
}

// Add queues one record on its subject and sends the batch when full.
func (p *Publisher) Add(r flow.Record) {
	f := r.Flow
	k := subjectKey{f.Sensor, addrBucket(f.OrigAddr), addrBucket(f.RespAddr)}
	b := p.pending[k]
	if b == nil {
		b = &batch{subj: schema.FlowsSubject(k.sensor, k.orig, k.resp), sensor: k.sensor}
		p.pending[k] = b
	}
	if len(b.flows) == 0 {
		b.since = time.Now()
		p.order = append(p.order, b)
	}
	b.flows = append(b.flows, f)
	b.refs = append(b.refs, r.Refs...)
	if len(b.flows) >= p.cfg.MaxFlows {
		p.send(b)
	}
}

// addrBucket is schema.AddrBucket (FNV-1a 32 of the address, modulo
// schema.Buckets) without the hash.Hash allocation; TestAddrBucket keeps
// them equal.
func addrBucket(addr []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range addr {
		h ^= uint32(c)
		h *= 16777619
	}
	return h % schema.Buckets
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
	for _, b := range p.order {
		n += len(b.flows)
	}
	return n
}

func (p *Publisher) flush(due func(*batch) bool) {
	keep := p.order[:0]
	for _, b := range p.order {
		if len(b.flows) == 0 { // sent when it filled up
			continue
		}
		if due(b) {
			p.send(b)
			continue
		}
		keep = append(keep, b)
	}
	clear(p.order[len(keep):])
	p.order = keep
}

// batchID is schema.BatchID of the flows' ids, hashed from a reused buffer;
// TestBatchID keeps the two equal.
func (p *Publisher) batchID(flows []*pb.Flow) string {
	b := p.ids[:0]
	for _, f := range flows {
		b = append(b, f.Id...)
		b = append(b, 0)
	}
	p.ids = b
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

func (p *Publisher) send(b *batch) {
	subj := b.subj
	id := p.batchID(b.flows)
	bp, _ := p.bufs.Get().(*[]byte)
	if bp == nil {
		bp = new([]byte)
	}
	p.fb.Sensor, p.fb.Flows = b.sensor, b.flows
	data, err := proto.MarshalOptions{}.MarshalAppend((*bp)[:0], &p.fb)
	p.fb.Flows = nil
	clear(b.flows)
	b.flows = b.flows[:0]
	refs := b.refs
	b.refs = nil
	if err != nil { // cannot happen for well-formed messages
		p.log.Error("marshal flow batch", "subject", subj, "err", err)
		return
	}
	*bp = data
	msg := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}
	in := inflight{msg: msg, refs: refs, buf: bp}
	in.future, err = p.js.PublishMsgAsync(msg)
	if err != nil {
		p.count(p.m.Errors)
		in.future = nil // the waiter publishes it synchronously
	}
	p.queue <- in // blocks when MaxInflight batches are unacknowledged
}

// Send publishes one message of another stream (COUNTERS) through the same
// in-flight window and retries: refs are released once the stream
// acknowledges it. Call it from the goroutine that calls Add.
func (p *Publisher) Send(subj, id string, data []byte, refs []flow.Ref) {
	msg := &nats.Msg{Subject: subj, Data: data, Header: nats.Header{jetstream.MsgIDHeader: []string{id}}}
	in := inflight{msg: msg, refs: refs, other: true}
	var err error
	in.future, err = p.js.PublishMsgAsync(msg)
	if err != nil {
		p.count(p.m.Errors)
		in.future = nil
	}
	p.queue <- in
}

// maxReusedBuf bounds the marshal buffers kept for reuse.
const maxReusedBuf = 1 << 20

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
				p.log.Warn("publish", "subject", in.msg.Subject, "err", err)
			case <-p.ctx.Done():
			}
		}
		if !ok {
			ok = p.retry(in.msg)
		}
		if ok {
			if !in.other {
				p.count(p.m.Batches)
			}
			p.release(in.refs)
			in.msg.Data = nil
			if in.buf != nil && cap(*in.buf) <= maxReusedBuf {
				p.bufs.Put(in.buf)
			}
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
		p.log.Warn("publish, retrying", "subject", msg.Subject, "err", err, "wait", wait)
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
