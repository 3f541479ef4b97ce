package stage

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/detector/internal/arp"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// ConsumerARP is the durable consumer on PACKETS through which the
// detector reads ARP bindings (PacketBatch.arp). It is defined here, not in
// schema, and created with CreateOrUpdateConsumer at start.
const ConsumerARP = "detector-arp"

// ARPConsumerConfig is the definition of ConsumerARP: every subject of
// PACKETS, explicit acks, from the start of the stream (like the other
// consumers: a replay gives the same alerts).
func ARPConsumerConfig(replicas int) jetstream.ConsumerConfig {
	if replicas == 0 {
		replicas = 1
	}
	return jetstream.ConsumerConfig{
		Durable: ConsumerARP, FilterSubject: schema.PacketsPrefix + ".>",
		AckPolicy: jetstream.AckExplicitPolicy, DeliverPolicy: jetstream.DeliverAllPolicy,
		AckWait: time.Minute, MaxAckPending: 100_000, MaxDeliver: -1, Replicas: replicas,
	}
}

// RunARP consumes PACKETS through ConsumerARP until ctx ends: it reads
// the sensor and the ARP summaries of each PacketBatch (arp.Extract) and
// the first fields (1-10) of its packet summaries (packetSummaries), runs
// the ARP rule and the live scan and flood counts (rules.Engine.ObservePacket:
// icmp_flood, syn_flood, udp_flood, portscan, hostsweep) on the messages
// gathered for LiveReorder (consumeLive, HandleARPBatch), publishes their
// alerts and acks. A batch whose framing is broken is terminated and
// counted; a broken packet summary is logged and ends the live count of
// its batch.
func (s *Stage) RunARP(ctx context.Context, replicas int) error {
	if s.grp != nil {
		return s.runLiveGroup(ctx)
	}
	cons, err := s.js.CreateOrUpdateConsumer(ctx, schema.StreamPackets, ARPConsumerConfig(replicas))
	if err != nil {
		return fmt.Errorf("create consumer %s: %w", ConsumerARP, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.cfg.FetchBatch), jetstream.PullExpiry(schema.PullExpiry))
	if err != nil {
		return fmt.Errorf("consume %s: %w", ConsumerARP, err)
	}
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	defer it.Stop()
	s.arpReady.Store(true)
	defer s.arpReady.Store(false)
	s.log.Info("consuming", "stream", schema.StreamPackets, "consumer", ConsumerARP)
	s.consumeLive(ctx, it, ConsumerARP)
	return nil
}

// LiveReorder is how long (wall clock) the live path gathers PACKETS
// messages after the first one before it runs their packet summaries
// through the live rules in packet-time order. The agent keeps one open
// batch per bucket (schema.Buckets, by 5-tuple) and sends it when full or
// 200 ms old (publish.NewBatcher), so messages of different buckets hold
// interleaved packet times: counted in arrival order, a spoofed SYN
// flood's 1,000th SYN was a packet 3.8 s into the flood instead of 0.15 s
// (full-speed replay of attack-synflood-spoofed-sources.pcap). It adds at
// most this much to a live alert's latency.
const LiveReorder = 250 * time.Millisecond

// liveGatherBytes bounds the PACKETS message bytes of one gather (a
// summary is 40-100 bytes): a full-speed replay is processed in parts.
const liveGatherBytes = 32 << 20

// consumeLive reads it until it is closed (or fails with ctx done) and
// hands the messages to HandleARPBatch in gathers: from a first message,
// every message that arrives within LiveReorder, up to liveGatherBytes.
// consumer names the source in logs.
func (s *Stage) consumeLive(ctx context.Context, it jetstream.MessagesContext, consumer string) {
	ch := make(chan jetstream.Msg, 1024)
	go func() {
		defer close(ch)
		for {
			msg, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
					return
				}
				s.log.Warn("next message", "consumer", consumer, "err", err)
				continue
			}
			ch <- msg
		}
	}()
	hctx := context.WithoutCancel(ctx)
	var msgs []jetstream.Msg
	for msg := range ch {
		msgs = append(msgs[:0], msg)
		n := len(msg.Data())
		timer := time.NewTimer(LiveReorder)
	gather:
		for n < liveGatherBytes {
			select {
			case m, ok := <-ch:
				if !ok {
					break gather
				}
				msgs = append(msgs, m)
				n += len(m.Data())
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		s.HandleARPBatch(hctx, msgs)
		clear(msgs)
	}
}

// HandleARP processes one PACKETS message for the ARP rule and the live
// scan and flood counts (HandleARPBatch of one message).
func (s *Stage) HandleARP(ctx context.Context, msg jetstream.Msg) {
	s.HandleARPBatch(ctx, []jetstream.Msg{msg})
}

// livePacket is a packet summary of a gather, with its sensor and its
// addresses' bytes (aliasing the message data) for the group partitions.
type livePacket struct {
	p        rules.Packet
	src, dst []byte
	sensor   string
}

// livePool holds the summary buffers of HandleARPBatch (*[]livePacket).
var livePool = sync.Pool{New: func() any { return new([]livePacket) }}

// HandleARPBatch processes PACKETS messages for the ARP rule (each
// message's ARP summaries in message order) and the live scan and flood
// counts: the packet summaries of all the messages are sorted by packet
// time (stable) first, so that a flood alert's time is that of the packet
// crossing the threshold in packet-time order, and its "within" and rate
// run from the window's first packet to it (README). Alerts are published,
// then every message acked; when a publish fails the alerts not published
// are retracted and every message is nak'ed. An undecodable message is
// terminated and counted, the others go on.
func (s *Stage) HandleARPBatch(ctx context.Context, msgs []jetstream.Msg) {
	var alerts []*pb.Alert
	buf := livePool.Get().(*[]livePacket)
	pkts := (*buf)[:0]
	defer func() {
		clear(pkts) // the addresses alias message data
		*buf = pkts[:0]
		livePool.Put(buf)
	}()
	good := make([]jetstream.Msg, 0, len(msgs))
	nicmp, narps := 0, 0
	for _, msg := range msgs {
		sensor, arps, err := arp.Extract(msg.Data())
		if err != nil {
			s.m.ARPTerminated.Inc()
			s.log.Warn("terminate undecodable packet batch", "consumer", ConsumerARP, "subject", msg.Subject(), "err", err)
			if s.grp == nil { // an ordered consumer's messages are not acked
				_ = msg.Term()
			}
			continue
		}
		good = append(good, msg)
		if sensor == "" {
			sensor = schema.SensorFromSubject(msg.Subject())
		}
		if s.grp != nil && !s.grp.arpOwner() {
			arps = nil // group mode: the ARP rule runs on the holder of partition 0
		}
		s.arpMu.Lock()
		if c := s.nextARP.Swap(nil); c != nil {
			s.arp.SetConfig(*c)
		}
		for _, a := range arps {
			alerts = append(alerts, s.arp.Observe(sensor, a)...)
		}
		s.arpMu.Unlock()
		narps += len(arps)
		err = packetSummaries(msg.Data(), func(p *summary) {
			if rules.IsICMPRequest(p.proto, p.icmp) {
				nicmp++
			}
			sa, _ := netip.AddrFromSlice(p.src)
			da, _ := netip.AddrFromSlice(p.dst)
			pkts = append(pkts, livePacket{p: rules.Packet{TsNs: p.ts, Src: sa, Dst: da, SrcPort: p.sport, DstPort: p.dport,
				Proto: p.proto, Payload: p.payload, TCPFlags: p.flags, ICMPType: p.icmp}, src: p.src, dst: p.dst, sensor: sensor})
		})
		if err != nil { // arp.Extract accepted the framing: only a summary is broken
			s.log.Warn("packet summary", "consumer", ConsumerARP, "subject", msg.Subject(), "err", err)
		}
	}
	s.m.ARPFrames.Add(float64(narps))
	narp := len(alerts)
	if len(good) > 1 {
		slices.SortStableFunc(pkts, func(a, b livePacket) int { return cmp.Compare(a.p.TsNs, b.p.TsNs) })
	}
	// icmp_flood, syn_flood, udp_flood, portscan and hostsweep from the
	// packet summaries, in packet-time order (rules/live.go).
	s.engMu.Lock()
	if r := s.nextRules.Swap(nil); r != nil { // a reloaded -config applies here too
		s.engine.SetConfig(*r)
	}
	for i := range pkts {
		lp := &pkts[i]
		alerts = s.observeLive(alerts, lp.sensor, lp.src, lp.dst, &lp.p)
	}
	s.engMu.Unlock()
	s.m.LivePackets.Add(float64(len(pkts)))
	s.m.LiveICMP.Add(float64(nicmp))
	for i, a := range alerts {
		if err := s.emit(ctx, a); err != nil {
			s.m.PublishErrors.Inc()
			s.log.Error("publish alert", "alert_id", a.GetId(), "err", err)
			s.arpMu.Lock()
			for _, r := range alerts[i:max(i, narp)] {
				s.arp.Retract(r)
			}
			s.arpMu.Unlock()
			s.engMu.Lock()
			for _, r := range alerts[max(i, narp):] {
				s.retractLive(r)
			}
			s.engMu.Unlock()
			if s.grp == nil {
				for _, msg := range good {
					_ = msg.NakWithDelay(s.cfg.NakDelay)
				}
			}
			return
		}
	}
	for _, msg := range good {
		if s.grp != nil {
			// ordered consumer: nothing to ack
		} else if err := msg.Ack(); err != nil {
			s.log.Warn("ack", "consumer", ConsumerARP, "err", err)
		}
		s.m.ARPMessages.Inc()
	}
}
