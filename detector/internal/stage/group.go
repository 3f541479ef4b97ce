package stage

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// Group selects consumption of FLOWS through two elastic partitioned
// consumer groups (github.com/synadia-io/orbit.go/pcgroups) instead of the
// single durable schema.ConsumerDetector, so that several detector
// instances share the work without splitting a rule's window:
//
//   - Name (the originator group) partitions FLOWS on the <sensor> and
//     <orig_bucket> tokens: every flow of one originator reaches one
//     member, whose engine runs the per-originator rules (portscan,
//     hostsweep, bruteforce, dns_tunnel, dga, beaconing, amplification of
//     flows whose victim is the originator), the flow model and the host
//     model (rules.ScopeOriginator);
//   - schema.DetectorTargetGroup(Name) partitions FLOWS on <sensor> and
//     <resp_bucket>: every flow to one target reaches one member, whose
//     second engine runs the per-target rules (syn_flood, udp_flood,
//     icmp_flood, amplification of flows whose victim is the responder;
//     rules.ScopeTarget).
//
// Each instance joins both groups as Member. The live path (PACKETS) is
// not partitioned by subject (a PACKETS bucket hashes the 5-tuple, not an
// address): in group mode every member reads all of PACKETS through an
// ordered consumer and keeps the packets whose originator (source) or
// target (destination) falls in the partitions it holds, computed with
// schema.GroupPartition from the groups' membership; the ARP rule runs on
// the member holding partition 0 of the originator group.
type Group struct {
	Name       string        // originator group on FLOWS ("" disables: the shared durable, one instance)
	Member     string        // this instance's member name in both groups
	Partitions uint          // partitions (max members) of each group when this instance creates it
	AckWait    time.Duration // AckWait of the member consumers, also the pinned TTL (hot standby failover)
	Join       bool          // add Member to both groups' membership at start
	Leave      bool          // remove Member from both memberships when Run ends, so the others take its partitions at once
}

// groupFilters are the partitioning filters of the originator and the
// target group.
func groupFilters() [2]pcgroups.PartitioningFilter {
	return [2]pcgroups.PartitioningFilter{
		{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: schema.DetectorOrigWildcards},
		{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: schema.DetectorTargetWildcards},
	}
}

// groupNames are the originator and target group names of g.
func (g Group) names() [2]string { return [2]string{g.Name, schema.DetectorTargetGroup(g.Name)} }

// groupState is the stage's group mode: the target engine and the
// partitions this member holds in each group.
type groupState struct {
	g         Group
	tengine   *rules.Engine // per-target rules
	mu        sync.Mutex    // tengine
	dec       decoder       // FLOWS decoding for the target group's handler
	nextRules atomic.Pointer[rules.Config]
	// own[i][p]: partition p of group i (0 originator, 1 target) is held
	// here, as the membership last read says (nil: not read yet).
	own [2]atomic.Pointer[[]bool]
}

func newGroupState(g Group, cfg rules.Config, nm rules.NameModel, nmName string) *groupState {
	if g.Partitions == 0 {
		g.Partitions = schema.DetectorGroupPartitions
	}
	if g.AckWait <= 0 {
		g.AckWait = time.Minute
	}
	te := rules.New(cfg)
	te.SetScope(rules.ScopeTarget)
	if nm != nil {
		te.SetNameModel(nm, nmName)
	}
	return &groupState{g: g, tengine: te}
}

// holds reports whether partition group i holds the (sensor, address
// bucket of a) pair here.
func (gs *groupState) holds(i int, sensor string, a []byte) bool {
	own := gs.own[i].Load()
	if own == nil || (len(a) != 4 && len(a) != 16) {
		return false
	}
	p := schema.GroupPartition(uint(len(*own)), sensor, strconv.FormatUint(uint64(schema.AddrBucket(a)), 10))
	return (*own)[p]
}

// arpOwner: the ARP rule (not partitioned) runs on the member holding
// partition 0 of the originator group.
func (gs *groupState) arpOwner() bool {
	own := gs.own[0].Load()
	return own != nil && len(*own) > 0 && (*own)[0]
}

// JoinGroups creates the two detector consumer groups of g on FLOWS if
// they do not exist (an existing group must have the same partitions and
// filter; creating needs stream create rights, which netwatchctl provision
// has and the detector user has not) and, with g.Join, adds g.Member to
// both memberships. Each group keeps a work-queue stream "FLOWS-<name>"
// sourced from FLOWS.
func JoinGroups(ctx context.Context, js jetstream.JetStream, g Group) error {
	if g.Partitions == 0 {
		g.Partitions = schema.DetectorGroupPartitions
	}
	filters := groupFilters()
	for i, name := range g.names() {
		f := []pcgroups.PartitioningFilter{filters[i]}
		if err := groupExists(ctx, js, name, g.Partitions, f); err != nil {
			if !errors.Is(err, errNoGroup) {
				return err
			}
			if _, err := pcgroups.CreateElastic(ctx, js, schema.StreamFlows, name, g.Partitions, f, 0, 0); err != nil {
				return fmt.Errorf("create consumer group %s: %w", name, err)
			}
		}
		if g.Join {
			if _, err := pcgroups.AddMembers(ctx, js, schema.StreamFlows, name, []string{g.Member}); err != nil {
				return fmt.Errorf("join consumer group %s as %s: %w", name, g.Member, err)
			}
		}
	}
	return nil
}

// errNoGroup: a group's configuration or its work-queue stream is missing.
var errNoGroup = errors.New("consumer group not created")

// groupExists returns nil when group name exists on FLOWS with these
// partitions and filters and its work-queue stream exists, errNoGroup
// when either is missing, and an error when it exists with another
// configuration (pcgroups cannot change it).
func groupExists(ctx context.Context, js jetstream.JetStream, name string, partitions uint, filters []pcgroups.PartitioningFilter) error {
	// pcgroups' configuration bucket and key first: GetElasticConsumerGroupConfig
	// does not wrap "key not found"
	kv, err := js.KeyValue(ctx, "elastic-consumer-groups")
	if err == nil {
		_, err = kv.Get(ctx, schema.StreamFlows+"."+name)
	}
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return errNoGroup
	}
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", name, err)
	}
	c, err := pcgroups.GetElasticConsumerGroupConfig(ctx, js, schema.StreamFlows, name)
	if err != nil {
		return fmt.Errorf("consumer group %s: %w", name, err)
	}
	if c.MaxMembers != partitions || !reflect.DeepEqual(c.PartitioningFilters, filters) {
		return fmt.Errorf("consumer group %s exists with %d partitions and filters %v, want %d and %v: delete it first (netwatchctl group -stream FLOWS)",
			name, c.MaxMembers, c.PartitioningFilters, partitions, filters)
	}
	if _, err := js.Stream(ctx, schema.StreamFlows+"-"+name); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return errNoGroup
		}
		return fmt.Errorf("consumer group %s: %w", name, err)
	}
	return nil
}

// runGroup is Run in group mode: it joins both groups, consumes them
// (originator group: Handle on the stage's engine; target group:
// handleTarget on the target engine) and follows the membership, until
// ctx ends; then it stops both consumers and, with Group.Leave, leaves
// both memberships.
func (s *Stage) runGroup(ctx context.Context) error {
	gs := s.grp
	g := gs.g
	if err := JoinGroups(ctx, s.js, g); err != nil {
		return err
	}
	hctx := context.WithoutCancel(ctx) // alerts of delivered messages are published after ctx ends
	handlers := [2]func(jetstream.Msg){
		func(m jetstream.Msg) { s.Handle(hctx, m) },
		func(m jetstream.Msg) { s.handleTarget(hctx, m) },
	}
	consume := func(i int) (pcgroups.ConsumerGroupConsumeContext, error) {
		name := g.names()[i]
		cc, err := pcgroups.ElasticConsume(ctx, s.js, schema.StreamFlows, name, g.Member, handlers[i],
			jetstream.ConsumerConfig{AckPolicy: jetstream.AckExplicitPolicy, AckWait: g.AckWait, MaxDeliver: -1,
				MaxAckPending: 10 * s.cfg.FetchBatch})
		if err != nil {
			return nil, fmt.Errorf("consume group %s as %s: %w", name, g.Member, err)
		}
		return cc, nil
	}
	leave := func(cc pcgroups.ConsumerGroupConsumeContext) {
		if cc == nil {
			return
		}
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
	var ccs [2]pcgroups.ConsumerGroupConsumeContext
	stopAll := func() {
		for _, cc := range ccs {
			leave(cc)
		}
	}
	for i := range ccs {
		cc, err := consume(i)
		if err != nil {
			stopAll()
			return err
		}
		ccs[i] = cc
	}
	s.readPartitions(ctx)
	s.ready.Store(true)
	s.log.Info("consuming", "stream", schema.StreamFlows, "groups", g.Name+","+schema.DetectorTargetGroup(g.Name), "member", g.Member)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var missing [2]int
	for tick := 1; ; tick++ {
		select {
		case <-ctx.Done():
		case <-t.C:
			s.readPartitions(ctx)
			if tick%5 == 0 {
				s.checkMemberConsumers(ctx, &missing, func(i int) {
					leave(ccs[i])
					cc, err := consume(i)
					if err != nil {
						s.log.Error("rejoin consumer group", "err", err)
					}
					ccs[i] = cc
				})
			}
			continue
		}
		break
	}
	s.ready.Store(false)
	stopAll()
	if g.Leave {
		lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, name := range g.names() {
			if _, err := pcgroups.DeleteMembers(lctx, s.js, schema.StreamFlows, name, []string{g.Member}); err != nil {
				s.log.Warn("leave consumer group", "group", name, "member", g.Member, "err", err)
			}
		}
		s.log.Info("left the consumer groups: the other members take this member's partitions", "member", g.Member)
	}
	for i := range gs.own {
		gs.own[i].Store(nil)
	}
	return nil
}

// checkMemberConsumers checks (every 5 s) that this member's consumer on
// each group's work-queue stream exists while the member is in the
// group's membership, and calls rejoin(i) for group i when it has been
// missing at two checks in a row. pcgroups creates a member's consumer at
// a membership change, and fails when another member's old consumer
// still overlaps its partitions (error 10100, "filtered consumer not
// unique on workqueue stream", two members joining at once); it retries
// on its own only after AckWait (a minute by default), and after a
// consumer deleted from outside not at all (the enricher's
// watchMemberConsumer, QA of issue 8). Seen in TestStageCredentials: the
// second detector's target consumer missing, one flow record left in
// the work queue.
func (s *Stage) checkMemberConsumers(ctx context.Context, missing *[2]int, rejoin func(int)) {
	g := s.grp.g
	for i, name := range g.names() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.js.Consumer(cctx, schema.StreamFlows+"-"+name, g.Member)
		gone := errors.Is(err, jetstream.ErrConsumerNotFound)
		if gone {
			c, cerr := pcgroups.GetElasticConsumerGroupConfig(cctx, s.js, schema.StreamFlows, name)
			gone = cerr == nil && c.IsInMembership(g.Member)
		}
		cancel()
		if !gone {
			missing[i] = 0
			continue
		}
		if missing[i]++; missing[i] < 2 {
			continue
		}
		s.log.Warn("this member's consumer is missing from the group's work queue: joining again", "group", name, "member", g.Member)
		s.m.Rejoins.Inc()
		rejoin(i)
		missing[i] = 0
	}
}

// readPartitions reads both groups' membership and records the
// partitions this member holds (Metrics.Partitions). A failed read keeps
// the previous view.
func (s *Stage) readPartitions(ctx context.Context) {
	gs := s.grp
	for i, name := range gs.g.names() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := pcgroups.GetElasticConsumerGroupConfig(cctx, s.js, schema.StreamFlows, name)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("read consumer group membership", "group", name, "err", err)
			}
			continue
		}
		own := make([]bool, c.MaxMembers)
		n := 0
		for _, f := range pcgroups.ElasticGetPartitionFilters(*c, gs.g.Member) {
			p, _, _ := strings.Cut(f, ".")
			if k, err := strconv.Atoi(p); err == nil && k >= 0 && k < len(own) {
				own[k] = true
				n++
			}
		}
		if old := gs.own[i].Load(); old == nil || !reflect.DeepEqual(*old, own) {
			s.log.Info("partitions held", "group", name, "member", gs.g.Member, "partitions", n, "of", c.MaxMembers)
		}
		gs.own[i].Store(&own)
		if s.m.Partitions != nil {
			s.m.Partitions.WithLabelValues([...]string{"originator", "target"}[i]).Set(float64(n))
		}
	}
}

// handleTarget processes one FLOWS message of the target group: the
// per-target rules on every flow, publish, ack (as Handle).
func (s *Stage) handleTarget(ctx context.Context, msg jetstream.Msg) {
	gs := s.grp
	start := time.Now()
	gs.mu.Lock()
	sensor, flows, err := gs.dec.decode(msg.Data())
	if err != nil {
		gs.mu.Unlock()
		s.m.Terminated.Inc()
		s.log.Warn("terminate undecodable message", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if r := gs.nextRules.Swap(nil); r != nil {
		gs.tengine.SetConfig(*r)
	}
	if sensor == "" {
		sensor = schema.SensorFromSubject(msg.Subject())
	}
	var alerts []*pb.Alert
	for _, f := range flows {
		fs := sensor
		if f.GetSensor() != "" {
			fs = f.GetSensor()
		}
		alerts = append(alerts, gs.tengine.Observe(fs, f)...)
	}
	s.m.TargetFlows.Add(float64(len(flows)))
	s.m.TargetKeys.Set(float64(gs.tengine.Keys()))
	gs.mu.Unlock()
	if s.hosts != nil {
		// the responders' host windows (the originator group's handler
		// counts the originators'); the tracker is the originator path's,
		// under engMu (never taken inside gs.mu here: observeLive takes
		// gs.mu inside engMu)
		s.engMu.Lock()
		for _, f := range flows {
			fs := sensor
			if f.GetSensor() != "" {
				fs = f.GetSensor()
			}
			s.hosts.tracker.ObserveSide(fs, f, hostmodel.SideIn)
		}
		for _, a := range alerts {
			s.hosts.annotate(a)
		}
		s.engMu.Unlock()
	}
	for i, a := range alerts {
		if err := s.emit(ctx, a); err != nil {
			s.m.PublishErrors.Inc()
			s.log.Error("publish alert", "alert_id", a.GetId(), "subject", schema.AlertsSubject(a.GetSensor()), "err", err)
			gs.mu.Lock()
			for _, r := range alerts[i:] {
				gs.tengine.Retract(r)
			}
			gs.mu.Unlock()
			_ = msg.NakWithDelay(s.cfg.NakDelay)
			return
		}
	}
	if err := msg.Ack(); err != nil {
		s.log.Warn("ack", "err", err)
	}
	s.m.Messages.Inc()
	s.m.Lag.Observe(time.Since(start).Seconds())
}

// observeLive runs the live rules on one packet summary of sensor (src
// and dst its addresses as PACKETS carries them): on the stage's engine
// alone with one instance; in group mode on the originator engine when
// this member holds the source's partition and on the target engine when
// it holds the destination's. The caller holds engMu.
func (s *Stage) observeLive(out []*pb.Alert, sensor string, src, dst []byte, p *rules.Packet) []*pb.Alert {
	gs := s.grp
	if gs == nil {
		return s.engine.ObservePacket(out, sensor, p)
	}
	if gs.holds(0, sensor, src) {
		out = s.engine.ObservePacket(out, sensor, p)
	}
	if gs.holds(1, sensor, dst) {
		gs.mu.Lock()
		out = gs.tengine.ObservePacket(out, sensor, p)
		gs.mu.Unlock()
	}
	return out
}

// retractLive forgets a live alert whose publish failed, in the engine
// that raised it (floods: the target engine in group mode).
func (s *Stage) retractLive(a *pb.Alert) {
	if gs := s.grp; gs != nil {
		switch a.GetRule() {
		case rules.RuleSynFlood, rules.RuleUDPFlood, rules.RuleICMPFlood:
			gs.mu.Lock()
			gs.tengine.Retract(a)
			gs.mu.Unlock()
			return
		}
	}
	s.engine.Retract(a)
}

// runLiveGroup is RunARP in group mode: every member reads all of PACKETS
// through an ordered consumer (new messages from its start; no acks, so
// no shared durable splits the packets) and HandleARPBatch keeps the packets of
// its partitions (observeLive) and, on the member holding partition 0 of
// the originator group, the ARP summaries.
func (s *Stage) runLiveGroup(ctx context.Context) error {
	cons, err := s.js.OrderedConsumer(ctx, schema.StreamPackets, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{schema.PacketsPrefix + ".>"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return fmt.Errorf("ordered consumer on %s: %w", schema.StreamPackets, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.FetchBatch))
	if err != nil {
		return fmt.Errorf("consume %s: %w", schema.StreamPackets, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	s.arpReady.Store(true)
	defer s.arpReady.Store(false)
	s.log.Info("consuming", "stream", schema.StreamPackets, "consumer", "ordered (live rules and ARP of this member's partitions)")
	s.consumeLive(ctx, it, "ordered")
	return nil
}
