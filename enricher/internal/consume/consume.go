// Package consume is the enricher stage's driver (consume → flow, counters
// → publish → ack): it pulls PacketBatches from the PACKETS durable consumer
// (or a partitioned consumer group), feeds one flow.Table per (sensor,
// bucket) and one counters.Sensor per sensor, hands records and counters to
// the publisher and acks a PACKETS message once every record and second it
// contributed to is published.
package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/synadia-io/orbit.go/pcgroups"
	"google.golang.org/protobuf/proto"

	"netwatch/enricher/internal/counters"
	"netwatch/enricher/internal/flow"
	"netwatch/enricher/internal/names"
	"netwatch/enricher/internal/publish"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Config tunes the stage.
type Config struct {
	Flow      flow.Config  // Sensor, Names and Limit are set by the stage
	MaxFlows  int          // open flows in all tables (-flow.max-flows); ≤ 0 is no bound
	Names     names.Config // passive DNS cache per sensor
	NoNames   bool         // do not learn names from DNS answers
	Counters  counters.Config
	Instance  string         // this instance's name in COUNTERS message ids (stable across restarts)
	Group     Group          // partitioned consumer group; zero: the shared durable (one instance)
	Publish   publish.Config //
	PullBatch int            // messages per pull request (500)
	WallTick  time.Duration  // how often idle buckets' clocks follow the wall clock (5 s)
	// WatermarkSilence: a sensor that sent a watermark batch
	// (PacketBatch.watermark_ns) within it moves its buckets' clocks by
	// watermarks only, never by the wall clock, so batches delayed by a
	// broker failover still join their flows; after it (agent gone or cut
	// off) the wall clock takes over again. 30 s when 0.
	WatermarkSilence time.Duration
	KeepAlive        time.Duration // InProgress interval for held messages (30 s; AckWait is 2 min)
	ShutdownFlush    bool          // on shutdown, end open flows as END_SHUTDOWN and ack (see README)
	DrainTimeout     time.Duration // longest wait for publish acks at shutdown (30 s)
	Replicas         int           // replicas of the checkpoint key-value bucket when it is created (-nats.replicas)
}

// CheckpointBucket is the JetStream key-value bucket of the enricher's flow
// checkpoints (group mode): key <group>.<sensor>.<bucket>.<flow key hash>,
// value a flow.FlowState as JSON. Entries expire after CheckpointTTL.
const CheckpointBucket = schema.CheckpointBucket

// CheckpointTTL is how long a checkpoint is kept: it is needed until the
// flow's messages are acked (at most the active or idle timeout plus AckWait
// after it is written) or, after a crash, until the bucket is taken over
// again; a day covers an instance down overnight.
const CheckpointTTL = schema.CheckpointTTL

// Group selects consumption through an elastic partitioned consumer group
// (github.com/synadia-io/orbit.go/pcgroups) instead of the single durable:
// PACKETS subjects are partitioned on their <sensor>.<bucket> tokens, so all
// packets of a flow reach one member; instances that share a member name
// are hot standbys (one is pinned, the next takes over when it stops
// pulling for AckWait).
type Group struct {
	Name       string        // consumer group name on PACKETS; "" disables
	Member     string        // this instance's member name
	Partitions uint          // partitions (the group's max members) when the group is created
	AckWait    time.Duration // AckWait of the member consumers, also the pinned TTL: the standby failover time
	Join       bool          // add Member to the group's membership at start
}

// groupFilter partitions PACKETS on the <sensor> and <bucket> tokens.
var groupFilter = pcgroups.PartitioningFilter{Filter: schema.GroupFilterSubject, PartitioningWildcards: schema.GroupPartitioningWildcards}

// JoinGroup creates the elastic consumer group g on PACKETS if it does not
// exist (an existing group must have the same partitions and filter) and,
// with g.Join, adds g.Member to its membership. The group keeps a work-queue
// stream "PACKETS-<name>" sourced from PACKETS.
func JoinGroup(ctx context.Context, js jetstream.JetStream, g Group) error {
	if err := groupExists(ctx, js, g); err != nil {
		if !errors.Is(err, errNoGroup) {
			return err
		}
		if _, err := pcgroups.CreateElastic(ctx, js, schema.StreamPackets, g.Name, g.Partitions,
			[]pcgroups.PartitioningFilter{groupFilter}, 0, 0); err != nil {
			return fmt.Errorf("create consumer group %s: %w", g.Name, err)
		}
	}
	if g.Join {
		if _, err := pcgroups.AddMembers(ctx, js, schema.StreamPackets, g.Name, []string{g.Member}); err != nil {
			return fmt.Errorf("join consumer group %s as %s: %w", g.Name, g.Member, err)
		}
	}
	return nil
}

// errNoGroup: the group's configuration or its work-queue stream is missing.
var errNoGroup = errors.New("consumer group not created")

// groupExists returns nil when group g exists with g's partitions and the
// enricher's filter and its work-queue stream exists (netwatchctl
// provision creates both: the enricher user may not create streams),
// errNoGroup when either is missing, and an error when the group exists
// with another configuration (pcgroups cannot change it).
func groupExists(ctx context.Context, js jetstream.JetStream, g Group) error {
	// pcgroups' configuration bucket and key (GetElasticConsumerGroupConfig
	// does not wrap "key not found"), then the configuration itself
	kv, err := js.KeyValue(ctx, "elastic-consumer-groups")
	if err == nil {
		_, err = kv.Get(ctx, schema.StreamPackets+"."+g.Name)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return errNoGroup
	}
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", g.Name, err)
	}
	c, err := pcgroups.GetElasticConsumerGroupConfig(ctx, js, schema.StreamPackets, g.Name)
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", g.Name, err)
	}
	if c.MaxMembers != g.Partitions || !reflect.DeepEqual(c.PartitioningFilters, []pcgroups.PartitioningFilter{groupFilter}) {
		return fmt.Errorf("consumer group %s exists with %d partitions and filters %v, want %d and %v: delete it first (deploy/README.md \"Scaling the enrichers\")",
			g.Name, c.MaxMembers, c.PartitioningFilters, g.Partitions, groupFilter)
	}
	if _, err := js.Stream(ctx, schema.StreamPackets+"-"+g.Name); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errNoGroup
		}
		return fmt.Errorf("consumer group %s: %w", g.Name, err)
	}
	return nil
}

// Metrics of the stage (README "Metrics").
type Metrics struct {
	Packets     prometheus.Counter
	Batches     *prometheus.CounterVec // result: ok, undecodable, redelivered
	Flows       *prometheus.CounterVec // reason
	ActiveFlows prometheus.Gauge
	Held        prometheus.Gauge
	PubBatches  prometheus.Counter
	PubErrors   prometheus.Counter
	Skipped     prometheus.Counter
	Evicted     prometheus.Counter
	Backwards   prometheus.Counter
	Seconds     prometheus.Counter
	Late        prometheus.Counter
	Replayed    prometheus.Counter
	Rejoins     prometheus.Counter
}

// NewMetrics registers the stage's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Packets: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_packets_total",
			Help: "Packet summaries accounted into flows."}),
		Batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_enricher_batches_total",
			Help: "PACKETS messages received, by result (ok, undecodable, redelivered)."}, []string{"result"}),
		Flows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_enricher_flows_emitted_total",
			Help: "Flow records emitted, by end reason (idle, active, fin, rst, eof, shutdown)."}, []string{"reason"}),
		ActiveFlows: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_enricher_active_flows",
			Help: "Open flows in all flow tables."}),
		Held: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netwatch_enricher_held_messages",
			Help: "PACKETS messages not yet acked because open or unpublished flows hold their packets."}),
		PubBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_flow_batches_published_total",
			Help: "FlowBatch messages acknowledged by the FLOWS stream."}),
		PubErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_publish_errors_total",
			Help: "Failed FlowBatch publish attempts (each is retried until acknowledged)."}),
		Skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_packets_skipped_total",
			Help: "Packet summaries without usable addresses."}),
		Evicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_flows_evicted_total",
			Help: "Flows ended early (END_IDLE) because -flow.max-flows flows were open."}),
		Backwards: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_packets_backwards_total",
			Help: "Packet summaries older than their flow table's clock (time went backwards); accounted with their own time."}),
		Seconds: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_counters_seconds_total",
			Help: "TrafficCounters messages (one sensor second each) emitted to COUNTERS."}),
		Late: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_counters_late_packets_total",
			Help: "Packet summaries that arrived after their second's counters were emitted (in flows, not in COUNTERS)."}),
		Replayed: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_packets_replayed_total",
			Help: "Redelivered packet summaries skipped because a flow checkpoint says they are in published records."}),
		Rejoins: prometheus.NewCounter(prometheus.CounterOpts{Name: "netwatch_enricher_group_rejoins_total",
			Help: "Times this member joined its consumer group again because its consumer had been deleted from outside."}),
	}
	if reg != nil {
		reg.MustRegister(m.Packets, m.Batches, m.Flows, m.ActiveFlows, m.Held, m.PubBatches, m.PubErrors, m.Skipped,
			m.Evicted, m.Backwards, m.Seconds, m.Late, m.Replayed, m.Rejoins)
	}
	return m
}

// held is one PACKETS message kept unacked while flows hold its packets.
// msg and done are guarded by Stage.mu.
type held struct {
	s    *Stage
	b    *bucketState
	seq  uint64 // stream sequence
	n    atomic.Int32
	msg  jetstream.Msg // nil while a message read from the stream (Stage.sync) waits for its delivery
	done bool          // every record and second holding its packets is published
}

func (h *held) Retain() { h.n.Add(1) }

func (h *held) release() {
	if h.n.Add(-1) != 0 {
		return
	}
	s := h.s
	s.mu.Lock()
	h.done = true
	s.advance(h.b)
	n := len(s.held)
	s.mu.Unlock()
	s.m.Held.Set(float64(n))
}

// bucketState is one PACKETS subject (one (sensor, bucket)): its messages
// in stream order from the oldest not yet acked.
type bucketState struct {
	subj    string
	synced  bool              // the bucket's older messages were read from the stream (group mode)
	last    uint64            // stream sequence of the last message processed
	queue   []*held           // processed and not acked, in stream order (guarded by Stage.mu)
	resume  []*flow.FlowState // checkpoints to give the bucket's next table
	dropped bool              // the partition moved to another member: ack nothing more
	suspect bool              // group mode: a delivery was missed since its last message (see Stage.handle)
	boot    string            // agent boot of the last batch processed
	aseq    uint64            // its agent batch sequence (PacketBatch.seq)
	part    string            // group mode: the partition token of its subjects in the group's stream
	tkey    tableKey          // its flow table in Stage.tables
}

// advance acks the bucket's messages that are done. In group mode acks are
// cumulative per bucket: a message is acked only when it and every earlier
// message of its bucket are done, so after a crash the bucket's unacked
// messages are a suffix of its stream order (see README "Crash and
// membership changes"). With the durable a done message is acked at once.
// Called with s.mu held.
func (s *Stage) advance(b *bucketState) {
	if b.dropped {
		return
	}
	ordered := s.cfg.Group.Name != ""
	keep := b.queue[:0]
	blocked := false
	for _, h := range b.queue {
		if blocked || !h.done || h.msg == nil {
			keep = append(keep, h)
			blocked = blocked || ordered
			continue
		}
		if err := h.msg.Ack(); err != nil {
			s.log.Warn("ack packets", "stream_seq", h.seq, "err", err)
		}
		delete(s.held, h.seq)
	}
	clear(b.queue[len(keep):])
	b.queue = keep
}

type tableKey struct {
	sensor string
	bucket uint32
}

type table struct {
	t        *flow.Table
	wallMark time.Time // wall time the clock last followed (a packet or a tick)
	wmark    time.Time // wall time of its last watermark batch (zero: none, or a final one)
	from     string    // what last moved the clock past the packets: "wall" or "watermark" (diagnostics)
	warned   bool      // a batch behind the clock was logged
}

// sensorState is the state shared by a sensor's tables.
type sensorState struct {
	names    *names.Cache
	counters *counters.Sensor          // nil until a packet arrives after the start or an end of input
	wallMark time.Time                 // wall time of the sensor's last packet
	since    time.Time                 // wall time counters was made
	buckets  [schema.Buckets]time.Time // wall time of each bucket's last batch with packets
	wmark    time.Time                 // wall time of the sensor's last watermark batch (zero: none yet)
}

// watermarked says whether a clock whose last watermark arrived at wmark
// follows its watermarks at now (Config.WatermarkSilence).
func (s *Stage) watermarked(wmark, now time.Time) bool {
	return !wmark.IsZero() && now.Sub(wmark) < s.cfg.WatermarkSilence
}

// Stage is the enricher's consumer loop. Create it with New and call Run once.
type Stage struct {
	js      jetstream.JetStream
	cfg     Config
	log     *slog.Logger
	m       *Metrics
	tables  map[tableKey]*table
	sensors map[string]*sensorState
	limit   flow.Limit
	pub     *publish.Publisher

	mu       sync.Mutex
	held     map[uint64]*held
	buckets  map[string]*bucketState // by PACKETS subject; used by the Run goroutine only
	wq       jetstream.Stream        // group mode: the group's work-queue stream
	kv       jetstream.KeyValue      // group mode: flow checkpoints
	epoch    int64                   // group mode: creation time of the work-queue stream (Unix ns)
	mine     map[string]bool         // group mode: partitions assigned to this member (nil: not known yet)
	needSync bool                    // group mode: run syncAll before the next message of an unseen bucket
	lastCons uint64                  // group mode: consumer sequence of the last delivery

	flowsBy [7]prometheus.Counter // Metrics.Flows by pb.EndReason
	okBatch prometheus.Counter    // Metrics.Batches{result="ok"}
	eof     bool                  // an end-of-input was handled: flush all batches once intake pauses

	ready atomic.Bool
}

// New returns a stage reading schema.ConsumerEnricher on PACKETS.
func New(js jetstream.JetStream, cfg Config, log *slog.Logger, m *Metrics) *Stage {
	if cfg.PullBatch <= 0 {
		cfg.PullBatch = 500
	}
	if cfg.WatermarkSilence <= 0 {
		cfg.WatermarkSilence = 30 * time.Second
	}
	if cfg.WallTick <= 0 {
		cfg.WallTick = 5 * time.Second
	}
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 30 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.Instance == "" {
		cfg.Instance = "enricher"
	}
	s := &Stage{js: js, cfg: cfg, log: log, m: m, tables: map[tableKey]*table{}, sensors: map[string]*sensorState{},
		held: map[uint64]*held{}, buckets: map[string]*bucketState{}, limit: flow.Limit{Max: cfg.MaxFlows}}
	for r := range s.flowsBy {
		s.flowsBy[r] = m.Flows.WithLabelValues(reasonLabel(pb.EndReason(r)))
	}
	s.okBatch = m.Batches.WithLabelValues("ok")
	return s
}

// Ready reports nil once the stage consumes.
func (s *Stage) Ready() error {
	if !s.ready.Load() {
		return errors.New("enricher not consuming yet")
	}
	return nil
}

// Run consumes until ctx ends, then shuts down in data-flow order: stop
// intake, flush (ShutdownFlush) or keep open flows, wait for publish acks.
func (s *Stage) Run(ctx context.Context) error {
	var cons jetstream.Consumer
	if s.cfg.Group.Name == "" {
		var err error
		if cons, err = s.js.Consumer(ctx, schema.StreamPackets, schema.ConsumerEnricher); err != nil {
			return fmt.Errorf("bind consumer %s: %w", schema.ConsumerEnricher, err)
		}
	} else {
		if err := JoinGroup(ctx, s.js, s.cfg.Group); err != nil {
			return err
		}
		if err := s.openCheckpoints(ctx); err != nil {
			return err
		}
	}
	// Publishing outlives ctx by up to DrainTimeout so the last records get out.
	pctx, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	s.pub = publish.New(pctx, s.js, s.cfg.Publish, s.log.With("component", "publish"),
		publish.Metrics{Batches: s.m.PubBatches, Errors: s.m.PubErrors}, func(refs []flow.Ref) { s.released(pctx, refs) })
	msgs := make(chan jetstream.Msg, s.cfg.PullBatch)
	stopIntake, err := s.intake(ctx, cons, msgs)
	if err != nil {
		return err
	}
	s.ready.Store(true)
	wall := time.NewTicker(s.cfg.WallTick)
	defer wall.Stop()
	linger := max(s.cfg.Publish.Linger/2, 10*time.Millisecond)
	flushT := time.NewTicker(linger)
	defer flushT.Stop()
	keep := time.NewTicker(s.cfg.KeepAlive)
	defer keep.Stop()
	var parts <-chan time.Time
	if s.wq != nil {
		pt := time.NewTicker(time.Second)
		defer pt.Stop()
		parts = pt.C
		s.needSync = true
		s.checkPartitions(ctx)
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case m := <-msgs:
			s.handle(m)
			if s.eof && len(msgs) == 0 {
				// The end-of-input markers of a sensor come together (one
				// per bucket): flush the pending batches once after them,
				// not once per marker.
				s.pub.FlushAll()
				s.eof = false
			}
		case now := <-wall.C:
			s.tick(now)
		case now := <-flushT.C:
			s.pub.FlushDue(now)
		case <-keep.C:
			s.keepAlive()
		case <-parts:
			s.checkPartitions(ctx)
		}
	}
	// Stop intake; unprocessed messages go back for redelivery.
	s.ready.Store(false)
	stopIntake()
	for done := false; !done; {
		select {
		case m := <-msgs:
			_ = m.Nak()
		default:
			done = true
		}
	}
	if s.cfg.ShutdownFlush {
		for k, t := range s.tables {
			t.t.Flush(pb.EndReason_END_SHUTDOWN)
			delete(s.tables, k)
		}
		for _, ss := range s.sensors {
			if ss.counters != nil {
				ss.counters.Flush()
			}
		}
	}
	s.pub.FlushAll()
	closed := make(chan struct{})
	go func() { s.pub.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(s.cfg.DrainTimeout):
		s.log.Warn("shutdown: flow batches not acknowledged in time; their packets will be redelivered")
		pcancel()
		<-closed
	}
	// Messages still held (open flows without -shutdown.flush, or
	// unacknowledged publishes) go back at once instead of after AckWait,
	// so the next instance rebuilds their flows.
	s.mu.Lock()
	n := len(s.held)
	for _, h := range s.held {
		if h.msg != nil {
			_ = h.msg.Nak()
		}
	}
	s.mu.Unlock()
	s.m.ActiveFlows.Set(0)
	s.log.Info("enricher stopped", "returned_messages", n, "open_flows", s.activeFlows())
	return nil
}

// intake delivers PACKETS messages to msgs, from the durable cons or, with
// Config.Group, from the partitioned consumer group, until ctx ends. The
// returned stop waits until no more messages come; messages delivered after
// ctx ended are nak'ed.
func (s *Stage) intake(ctx context.Context, cons jetstream.Consumer, msgs chan<- jetstream.Msg) (stop func(), err error) {
	deliver := func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-ctx.Done():
			_ = m.Nak()
		}
	}
	if g := s.cfg.Group; g.Name != "" {
		join := func() (pcgroups.ConsumerGroupConsumeContext, error) {
			cc, err := pcgroups.ElasticConsume(ctx, s.js, schema.StreamPackets, g.Name, g.Member, deliver,
				jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, AckWait: g.AckWait, MaxDeliver: -1,
					MaxAckPending: 1_000_000})
			if err != nil {
				return nil, fmt.Errorf("consume group %s as %s: %w", g.Name, g.Member, err)
			}
			return cc, nil
		}
		leave := func(cc pcgroups.ConsumerGroupConsumeContext) {
			cc.Stop()
			select {
			case err := <-cc.Done():
				if err != nil {
					s.log.Warn("consumer group stopped", "err", err)
				}
			case <-time.After(10 * time.Second):
				s.log.Warn("consumer group did not stop in 10 s")
			}
		}
		cc, err := join()
		if err != nil {
			return nil, err
		}
		var mu sync.Mutex
		wctx, wcancel := context.WithCancel(ctx)
		watchDone := make(chan struct{})
		go func() {
			defer close(watchDone)
			s.watchMemberConsumer(wctx, func() {
				mu.Lock()
				defer mu.Unlock()
				leave(cc)
				if ncc, err := join(); err != nil {
					s.log.Error("rejoin consumer group", "err", err)
				} else {
					cc = ncc
				}
			})
		}()
		return func() {
			wcancel()
			<-watchDone
			mu.Lock()
			defer mu.Unlock()
			leave(cc)
		}, nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.PullBatch), jetstream.PullExpiry(schema.PullExpiry))
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", schema.ConsumerEnricher, err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			m, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					return
				}
				continue
			}
			deliver(m)
		}
	}()
	// Drain (not Stop) hands over what the client already pulled, so those
	// messages are nak'ed now instead of waiting out AckWait on the server.
	return func() { it.Drain(); <-readDone }, nil
}

// watchMemberConsumer checks, every 5 s, that this member's
// consumer on the group's work-queue stream exists while the member is in
// the group's membership, and calls rejoin when it has been missing at two
// checks in a row. pcgroups re-creates a member's consumer only after a
// membership change: when the consumer is deleted from outside (an
// operator, or a client with the enricher's credentials), the member
// stopped consuming without a word (QA of issue 8: 395 messages waited
// until a membership change). A membership change deletes and re-creates
// consumers within a second or two, which one check may see but not two.
func (s *Stage) watchMemberConsumer(ctx context.Context, rejoin func()) {
	g := s.cfg.Group
	const every = 5 * time.Second // pcgroups alone retries only every AckWait × its idle factor
	wq := schema.StreamPackets + "-" + g.Name
	missing := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.js.Consumer(cctx, wq, g.Member)
		gone := errors.Is(err, jetstream.ErrConsumerNotFound)
		if gone {
			c, cerr := pcgroups.GetElasticConsumerGroupConfig(cctx, s.js, schema.StreamPackets, g.Name)
			gone = cerr == nil && c.IsInMembership(g.Member)
		}
		cancel()
		if !gone {
			missing = 0
			continue
		}
		if missing++; missing < 2 {
			continue
		}
		s.log.Warn("this member's consumer is gone from the group's stream: joining again", "stream", wq, "member", g.Member)
		s.m.Rejoins.Inc()
		rejoin()
		missing = 0
	}
}

func (s *Stage) activeFlows() int {
	n := 0
	for _, t := range s.tables {
		n += t.t.Len()
	}
	return n
}

func (s *Stage) handle(m jetstream.Msg) {
	meta, err := m.Metadata()
	if err != nil {
		s.m.Batches.WithLabelValues("undecodable").Inc()
		_ = m.Term()
		return
	}
	seq, subj := meta.Sequence.Stream, m.Subject()
	bs := s.buckets[subj]
	s.mu.Lock()
	if h, ok := s.held[seq]; ok {
		// Redelivered while we still hold it (its AckWait passed, or it was
		// read from the stream before its delivery): keep the newest
		// handle, its packets are already in the tables.
		h.msg = m
		s.advance(h.b)
		n := len(s.held)
		s.mu.Unlock()
		s.m.Held.Set(float64(n)) // advance may have acked and forgotten it (a replayed message)
		s.m.Batches.WithLabelValues("redelivered").Inc()
		return
	}
	s.mu.Unlock()
	if bs != nil && bs.synced && seq <= bs.last {
		// Processed and acked before (the ack was lost, e.g. with a
		// re-created group consumer): ack it again.
		_ = m.Ack()
		s.m.Batches.WithLabelValues("redelivered").Inc()
		return
	}
	if s.wq != nil && (bs == nil || !bs.synced) && s.needSync {
		s.syncAll(seq)
		bs = s.buckets[subj]
	}
	if bs == nil {
		bs = &bucketState{subj: subj}
		s.buckets[subj] = bs
	}
	if s.wq != nil && !bs.synced {
		s.sync(bs, seq)
	}
	if s.wq != nil {
		// A delivery lost on its way (a consumer leader moved while it was
		// in flight) comes back only after AckWait, behind later messages
		// of its bucket: a gap in the consumer sequence marks every bucket
		// suspect, and a suspect bucket reads its unprocessed older messages
		// from the stream before this one (acked when their redelivery comes).
		if cons := meta.Sequence.Consumer; s.lastCons != 0 && cons != s.lastCons+1 {
			for _, b := range s.buckets {
				b.suspect = b.synced
			}
		}
		s.lastCons = meta.Sequence.Consumer
		if bs.suspect {
			bs.suspect = false
			s.catchUp(bs, seq)
		}
	}
	if s.mine != nil && bs.part != "" && !s.mine[bs.part] {
		// Delivered by our consumer before it learnt that the partition
		// moved: leave it to the new owner.
		s.drop(bs)
		return
	}
	s.process(bs, seq, m.Data(), m)
}

// sync prepares a bucket of the consumer group the first time this
// instance gets one of its messages (at start or when its partition moves
// here): it loads the bucket's checkpoints and processes the bucket's
// messages older than seq from the work-queue stream (they are not acked:
// held by a crashed or former owner, they are delivered here only after
// their AckWait, out of stream order).
func (s *Stage) sync(bs *bucketState, seq uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s.startBucket(ctx, bs)
	filter := "*." + bs.subj // the group's stream prefixes the partition
	for from := uint64(1); ; {
		raw, err := s.wq.GetMsg(ctx, from, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return
		}
		if err != nil {
			s.log.Warn("read older packet batches: flows open at a crash may be counted twice", "subject", bs.subj, "err", err)
			return
		}
		if p, _, ok := strings.Cut(raw.Subject, "."); ok {
			bs.part = p
		}
		if raw.Sequence >= seq {
			return
		}
		s.process(bs, raw.Sequence, raw.Data, nil)
		from = raw.Sequence + 1
	}
}

// catchUp processes, in stream order, the messages of bucket bs in the
// work-queue stream after the last one processed and before seq that this
// instance has not seen: deliveries it missed. Group mode only.
func (s *Stage) catchUp(bs *bucketState, seq uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	filter := "*." + bs.subj
	n := 0
	for from := bs.last + 1; from < seq; {
		raw, err := s.wq.GetMsg(ctx, from, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			s.log.Warn("read missed packet batches: their flows may be split", "subject", bs.subj, "err", err)
			break
		}
		if raw.Sequence >= seq {
			break
		}
		s.mu.Lock()
		_, seen := s.held[raw.Sequence]
		s.mu.Unlock()
		if !seen {
			s.process(bs, raw.Sequence, raw.Data, nil)
			n++
		}
		from = raw.Sequence + 1
	}
	if n > 0 {
		s.m.Batches.WithLabelValues("caught_up").Add(float64(n))
		s.log.Info("processed missed packet batches from the stream before a later one", "subject", bs.subj, "messages", n)
	}
}

// startBucket marks bs synced and loads its checkpoints.
func (s *Stage) startBucket(ctx context.Context, bs *bucketState) {
	bs.synced = true
	states, err := s.loadCheckpoints(ctx, bs.subj)
	if err != nil {
		s.log.Warn("load flow checkpoints: flows open at a crash may be counted twice", "subject", bs.subj, "err", err)
	}
	bs.resume = states
}

// syncAll processes, in stream order, the messages older than cur of all
// of this member's partitions whose buckets it has not seen yet: at start
// and after gaining partitions, before the first new message, so that a
// replay keeps the stream order across buckets too (COUNTERS seconds and
// names from DNS answers are shared by a sensor's buckets). Those messages
// are unacked: held by a crashed instance or the partitions' former owner,
// they would be delivered here only after their AckWait, behind new ones.
func (s *Stage) syncAll(cur uint64) {
	s.needSync = false
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if s.mine == nil {
		s.checkPartitions(ctx)
	}
	if s.mine == nil {
		// Membership unknown: each bucket reads its own older messages
		// when first seen (Stage.sync); retried at the next unseen bucket.
		s.needSync = true
		return
	}
	var filters []string
	for p := range s.mine {
		filters = append(filters, p+".>")
	}
	type head struct {
		filter string
		raw    *jetstream.RawStreamMsg
	}
	next := func(filter string, from uint64) *jetstream.RawStreamMsg {
		raw, err := s.wq.GetMsg(ctx, from, jetstream.WithGetMsgSubject(filter))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				s.log.Warn("read unacked packet batches: flows open at a crash may be counted twice", "filter", filter, "err", err)
			}
			return nil
		}
		if raw.Sequence >= cur {
			return nil
		}
		return raw
	}
	var heads []head
	for _, f := range filters {
		if r := next(f, 1); r != nil {
			heads = append(heads, head{f, r})
		}
	}
	fresh := map[*bucketState]bool{}
	n := 0
	for len(heads) > 0 {
		i := 0
		for j := range heads {
			if heads[j].raw.Sequence < heads[i].raw.Sequence {
				i = j
			}
		}
		r := heads[i].raw
		part, subj, _ := strings.Cut(r.Subject, ".")
		bs := s.buckets[subj]
		if bs == nil {
			bs = &bucketState{subj: subj, part: part}
			s.buckets[subj] = bs
			s.startBucket(ctx, bs)
			fresh[bs] = true
		}
		if fresh[bs] {
			s.process(bs, r.Sequence, r.Data, nil)
			n++
		}
		if heads[i].raw = next(heads[i].filter, r.Sequence+1); heads[i].raw == nil {
			heads = append(heads[:i], heads[i+1:]...)
		}
	}
	if n > 0 {
		s.log.Info("replayed unacked packet batches", "messages", n, "buckets", len(fresh))
	}
}

// process accounts one PACKETS message of bucket bs; m is nil for a
// message read from the stream (acked when its delivery comes).
func (s *Stage) process(bs *bucketState, seq uint64, data []byte, m jetstream.Msg) {
	if seq > bs.last {
		bs.last = seq
	}
	h := &held{s: s, b: bs, seq: seq, msg: m}
	h.n.Store(1) // held while this message is processed
	s.mu.Lock()
	s.held[seq] = h
	bs.queue = append(bs.queue, h)
	nh := len(s.held)
	s.mu.Unlock()
	s.m.Held.Set(float64(nh))
	var b pb.PacketBatch
	if err := proto.Unmarshal(data, &b); err != nil {
		s.m.Batches.WithLabelValues("undecodable").Inc()
		s.log.Warn("undecodable packet batch", "subject", bs.subj, "stream_seq", seq, "err", err)
		h.release() // acked (in its turn): nothing to account
		return
	}
	s.okBatch.Inc()
	if b.Boot == bs.boot && b.Seq < bs.aseq {
		// the agent keeps a bucket's batches in order: this one was
		// stored or delivered behind a later one
		s.m.Batches.WithLabelValues("out_of_order").Inc()
		s.log.Warn("packet batch behind a later one of its bucket", "subject", bs.subj, "stream_seq", seq,
			"batch_seq", b.Seq, "after_batch_seq", bs.aseq, "replay", m == nil, "watermark", b.WatermarkNs != 0)
	} else {
		bs.boot, bs.aseq = b.Boot, b.Seq
	}
	sensor := schema.SensorFromSubject(bs.subj) // authoritative: sensors may publish only under their own subjects
	if sensor == "" {
		sensor = b.Sensor
	}

	ss := s.sensors[sensor]
	if ss == nil {
		ss = &sensorState{}
		if !s.cfg.NoNames {
			ss.names = names.New(s.cfg.Names)
		}
		s.sensors[sensor] = ss
	}
	now := time.Now()
	k := tableKey{sensor, b.Bucket}
	bs.tkey = k
	t := s.tables[k]
	if t == nil {
		cfg := s.cfg.Flow
		cfg.Sensor, cfg.Names, cfg.Limit = sensor, ss.names, &s.limit
		cfg.Checkpoints, cfg.Epoch = s.kv != nil, s.epoch
		prefix := ""
		if s.kv != nil {
			prefix = s.keyPrefix(bs.subj)
		}
		// a new bucket of a sensor that sends watermarks waits for them
		// too: its first batch may be followed by one held up by a
		// failover, which the wall clock would cut off from its flow
		t = &table{t: flow.NewTable(cfg, func(r flow.Record) { s.emit(r, prefix) }), wmark: ss.wmark}
		t.t.Resume(bs.resume)
		bs.resume = nil
		s.tables[k] = t
	}
	t.wallMark = now
	if len(b.Packets) > 0 {
		ss.wallMark = now
		if ss.counters == nil {
			ss.counters = counters.NewSensor(sensor, s.cfg.Counters, func(c *pb.TrafficCounters, refs []flow.Ref) {
				s.emitCounters(c, refs)
			})
			ss.since = now
		}
		if b.Bucket < schema.Buckets {
			ss.buckets[b.Bucket] = now
		}
	}
	skipped, back, evicted, replayed, late := t.t.Skipped, t.t.Backwards, t.t.Evicted, t.t.Replayed, uint64(0)
	if ss.counters != nil {
		late = ss.counters.Late
	}
	if len(b.Packets) > 0 && t.t.Clock()-b.Packets[0].TsNs > int64(time.Second) && !t.warned {
		// a batch more than a second behind its bucket's clock: its
		// packets may end up in flows of their own (logged once per bucket)
		t.warned = true
		s.log.Warn("packet batch behind its bucket's clock", "subject", bs.subj, "stream_seq", seq, "batch_seq", b.Seq,
			"behind", time.Duration(t.t.Clock()-b.Packets[0].TsNs), "clock_from", t.from, "watermark_age", time.Since(t.wmark),
			"replay", m == nil)
	}
	for i, p := range b.Packets {
		t.t.AddAt(p, h, flow.Pos{Seq: seq, Idx: uint32(i)})
		ss.counters.Add(p, b.Bucket, h)
	}
	s.m.Packets.Add(float64(len(b.Packets)))
	s.m.Skipped.Add(float64(t.t.Skipped - skipped))
	s.m.Backwards.Add(float64(t.t.Backwards - back))
	s.m.Evicted.Add(float64(t.t.Evicted - evicted))
	s.m.Replayed.Add(float64(t.t.Replayed - replayed))
	if ss.counters != nil {
		s.m.Late.Add(float64(ss.counters.Late - late))
	}
	if b.WatermarkNs > 0 {
		// Every packet of this bucket before the watermark is in this or
		// an earlier message (the agent keeps a bucket's batches in
		// order; a data batch carries the last watermark sent, so its
		// bucket is in watermark mode from its first batch): flows idle
		// at it can end; deterministic on a replay.
		ss.wmark, t.wmark = now, now
		if b.FinalWatermark {
			// the agent stopped: the wall clock takes over at once
			ss.wmark, t.wmark = time.Time{}, time.Time{}
		}
		if b.WatermarkNs > t.t.Clock() {
			t.from = "watermark"
		}
		t.t.Advance(b.WatermarkNs)
		if ss.counters != nil && b.Bucket < schema.Buckets {
			ss.counters.Advance(b.Bucket, b.WatermarkNs)
		}
		if len(b.Packets) == 0 {
			s.m.Batches.WithLabelValues("watermark").Inc()
		}
	}
	if b.EndOfInput {
		t.t.Flush(pb.EndReason_END_EOF)
		delete(s.tables, k)
		if ss.counters != nil {
			// The agent sends the end-of-input markers after all of the
			// sensor's packets: the first one closes its counters.
			ss.counters.Flush()
			ss.counters = nil
		}
		s.eof = true
	}
	s.m.ActiveFlows.Set(float64(s.limit.Open))
	h.release()
}

// emitCounters publishes one second of a sensor's counters to COUNTERS;
// refs are released when the stream acknowledges it.
func (s *Stage) emitCounters(c *pb.TrafficCounters, refs []flow.Ref) {
	c.SentNs = time.Now().UnixNano()
	data, err := proto.Marshal(c)
	if err != nil { // cannot happen for a well-formed message
		s.log.Error("marshal traffic counters", "sensor", c.Sensor, "err", err)
		for _, r := range refs {
			r.(*held).release()
		}
		return
	}
	s.m.Seconds.Inc()
	s.pub.Send(schema.CountersSubject(c.Sensor), counters.MsgID(c.Sensor, s.cfg.Instance, c.SecondNs), data, refs)
}

// emit hands a record to the publisher; prefix is the key prefix of its
// bucket's checkpoints (group mode).
func (s *Stage) emit(r flow.Record, prefix string) {
	if cp := r.Checkpoint; cp != nil && s.kv != nil {
		// The checkpoint is stored once the record is published, and the
		// record's messages are released after that (Stage.released).
		r.Refs = []flow.Ref{&cpRef{key: prefix + cp.Key, data: cp.Data, refs: r.Refs}}
	}
	if r := int(r.Flow.EndReason); r >= 0 && r < len(s.flowsBy) {
		s.flowsBy[r].Inc()
	} else {
		s.m.Flows.WithLabelValues("unknown").Inc()
	}
	s.pub.Add(r)
}

// tick lets the clock of every bucket that got no packets for a WallTick
// follow the wall clock, so live flows expire when traffic stops.
func (s *Stage) tick(now time.Time) {
	for _, t := range s.tables {
		if s.watermarked(t.wmark, now) {
			continue // its watermarks move the clock
		}
		if d := now.Sub(t.wallMark); d >= s.cfg.WallTick && t.t.Clock() != 0 {
			t.from = "wall"
			t.t.Advance(t.t.Clock() + int64(d))
			t.wallMark = now
		}
	}
	for _, ss := range s.sensors {
		c := ss.counters
		if c == nil || c.Open() == 0 || s.watermarked(ss.wmark, now) {
			continue
		}
		if now.Sub(ss.wallMark) >= s.cfg.WallTick {
			c.Flush() // traffic stopped: publish the last seconds
			continue
		}
		if now.Sub(ss.since) < s.cfg.WallTick {
			continue
		}
		// Buckets without a batch for a tick (the agent sends a bucket's
		// batch within -batch.flush, 200 ms) have nothing older than a tick
		// behind the newest packet: let them stop holding the watermark.
		for b, w := range ss.buckets {
			if now.Sub(w) >= s.cfg.WallTick {
				c.Advance(uint32(b), c.Clock()-int64(s.cfg.WallTick))
			}
		}
	}
	s.pub.FlushDue(now)
	s.m.ActiveFlows.Set(float64(s.activeFlows()))
}

func (s *Stage) keepAlive() {
	s.mu.Lock()
	hs := make([]jetstream.Msg, 0, len(s.held))
	for _, h := range s.held {
		if h.msg != nil {
			hs = append(hs, h.msg)
		}
	}
	s.mu.Unlock()
	for _, m := range hs {
		_ = m.InProgress()
	}
}

// checkPartitions reads the group's membership and drops the buckets of
// partitions that moved to another member.
func (s *Stage) checkPartitions(ctx context.Context) {
	g := s.cfg.Group
	c, err := pcgroups.GetElasticConsumerGroupConfig(ctx, s.js, schema.StreamPackets, g.Name)
	if err != nil {
		s.log.Warn("read consumer group membership", "group", g.Name, "err", err)
		return
	}
	mine := map[string]bool{}
	for _, f := range pcgroups.ElasticGetPartitionFilters(*c, g.Member) {
		if p, _, ok := strings.Cut(f, "."); ok {
			mine[p] = true
		}
	}
	for p := range mine {
		if !s.mine[p] {
			s.needSync = true // gained a partition: its unacked messages come first
		}
	}
	s.mine = mine
	for _, bs := range s.buckets {
		if bs.part != "" && !mine[bs.part] {
			s.drop(bs)
		}
	}
}

// drop forgets a bucket whose partition moved to another member: its open
// flows are discarded without publishing and its held messages are neither
// acked nor returned, so the new owner replays them from the bucket's
// oldest unacked message with the checkpoints (records already handed to
// the publisher are still published: the new owner rebuilds them with the
// same ids and contents).
func (s *Stage) drop(bs *bucketState) {
	s.mu.Lock()
	bs.dropped = true
	for _, h := range bs.queue {
		delete(s.held, h.seq)
	}
	n := len(bs.queue)
	bs.queue = nil
	nh := len(s.held)
	s.mu.Unlock()
	s.m.Held.Set(float64(nh))
	delete(s.buckets, bs.subj)
	open := 0
	if t := s.tables[bs.tkey]; t != nil {
		open = t.t.Len()
		s.limit.Open -= open
		delete(s.tables, bs.tkey)
	}
	s.log.Info("partition moved to another member: bucket dropped", "subject", bs.subj, "partition", bs.part,
		"open_flows", open, "held_messages", n)
}

func reasonLabel(r pb.EndReason) string {
	if n := schema.EndReasonName(r); n != "" {
		return n
	}
	return "unknown"
}
