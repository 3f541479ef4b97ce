// Package consume is the sink's intake: it pulls FLOWS, ALERTS and METRICS
// from their durable JetStream consumers, batches records across messages,
// hands each batch to the store, and acks the batch's messages only after the
// store committed it (STYLE.md "A stage"). A message that does not decode is
// terminated and counted; a database error keeps the batch and retries it.
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
		Invalid:      c("rows_invalid_total", "Records skipped because they can never be stored (no id, bad address), by table."),
		Batches:      c("batches_total", "Batches committed, by table."),
		DBErrors:     c("db_errors_total", "Failed batch writes (each retry counts), by table."),
		BatchSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "netwatch_sink_batch_duration_seconds",
			Help:    "Time to write and commit one batch, by table.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, []string{"table"}),
	}
	if reg != nil {
		reg.MustRegister(m.Messages, m.Redeliveries, m.Poison, m.Rows, m.Duplicates, m.Invalid,
			m.Batches, m.DBErrors, m.BatchSeconds)
	}
	return m
}

// Loop moves one stream into one table.
type Loop[T any] struct {
	Table    string // table label, e.g. "flows"
	Consumer jetstream.Consumer
	// Decode parses a message into a value and its number of rows; an error
	// means it never will (the message is terminated).
	Decode func([]byte) (T, int, error)
	// Write stores values in one transaction.
	Write   func(context.Context, []T) (store.Result, error)
	Config  Config
	Metrics *Metrics
	Log     *slog.Logger

	failing atomic.Bool
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
	return &Loop[*pb.FlowBatch]{Table: "flows", Consumer: c, Config: cfg, Metrics: m, Log: log,
		Decode: func(b []byte) (*pb.FlowBatch, int, error) {
			v := new(pb.FlowBatch)
			if err := proto.Unmarshal(b, v); err != nil {
				return nil, 0, err
			}
			return v, len(v.GetFlows()), nil
		},
		Write: st.WriteFlows}
}

// Alerts is the loop of ALERTS into the alerts table.
func Alerts(st *store.Store, c jetstream.Consumer, cfg Config, m *Metrics, log *slog.Logger) *Loop[*pb.Alert] {
	return &Loop[*pb.Alert]{Table: "alerts", Consumer: c, Config: cfg, Metrics: m, Log: log,
		Decode: func(b []byte) (*pb.Alert, int, error) {
			v := new(pb.Alert)
			if err := proto.Unmarshal(b, v); err != nil {
				return nil, 0, err
			}
			return v, 1, nil
		},
		Write: st.WriteAlerts}
}

// HostMetrics is the loop of METRICS into the host_metrics table.
func HostMetrics(st *store.Store, c jetstream.Consumer, cfg Config, m *Metrics, log *slog.Logger) *Loop[*pb.Metrics] {
	return &Loop[*pb.Metrics]{Table: "host_metrics", Consumer: c, Config: cfg, Metrics: m, Log: log,
		Decode: func(b []byte) (*pb.Metrics, int, error) {
			v := new(pb.Metrics)
			if err := proto.Unmarshal(b, v); err != nil {
				return nil, 0, err
			}
			return v, 1, nil
		},
		Write: st.WriteMetrics}
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

	it, err := l.Consumer.Messages(jetstream.PullMaxMessages(cfg.Prefetch))
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
	work := make(chan []item[T])
	var writers sync.WaitGroup
	for range cfg.Writers {
		writers.Go(func() {
			for items := range work {
				l.flush(hard, log, cfg, items)
			}
		})
	}

	var (
		pend  []item[T]
		rows  int
		timer = time.NewTimer(time.Hour)
	)
	timer.Stop()
	add := func(m jetstream.Msg) {
		l.Metrics.Messages.WithLabelValues(l.Table).Inc()
		if md, err := m.Metadata(); err == nil && md.NumDelivered > 1 {
			l.Metrics.Redeliveries.WithLabelValues(l.Table).Inc()
		}
		v, n, err := l.Decode(m.Data())
		if err != nil {
			l.Metrics.Poison.WithLabelValues(l.Table).Inc()
			log.Warn("message does not decode, terminated", "subject", m.Subject(), "err", err)
			_ = m.Term()
			return
		}
		if len(pend) == 0 {
			timer.Reset(cfg.FlushInterval)
		}
		pend = append(pend, item[T]{msg: m, val: v, rows: n})
		rows += n
	}
	flush := func() {
		timer.Stop()
		if len(pend) > 0 {
			work <- pend
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
// database rejects the rows themselves) splits the batch by message and
// terminates the message that is rejected alone. Other errors are retried
// with backoff, keeping the messages alive with InProgress; when hard ends
// the messages are nak'ed for redelivery.
func (l *Loop[T]) flush(hard context.Context, log *slog.Logger, cfg Config, items []item[T]) {
	vals := make([]T, len(items))
	for i, it := range items {
		vals[i] = it.val
	}
	wait := 200 * time.Millisecond
	alive := time.Now()
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
				log.Info("database writes recovered")
			}
			return
		}
		l.Metrics.DBErrors.WithLabelValues(l.Table).Inc()
		if store.IsDataError(err) {
			if len(items) > 1 {
				log.Warn("batch rejected by the database, retrying message by message", "messages", len(items), "err", err)
				for i := range items {
					l.flush(hard, log, cfg, items[i:i+1])
				}
				return
			}
			l.Metrics.Poison.WithLabelValues(l.Table).Inc()
			log.Error("message rejected by the database, terminated", "subject", items[0].msg.Subject(), "err", err)
			_ = items[0].msg.Term()
			return
		}
		if hard.Err() != nil {
			log.Error("batch not written before shutdown, nak'ed for redelivery", "messages", len(items), "err", err)
			for _, it := range items {
				_ = it.msg.Nak()
			}
			return
		}
		if !l.failing.Swap(true) {
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
