// Package publish is the last stage of the agent (capture → decode →
// fragment → publish): it batches packet summaries per PACKETS bucket and
// publishes them to JetStream asynchronously, with bounded in-flight
// messages, a Nats-Msg-Id on every message, and retries until acked. While
// the broker is slow or away, unacked messages wait in a buffer bounded in
// bytes; when it is full a live capture drops new batches (counted and
// logged, never silently) and a file waits.
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
	Messages        prometheus.Counter // messages acked by the stream
	Errors          prometheus.Counter // failed publish attempts (each is retried)
	DroppedMessages prometheus.Counter // batches dropped because the buffer was full
	DroppedPackets  prometheus.Counter // packet summaries in those batches
}

func inc(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}

type inflight struct {
	subject, id string
	data        []byte
	size        int // len(data) when queued, counted in Publisher.bytes
	f           jetstream.PubAckFuture
	acked       func() // data may be reused; nil for none
}

// Publisher publishes messages asynchronously and retries each one until the
// stream acks it. Messages wait in a FIFO buffer of at most MaxBytes
// (queued and in flight together); at most maxInflight of them are handed
// to the client at once, and at most one per subject: a message is sent
// only after the previous message of its subject (its PACKETS bucket) was
// acked, so the stream stores a bucket's batches in the order they were
// made even when a publish fails and is retried (a stream leader lost in a
// cluster: the retried batch would otherwise be stored behind later ones,
// and the enricher would see a flow's packets out of order). A retried
// message keeps its Nats-Msg-Id, so the stream's duplicate window drops a
// copy that was stored before its ack was lost. Publish may be called from several goroutines, but not concurrently
// with Wait.
type Publisher struct {
	// MaxBytes bounds the bytes of unacked messages; 0 for no bound. A
	// single message larger than MaxBytes is accepted when the buffer is
	// empty. Set before the first Publish.
	MaxBytes int
	// DropWhenFull makes a batch that does not fit in MaxBytes be dropped
	// (counted in Dropped and Metrics, logged once per episode) instead of
	// waiting for room: for live captures, which cannot pause the wire.
	DropWhenFull bool

	js  jetstream.JetStream
	log *slog.Logger
	m   Metrics

	mu       sync.Mutex
	cond     *sync.Cond // queue grew, bytes shrank, or closing
	queue    []*inflight
	busy     map[string]bool // subjects with a message handed to the client and not yet acked
	bytes    int
	closed   bool
	dropping bool // in a drop episode: logged at its start and end
	epMsgs   uint64
	epPkts   uint64

	window      chan *inflight // handed to the client, awaiting the ack
	wg          sync.WaitGroup
	acked       atomic.Uint64
	droppedMsgs atomic.Uint64
	droppedPkts atomic.Uint64
	done        chan struct{}
}

// MaxInflight is the default bound on messages handed to the client and not
// yet acked.
const MaxInflight = 256

// New starts a publisher on js with at most maxInflight messages handed to
// the client and unacked (MaxInflight when 0), and no bound on buffered
// bytes until MaxBytes is set. js should be created with
// jetstream.WithPublishAsyncTimeout so that a lost ack turns into a retry.
func New(js jetstream.JetStream, maxInflight int, log *slog.Logger, m Metrics) *Publisher {
	if maxInflight <= 0 {
		maxInflight = MaxInflight
	}
	p := &Publisher{js: js, log: log, m: m, window: make(chan *inflight, maxInflight), done: make(chan struct{}),
		busy: map[string]bool{}}
	p.cond = sync.NewCond(&p.mu)
	go p.sendLoop()
	go p.ackLoop()
	return p
}

// Publish sends data to subject with Nats-Msg-Id id. It never drops: when
// the buffer is full it waits for room. data must not be modified afterwards.
func (p *Publisher) Publish(subject, id string, data []byte) { p.publish(subject, id, data, 0, nil) }

// publish buffers a message of packets summaries and calls acked (when not
// nil), from another goroutine, once the stream has acknowledged it or it
// was dropped, when data is no longer used. packets > 0 marks a batch that
// may be dropped under DropWhenFull.
func (p *Publisher) publish(subject, id string, data []byte, packets int, acked func()) {
	p.mu.Lock()
	for p.MaxBytes > 0 && p.bytes > 0 && p.bytes+len(data) > p.MaxBytes && !p.closed {
		if packets > 0 && p.DropWhenFull {
			if !p.dropping {
				p.dropping, p.epMsgs, p.epPkts = true, 0, 0
				p.log.Warn("publish buffer full, dropping packet batches until the broker catches up",
					"buffer_bytes", p.bytes, "max_bytes", p.MaxBytes)
			}
			p.epMsgs++
			p.epPkts += uint64(packets)
			p.mu.Unlock()
			p.droppedMsgs.Add(1)
			p.droppedPkts.Add(uint64(packets))
			inc(p.m.DroppedMessages)
			if p.m.DroppedPackets != nil {
				p.m.DroppedPackets.Add(float64(packets))
			}
			if acked != nil {
				acked()
			}
			return
		}
		p.cond.Wait()
	}
	if p.dropping {
		p.dropping = false
		p.log.Warn("publish buffer has room again", "dropped_batches", p.epMsgs, "dropped_packets", p.epPkts,
			"dropped_packets_total", p.droppedPkts.Load())
	}
	p.bytes += len(data)
	p.queue = append(p.queue, &inflight{subject: subject, id: id, data: data, size: len(data), acked: acked})
	p.wg.Add(1)
	p.cond.Broadcast()
	p.mu.Unlock()
}

// sendLoop hands queued messages to the client in order, at most
// cap(window) unacked at once and one per subject: the oldest queued
// message whose subject has none in flight goes next.
func (p *Publisher) sendLoop() {
	for {
		p.mu.Lock()
		i := p.next()
		for i < 0 && !(p.closed && len(p.queue) == 0) {
			p.cond.Wait()
			i = p.next()
		}
		if i < 0 {
			p.mu.Unlock()
			close(p.window)
			return
		}
		it := p.queue[i]
		copy(p.queue[i:], p.queue[i+1:])
		p.queue[len(p.queue)-1] = nil
		p.queue = p.queue[:len(p.queue)-1]
		if len(p.queue) == 0 {
			p.queue = p.queue[:0:0]
		}
		p.busy[it.subject] = true
		p.mu.Unlock()
		p.send(it)
		p.window <- it
	}
}

// next is the index in queue of the oldest message whose subject has no
// message in flight, or -1. The caller holds mu.
func (p *Publisher) next() int {
	for i, it := range p.queue {
		if !p.busy[it.subject] {
			return i
		}
	}
	return -1
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
	for it := range p.window {
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
		p.mu.Lock()
		p.bytes -= it.size
		delete(p.busy, it.subject)
		p.cond.Broadcast()
		p.mu.Unlock()
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

// Dropped is the number of batches, and of packet summaries in them, dropped
// so far because the buffer was full.
func (p *Publisher) Dropped() (batches, packets uint64) {
	return p.droppedMsgs.Load(), p.droppedPkts.Load()
}

// Buffered is the number of bytes of unacked messages (queued or in flight).
func (p *Publisher) Buffered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes
}

// Close stops the publisher after Wait; call it once, last. Messages still
// queued are abandoned.
func (p *Publisher) Close() {
	p.mu.Lock()
	p.closed = true
	p.queue = nil
	p.cond.Broadcast()
	p.mu.Unlock()
	<-p.done
}
