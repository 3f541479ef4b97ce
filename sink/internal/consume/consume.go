// Package consume is the sink's intake: it pulls FLOWS, ALERTS and METRICS
// from their durable JetStream consumers, batches records across messages,
// hands each batch to the store, and acks the batch's messages only after the
// store committed it (STYLE.md "A stage"). A message that does not decode,
// or whose rows the database rejects as data or keeps timing out on, is
// parked (parked_messages), terminated and counted; any other database error
// keeps the batch and retries it with backoff.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/store"
)

// Config tunes a Loop; zero fields take the defaults named.
type Config struct {
	BatchSize       int           // rows per write; 0 means 5000
	FlushInterval   time.Duration // longest a record waits in a batch; 0 means 250 ms
	Prefetch        int           // messages buffered from the server; 0 means 256
	ShutdownTimeout time.Duration // how long a stopping loop keeps retrying its last batch; 0 means 30 s
	RetryMax        time.Duration // longest pause between retries of a failed write; 0 means 5 s
	// Writers is how many batches are written at once (each in its own
	// transaction and connection) while the next one fills; 0 means 2.
	Writers int
}

func (c Config) withDefaults() Config {
	if c.BatchSize <= 0 {
		c.BatchSize = 5000
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 250 * time.Millisecond
	}
	if c.Prefetch <= 0 {
		c.Prefetch = 256
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 30 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Second
	}
	if c.Writers <= 0 {
		c.Writers = 2
	}
	return c
}

// Metrics are the intake's Prometheus metrics, labelled by table.
type Metrics struct {
	Messages     *prometheus.CounterVec
	Redeliveries *prometheus.CounterVec
	Poison       *prometheus.CounterVec
	Rows         *prometheus.CounterVec
	Duplicates   *prometheus.CounterVec
	Invalid      *prometheus.CounterVec
	Batches      *prometheus.CounterVec
	BatchSeconds *prometheus.HistogramVec
	DBErrors     *prometheus.CounterVec
	Parked       *prometheus.CounterVec
	Repaired     *prometheus.CounterVec
	// Pending is the durable consumer's messages not yet acked by any sink
	// instance (num_pending + num_ack_pending, the figure /api/v1/pipeline
	// shows), polled every 2 s.
	Pending *prometheus.GaugeVec
	// Lag is the age (since it was stored in the stream) of the oldest
	// message this instance holds and has not committed yet; 0 when none.
	Lag *prometheus.GaugeVec
	// Failing is 1 while writes fail and are retried (an outage), else 0.
	Failing *prometheus.GaugeVec
}

// NewMetrics registers the intake's metrics in reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	c := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_sink_" + name, Help: help}, []string{"table"})
	}
	m := &Metrics{
		Messages:     c("messages_total", "Messages received, by table."),
		Redeliveries: c("redeliveries_total", "Messages received more than once (JetStream redelivery), by table."),
		Poison:       c("poison_messages_total", "Messages terminated because they never decode or their rows are rejected, by table."),
		Rows:         c("rows_written_total", "Rows inserted, by table."),
		Duplicates:   c("rows_duplicate_total", "Rows skipped because they were already stored (redelivered or republished), by table."),
		Invalid:      c("rows_invalid_total", "Records skipped because they can never be stored (no id, bad address, a number out of its field's range), by table."),
		Batches:      c("batches_total", "Batches committed, by table."),
		DBErrors:     c("db_errors_total", "Failed batch writes (each retry counts), by table."),
		Parked:       c("parked_messages_total", "Messages given up on and stored in parked_messages (rejected as data, repeated statement timeout, undecodable), by table."),
		Repaired:     c("messages_text_repaired_total", "Messages whose string fields held invalid UTF-8, decoded after escaping it as \\xNN, by table."),
		Pending: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netwatch_sink_consumer_pending_messages",
			Help: "Messages of the durable consumer not yet acked by any sink instance (pending + ack pending), by table."}, []string{"table"}),
		Lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netwatch_sink_lag_seconds",
			Help: "Age of the oldest message this sink holds and has not committed yet (0 when none), by table."}, []string{"table"}),
		Failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "netwatch_sink_write_failing",
			Help: "1 while database writes fail and are retried, else 0, by table."}, []string{"table"}),
		BatchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "netwatch_sink_batch_duration_seconds",
			Help:    "Time to write and commit one batch, by table.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, []string{"table"}),
	}
	if reg != nil {
		reg.MustRegister(m.Messages, m.Redeliveries, m.Poison, m.Rows, m.Duplicates, m.Invalid,
			m.Batches, m.DBErrors, m.BatchSeconds, m.Parked, m.Repaired, m.Pending, m.Lag, m.Failing)
	}
	return m
}

// Loop moves one stream into one table.
type Loop[T any] struct {
	Table    string // table label, e.g. "flows"
	Stream   string // the consumer's stream, for parked messages
	Consumer jetstream.Consumer
	// Decode parses a message into a value and its number of rows; an error
	// means it never will (the message is terminated).
	Decode func([]byte) (T, int, error)
	// Write stores values in one transaction.
	Write func(context.Context, []T) (store.Result, error)
	// Park keeps a message given up on (parked_messages); nil terminates
	// it without keeping it.
	Park    func(context.Context, store.Parked) error
	Config  Config
	Metrics *Metrics
	Log     *slog.Logger

	failing atomic.Bool
	held    tracker
}

// Failing reports whether the last write failed and has not yet succeeded.
func (l *Loop[T]) Failing() bool { return l.failing.Load() }

type item[T any] struct {
	msg  jetstream.Msg
	val  T
	rows int
}

// Flows is the loop of FLOWS into the flows table.
func Flows(st *store.Store, c jetstream.Consumer, cfg Config, m *Metrics, log *slog.Logger) *Loop[*pb.FlowBatch] {
	l := &Loop[*pb.FlowBatch]{Table: "flows", Stream: schema.StreamFlows, Consumer: c, Config: cfg, Metrics: m,
		Log: log, Write: st.WriteFlows, Park: st.Park}
	l.Decode = func(b []byte) (*pb.FlowBatch, int, error) {
		v := new(pb.FlowBatch)
		if err := l.unmarshal(b, v); err != nil {
			return nil, 0, err
		}
		return v, len(v.GetFlows()), nil
	}
	return l
}

// Alerts is the loop of ALERTS into the alerts table.
func Alerts(st *store.Store, c jetstream.Consumer, cfg Config, m *Metrics, log *slog.Logger) *Loop[*pb.Alert] {
	l := &Loop[*pb.Alert]{Table: "alerts", Stream: schema.StreamAlerts, Consumer: c, Config: cfg, Metrics: m,
		Log: log, Write: st.WriteAlerts, Park: st.Park}
	l.Decode = func(b []byte) (*pb.Alert, int, error) {
		v := new(pb.Alert)
		if err := l.unmarshal(b, v); err != nil {
			return nil, 0, err
		}
		return v, 1, nil
	}
	return l
}

// HostMetrics is the loop of METRICS into the host_metrics table.
func HostMetrics(st *store.Store, c jetstream.Consumer, cfg Config, m *Metrics, log *slog.Logger) *Loop[*pb.Metrics] {
	l := &Loop[*pb.Metrics]{Table: "host_metrics", Stream: schema.StreamMetrics, Consumer: c, Config: cfg, Metrics: m,
		Log: log, Write: st.WriteMetrics, Park: st.Park}
	l.Decode = func(b []byte) (*pb.Metrics, int, error) {
		v := new(pb.Metrics)
		if err := l.unmarshal(b, v); err != nil {
			return nil, 0, err
		}
		return v, 1, nil
	}
	return l
}

// unmarshal decodes b into v (repairing invalid UTF-8, counted).
func (l *Loop[T]) unmarshal(b []byte, v proto.Message) error {
	repaired, err := unmarshal(b, v)
	if repaired && l.Metrics != nil {
		l.Metrics.Repaired.WithLabelValues(l.Table).Inc()
	}
	return err
}

// Run consumes until ctx ends, then stops pulling, writes and acks what it
// holds (Config.Writers batches are written at once, acked as each commits) (retrying for up to Config.ShutdownTimeout; what is still unwritten
// is nak'ed for redelivery) and returns nil. It returns an error only when
// the consumer cannot be read at all.
func (l *Loop[T]) Run(ctx context.Context) error {
	cfg := l.Config.withDefaults()
	if l.Metrics == nil {
		l.Metrics = NewMetrics(nil)
	}
	log := l.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("table", l.Table)

	it, err := l.Consumer.Messages(jetstream.PullMaxMessages(cfg.Prefetch), jetstream.PullExpiry(schema.PullExpiry))
	if err != nil {
		return fmt.Errorf("consume %s: %w", l.Table, err)
	}
	// hard bounds writes and retries: it ends ShutdownTimeout after ctx.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() { time.AfterFunc(cfg.ShutdownTimeout, cancelHard) })
	defer stopHard()

	msgs := make(chan jetstream.Msg)
	go func() {
		defer close(msgs)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				log.Warn("pull messages", "err", err)
				time.Sleep(100 * time.Millisecond) // a persistent error must not spin
				continue
			}
			msgs <- m
		}
	}()

	// Writers take full batches, so that the next batch is decoded and
	// filled while earlier ones are written; the hand-over blocks while all
	// are busy (the client buffers up to Prefetch messages meanwhile).
	type batch struct {
		items []item[T]
		held  uint64 // tracker id
	}
	work := make(chan batch)
	var writers sync.WaitGroup
	for range cfg.Writers {
		writers.Go(func() {
			for b := range work {
				l.flush(hard, log, cfg, b.items)
				l.held.release(b.held)
			}
		})
	}
	// The lag and the consumer's pending count, until the writers are done.
	pollDone := make(chan struct{})
	var poller sync.WaitGroup
	poller.Go(func() { l.poll(pollDone, log) })
	defer func() { close(pollDone); poller.Wait(); l.Metrics.Lag.WithLabelValues(l.Table).Set(0) }()

	var (
		pend   []item[T]
		pendID uint64
		rows   int
		timer  = time.NewTimer(time.Hour)
	)
	timer.Stop()
	add := func(m jetstream.Msg) {
		l.Metrics.Messages.WithLabelValues(l.Table).Inc()
		stored := time.Now()
		if md, err := m.Metadata(); err == nil {
			stored = md.Timestamp
			if md.NumDelivered > 1 {
				l.Metrics.Redeliveries.WithLabelValues(l.Table).Inc()
			}
		}
		v, n, err := l.Decode(m.Data())
		if err != nil {
			log.Warn("message does not decode, parked and terminated", "subject", m.Subject(), "err", err)
			pctx, cancel := context.WithTimeout(hard, 5*time.Second)
			l.park(pctx, log, m, fmt.Errorf("does not decode: %w", err), false)
			cancel()
			return
		}
		if len(pend) == 0 {
			timer.Reset(cfg.FlushInterval)
			pendID = l.held.hold(stored)
		} else {
			l.held.older(pendID, stored)
		}
		pend = append(pend, item[T]{msg: m, val: v, rows: n})
		rows += n
	}
	flush := func() {
		timer.Stop()
		if len(pend) > 0 {
			work <- batch{pend, pendID}
		}
		pend, rows = nil, 0
	}

loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case m, ok := <-msgs:
			if !ok {
				break loop
			}
			add(m)
			if rows >= cfg.BatchSize {
				flush()
			}
		case <-timer.C:
			flush()
		}
	}
	// Stop intake: Drain hands over what is already buffered, then closes.
	it.Drain()
	for m := range msgs {
		add(m)
		if rows >= cfg.BatchSize {
			flush()
		}
	}
	flush()
	close(work)
	writers.Wait()
	return nil
}

// flush writes items until it succeeds, then acks them. A data error (the
// database rejects the rows themselves) or a statement timeout splits the
// batch by message; a message rejected alone, or timing out alone three
// times, is parked (parked_messages) and terminated. Other errors are
// retried with backoff, keeping the messages alive with InProgress; when
// hard ends the messages are nak'ed for redelivery.
func (l *Loop[T]) flush(hard context.Context, log *slog.Logger, cfg Config, items []item[T]) {
	vals := make([]T, len(items))
	for i, it := range items {
		vals[i] = it.val
	}
	wait := 200 * time.Millisecond
	alive := time.Now()
	timeouts := 0
	for {
		t0 := time.Now()
		res, err := l.Write(hard, vals)
		if err == nil {
			l.Metrics.BatchSeconds.WithLabelValues(l.Table).Observe(time.Since(t0).Seconds())
			l.Metrics.Batches.WithLabelValues(l.Table).Inc()
			l.Metrics.Rows.WithLabelValues(l.Table).Add(float64(res.Inserted))
			l.Metrics.Duplicates.WithLabelValues(l.Table).Add(float64(res.Rows - res.Inserted))
			l.Metrics.Invalid.WithLabelValues(l.Table).Add(float64(res.Invalid))
			if res.Invalid > 0 {
				log.Warn("records skipped: they can never be stored", "count", res.Invalid)
			}
			for _, it := range items {
				_ = it.msg.Ack()
			}
			if l.failing.Swap(false) {
				l.Metrics.Failing.WithLabelValues(l.Table).Set(0)
				log.Info("database writes recovered")
			}
			return
		}
		l.Metrics.DBErrors.WithLabelValues(l.Table).Inc()
		if hard.Err() != nil {
			log.Error("batch not written before shutdown, nak'ed for redelivery", "messages", len(items), "err", err)
			for _, it := range items {
				_ = it.msg.Nak()
			}
			return
		}
		timeout := store.IsStatementTimeout(err)
		if store.IsDataError(err) || timeout {
			if len(items) > 1 {
				log.Warn("batch rejected by the database, retrying message by message", "messages", len(items), "err", err)
				for i := range items {
					l.flush(hard, log, cfg, items[i:i+1])
				}
				return
			}
			if timeouts++; !timeout || timeouts >= 3 {
				log.Error("message rejected by the database, parked and terminated", "subject", items[0].msg.Subject(), "err", err)
				l.park(hard, log, items[0].msg, err, true)
				return
			}
		}
		if !l.failing.Swap(true) {
			l.Metrics.Failing.WithLabelValues(l.Table).Set(1)
			log.Error("database write failed, retrying", "messages", len(items), "err", err)
		} else {
			log.Debug("database write failed again", "err", err)
		}
		select {
		case <-hard.Done():
		case <-time.After(wait):
		}
		wait = min(2*wait, cfg.RetryMax)
		if time.Since(alive) > 15*time.Second {
			for _, it := range items {
				_ = it.msg.InProgress()
			}
			alive = time.Now()
		}
	}
}

// park stores m in parked_messages with why, counts it and terminates it, so
// it is kept but never retried. With retry, a failing park is retried until
// ctx ends (then m is nak'ed: it must not be lost); without, m is terminated
// anyway (an undecodable message while the database is away).
func (l *Loop[T]) park(ctx context.Context, log *slog.Logger, m jetstream.Msg, why error, retry bool) {
	l.Metrics.Poison.WithLabelValues(l.Table).Inc()
	if l.Park != nil {
		p := store.Parked{Table: l.Table, Stream: l.Stream, Subject: m.Subject(), Reason: why.Error(),
			SQLState: store.SQLState(why), Data: m.Data()}
		if md, err := m.Metadata(); err == nil {
			p.StreamSeq = md.Sequence.Stream
			if p.Stream == "" {
				p.Stream = md.Stream
			}
		}
		if h := m.Headers(); h != nil {
			p.MsgID = h.Get(jetstream.MsgIDHeader)
		}
		wait, alive := 200*time.Millisecond, time.Now()
		for {
			err := l.Park(ctx, p)
			if err == nil {
				l.Metrics.Parked.WithLabelValues(l.Table).Inc()
				break
			}
			if !retry || ctx.Err() != nil {
				log.Error("message not parked", "subject", p.Subject, "seq", p.StreamSeq, "err", err)
				if retry {
					_ = m.Nak()
					return
				}
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			wait = min(2*wait, 5*time.Second)
			if time.Since(alive) > 15*time.Second {
				_ = m.InProgress()
				alive = time.Now()
			}
		}
	}
	_ = m.Term()
}

// poll sets the Lag gauge every second and the Pending gauge every two
// seconds until done is closed.
func (l *Loop[T]) poll(done <-chan struct{}, log *slog.Logger) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 0; ; i++ {
		l.Metrics.Lag.WithLabelValues(l.Table).Set(l.held.age(time.Now()).Seconds())
		if i%2 == 0 && l.Consumer != nil {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			ci, err := l.Consumer.Info(ctx)
			cancel()
			if err == nil {
				l.Metrics.Pending.WithLabelValues(l.Table).Set(float64(ci.NumPending + uint64(ci.NumAckPending)))
			} else {
				log.Debug("consumer info", "err", err)
			}
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

// tracker knows the oldest message time of each batch held (filling or
// being written), for the Lag gauge.
type tracker struct {
	mu     sync.Mutex
	next   uint64
	oldest map[uint64]time.Time
}

// hold starts tracking a batch whose first message was stored at t.
func (k *tracker) hold(t time.Time) uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.oldest == nil {
		k.oldest = map[uint64]time.Time{}
	}
	k.next++
	k.oldest[k.next] = t
	return k.next
}

// older lowers batch id's oldest time to t if t is older.
func (k *tracker) older(id uint64, t time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if o, ok := k.oldest[id]; ok && t.Before(o) {
		k.oldest[id] = t
	}
}

func (k *tracker) release(id uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.oldest, id)
}

// age is how long ago the oldest message held was stored; 0 when none.
func (k *tracker) age(now time.Time) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	var a time.Duration
	for _, t := range k.oldest {
		a = max(a, now.Sub(t))
	}
	return a
}
