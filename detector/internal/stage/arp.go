package stage

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
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
// icmp_flood, syn_flood, udp_flood, portscan, hostsweep), publishes their
// alerts and acks. A batch whose framing is broken is terminated and
// counted; a broken packet summary is logged and ends the ICMP count of
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
	hctx := context.WithoutCancel(ctx)
	s.arpReady.Store(true)
	defer s.arpReady.Store(false)
	s.log.Info("consuming", "stream", schema.StreamPackets, "consumer", ConsumerARP)
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			s.log.Warn("next message", "consumer", ConsumerARP, "err", err)
			continue
		}
		s.HandleARP(hctx, msg)
	}
}

// HandleARP processes one PACKETS message for the ARP rule and the live
// scan and flood counts.
func (s *Stage) HandleARP(ctx context.Context, msg jetstream.Msg) {
	sensor, arps, err := arp.Extract(msg.Data())
	if err != nil {
		s.m.ARPTerminated.Inc()
		s.log.Warn("terminate undecodable packet batch", "consumer", ConsumerARP, "subject", msg.Subject(), "err", err)
		if s.grp == nil { // an ordered consumer's messages are not acked
			_ = msg.Term()
		}
		return
	}
	if sensor == "" {
		sensor = schema.SensorFromSubject(msg.Subject())
	}
	s.arpMu.Lock()
	if c := s.nextARP.Swap(nil); c != nil {
		s.arp.SetConfig(*c)
	}
	var alerts []*pb.Alert
	if s.grp != nil && !s.grp.arpOwner() {
		arps = nil // group mode: the ARP rule runs on the holder of partition 0
	}
	for _, a := range arps {
		alerts = append(alerts, s.arp.Observe(sensor, a)...)
	}
	s.arpMu.Unlock()
	s.m.ARPFrames.Add(float64(len(arps)))
	narp := len(alerts)
	// icmp_flood, syn_flood, udp_flood, portscan and hostsweep from the
	// packet summaries, as they arrive (rules/live.go).
	s.engMu.Lock()
	if r := s.nextRules.Swap(nil); r != nil { // a reloaded -config applies here too
		s.engine.SetConfig(*r)
	}
	nicmp, npkt := 0, 0
	var lp rules.Packet
	err = packetSummaries(msg.Data(), func(p *summary) {
		npkt++
		if rules.IsICMPRequest(p.proto, p.icmp) {
			nicmp++
		}
		sa, _ := netip.AddrFromSlice(p.src)
		da, _ := netip.AddrFromSlice(p.dst)
		lp = rules.Packet{TsNs: p.ts, Src: sa, Dst: da, SrcPort: p.sport, DstPort: p.dport, Proto: p.proto,
			Payload: p.payload, TCPFlags: p.flags, ICMPType: p.icmp}
		alerts = s.observeLive(alerts, sensor, p.src, p.dst, &lp)
	})
	s.engMu.Unlock()
	s.m.LivePackets.Add(float64(npkt))
	s.m.LiveICMP.Add(float64(nicmp))
	if err != nil { // arp.Extract accepted the framing: only a summary is broken
		s.log.Warn("packet summary", "consumer", ConsumerARP, "subject", msg.Subject(), "err", err)
	}
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
				_ = msg.NakWithDelay(s.cfg.NakDelay)
			}
			return
		}
	}
	if s.grp != nil {
		// ordered consumer: nothing to ack
	} else if err := msg.Ack(); err != nil {
		s.log.Warn("ack", "consumer", ConsumerARP, "err", err)
	}
	s.m.ARPMessages.Inc()
}
