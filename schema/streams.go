package schema

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names (DESIGN.md table "Subjects and streams").
const (
	StreamPackets = "PACKETS"
	StreamFlows   = "FLOWS"
	StreamAlerts  = "ALERTS"
	StreamMetrics = "METRICS"
	// StreamCounters holds pb.TrafficCounters, one message per sensor,
	// enricher instance and second of packet time.
	StreamCounters = "COUNTERS"
)

// Durable consumer names. Every instance of a stage binds to the same durable,
// so instances share the work (sink, detector) or the partitions (enricher).
const (
	ConsumerEnricher    = "enricher"
	ConsumerDetector    = "detector"
	ConsumerSinkFlows   = "sink-flows"
	ConsumerSinkAlerts  = "sink-alerts"
	ConsumerSinkMetrics = "sink-metrics"
)

// StreamOptions tune the streams; the zero value gives DESIGN.md's defaults
// on a single node.
type StreamOptions struct {
	Replicas        int           // 1 on one node (0 means 1), 3 on a cluster
	PacketsMaxAge   time.Duration // 0 means 1 h
	PacketsMaxBytes int64         // 0 means 8 GiB
	FlowsMaxAge     time.Duration // 0 means 24 h
	AlertsMaxAge    time.Duration // 0 means 30 days
	MetricsMaxAge   time.Duration // 0 means 24 h
	CountersMaxAge  time.Duration // 0 means 24 h
	// Log receives ProvisionRetry's warnings (the stage's JSON or text
	// logger); nil means slog.Default().
	Log *slog.Logger
}

func orDur(v, d time.Duration) time.Duration {
	if v == 0 {
		return d
	}
	return v
}

// StreamConfigs returns the stream definitions: DESIGN.md's four and COUNTERS.
func StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	r := o.Replicas
	if r == 0 {
		r = 1
	}
	pb := o.PacketsMaxBytes
	if pb == 0 {
		pb = 8 << 30
	}
	return []jetstream.StreamConfig{
		{Name: StreamPackets, Subjects: []string{PacketsPrefix + ".>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy, MaxAge: orDur(o.PacketsMaxAge, time.Hour), MaxBytes: pb,
			Duplicates: 2 * time.Minute, Replicas: r, Discard: jetstream.DiscardOld,
			Description: "batched packet summaries from agents"},
		{Name: StreamFlows, Subjects: []string{FlowsPrefix + ".>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy, MaxAge: orDur(o.FlowsMaxAge, 24*time.Hour),
			Duplicates: 10 * time.Minute, Replicas: r, Description: "flow records from enrichers"},
		{Name: StreamAlerts, Subjects: []string{AlertsPrefix + ".>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy, MaxAge: orDur(o.AlertsMaxAge, 30*24*time.Hour),
			Duplicates: time.Hour, Replicas: r, Description: "alerts from detectors"},
		{Name: StreamMetrics, Subjects: []string{MetricsPrefix + ".>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy, MaxAge: orDur(o.MetricsMaxAge, 24*time.Hour),
			Duplicates: 2 * time.Minute, Replicas: r, Description: "host metrics and capture statistics"},
		{Name: StreamCounters, Subjects: []string{CountersPrefix + ".>"}, Storage: jetstream.FileStorage,
			Retention: jetstream.LimitsPolicy, MaxAge: orDur(o.CountersMaxAge, 24*time.Hour),
			Duplicates: 2 * time.Minute, Replicas: r, Description: "per-second traffic counters from enrichers"},
	}
}

// ConsumerDef is a durable consumer and the stream it reads.
type ConsumerDef struct {
	Stream string
	Config jetstream.ConsumerConfig
}

// ConsumerConfigs returns the durable consumers of the pipeline. The
// enricher's AckWait is short because it holds messages until the flows they
// feed are published and keeps them alive with InProgress (STYLE.md: ack
// only once the output is published).
func ConsumerConfigs(o StreamOptions) []ConsumerDef {
	r := o.Replicas
	if r == 0 {
		r = 1
	}
	c := func(stream, name string, ackWait time.Duration, maxPending int) ConsumerDef {
		return ConsumerDef{Stream: stream, Config: jetstream.ConsumerConfig{
			Durable: name, AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
			AckWait: ackWait, MaxAckPending: maxPending, MaxDeliver: -1, Replicas: r,
			MaxRequestBatch: 0,
		}}
	}
	return []ConsumerDef{
		c(StreamPackets, ConsumerEnricher, 2*time.Minute, 1_000_000),
		c(StreamFlows, ConsumerDetector, time.Minute, 100_000),
		c(StreamFlows, ConsumerSinkFlows, time.Minute, 100_000),
		c(StreamAlerts, ConsumerSinkAlerts, time.Minute, 10_000),
		c(StreamMetrics, ConsumerSinkMetrics, time.Minute, 10_000),
	}
}

// Provision creates or updates every stream and durable consumer; calling it
// again with the same options changes nothing. It never lowers the replicas
// of an existing stream or consumer: a stage started with the default of 1
// on a cluster provisioned at 3 keeps the streams at 3; it keeps an existing
// stream's sources (a hub sourcing from leaf sites). Errors name the stream
// or consumer that failed.
func Provision(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, sc := range StreamConfigs(o) {
		if st, err := js.Stream(ctx, sc.Name); err == nil {
			if r := st.CachedInfo().Config.Replicas; r > sc.Replicas {
				sc.Replicas = r
			}
			// a hub's PACKETS and METRICS source from leaf sites
			// (netwatchctl provision -sites): a stage's start keeps them
			sc.Sources = st.CachedInfo().Config.Sources
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	for _, cd := range ConsumerConfigs(o) {
		if c, err := js.Consumer(ctx, cd.Stream, cd.Config.Durable); err == nil {
			if r := c.CachedInfo().Config.Replicas; r > cd.Config.Replicas {
				cd.Config.Replicas = r
			}
		}
		if _, err := js.CreateOrUpdateConsumer(ctx, cd.Stream, cd.Config); err != nil {
			return fmt.Errorf("provision consumer %s on %s: %w", cd.Config.Durable, cd.Stream, err)
		}
	}
	return nil
}

// Needs names what a stage uses of what Provision creates: streams (it
// publishes to or reads) and durable consumers (stream name → durable).
type Needs struct {
	Streams   []string
	Consumers map[string][]string // stream → durables
}

// AwaitProvisioned waits until every stream and durable consumer of n
// exists, checking with the stream and consumer info requests a
// least-privilege stage user is granted, every 200 ms doubling to 5 s,
// and calls waiting (when not nil) with what is missing before each wait.
// It is what a stage started with -nats.provision=false does instead of
// Provision: an administrator provisions (netwatchctl provision), and a
// stage started first waits for it rather than failing. It returns nil
// when everything exists, or an error joining the last missing item and
// ctx's error when ctx ends.
func AwaitProvisioned(ctx context.Context, js jetstream.JetStream, n Needs, waiting func(missing error)) error {
	wait := 200 * time.Millisecond
	for {
		err := checkProvisioned(ctx, js, n)
		if err == nil {
			return nil
		}
		if waiting != nil {
			waiting(err)
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

func checkProvisioned(ctx context.Context, js jetstream.JetStream, n Needs) error {
	actx, cancel := context.WithTimeout(ctx, provisionAttempt)
	defer cancel()
	for _, s := range n.Streams {
		if _, err := js.Stream(actx, s); err != nil {
			return fmt.Errorf("stream %s: %w", s, err)
		}
	}
	streams := make([]string, 0, len(n.Consumers))
	for s := range n.Consumers {
		streams = append(streams, s)
	}
	sort.Strings(streams)
	for _, s := range streams {
		for _, d := range n.Consumers[s] {
			if _, err := js.Consumer(actx, s, d); err != nil {
				return fmt.Errorf("consumer %s on %s: %w", d, s, err)
			}
		}
	}
	return nil
}

// provisionAttempt bounds one Provision call of ProvisionRetry: a request
// sent while a new cluster has no meta leader gets no answer, and must not
// hold the caller's whole deadline.
const provisionAttempt = 10 * time.Second

// ErrNotPermitted is wrapped by ProvisionRetry's error when the server
// refused a provisioning request for the user's permissions.
var ErrNotPermitted = errors.New("provision not permitted")

// permissionDenied returns the connection's last error when it is the
// server's permissions violation for a JetStream API request (nats.go
// reports those asynchronously; the request itself only times out).
func permissionDenied(js jetstream.JetStream) error {
	err := js.Conn().LastError()
	if err != nil && strings.Contains(strings.ToLower(err.Error()), "permissions violation") &&
		strings.Contains(err.Error(), "$JS.API.") {
		return err
	}
	return nil
}

// ProvisionRetry calls Provision until it succeeds or ctx ends, backing off
// from 200 ms to 5 s: a stage started before NATS (or during a cluster
// election) waits for it instead of failing. A user the server does not
// permit to provision gets an error wrapping ErrNotPermitted at once.
func ProvisionRetry(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	wait := 200 * time.Millisecond
	var logged time.Time
	for {
		actx, cancel := context.WithTimeout(ctx, provisionAttempt)
		err := Provision(actx, js, o)
		cancel()
		if err == nil {
			return nil
		}
		if pe := permissionDenied(js); pe != nil {
			// the server refused a provisioning request: no retry helps
			return fmt.Errorf("%w: this user may not create or update the streams (%v); provision them as admin "+
				"(netwatchctl provision) and start with -nats.provision=false", ErrNotPermitted, pe)
		}
		// a server that cannot hold the streams (e.g. "insufficient storage
		// resources": max_file_store below PACKETS' cap) answers every try
		// the same way: say so, at most every 10 s, instead of waiting mute
		if time.Since(logged) >= 10*time.Second {
			log := o.Log
			if log == nil {
				log = slog.Default()
			}
			log.Warn("provisioning the streams failed; retrying", "err", err, "retry_in", wait.String())
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// ProvisionOrAwait is what a stage does at start with its -nats.provision
// flag: ProvisionRetry when provision is true (one node, make run, a user
// allowed to create streams), AwaitProvisioned of n otherwise (a
// least-privilege user on a fleet provisioned by netwatchctl provision).
func ProvisionOrAwait(ctx context.Context, js jetstream.JetStream, provision bool, o StreamOptions, n Needs, waiting func(missing error)) error {
	if provision {
		return ProvisionRetry(ctx, js, o)
	}
	return AwaitProvisioned(ctx, js, n, waiting)
}

// PullExpiry is the expiry of the stages' pull requests on their consumers
// (jetstream.PullExpiry in Consume/Messages). A pull request waits at the
// consumer's leader; when that server is lost the client notices only by
// missed idle heartbeats (half the expiry, nats.go), so the expiry bounds
// the stall a leader loss adds: with nats.go's default of 30 s the fleet
// test saw the health rule's METRICS reader silent for 31 s and flows 17 s
// late after a node restart.
const PullExpiry = 5 * time.Second
