package stage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/health"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// RunHealth runs the health rules until ctx ends: it reads METRICS live
// (an ordered consumer from new messages: health is about now, a replay of
// old samples would report stale silences), and every check interval it
// looks for silent sensors and reads the pending counts of the pipeline's
// durable consumers (schema.ConsumerConfigs and ConsumerARP). Alerts go out
// like the others (ALERTS, outputs, allow-lists). A METRICS message that
// does not decode is counted and skipped.
func (s *Stage) RunHealth(ctx context.Context, cfg health.Config, check time.Duration) error {
	if check <= 0 {
		check = 10 * time.Second
	}
	mon := health.New(cfg)
	var mu sync.Mutex
	hctx := context.WithoutCancel(ctx)
	emit := func(alerts []*pb.Alert) {
		for _, a := range alerts {
			if err := s.emit(hctx, a); err != nil {
				s.m.PublishErrors.Inc()
				s.log.Error("publish health alert", "alert_id", a.GetId(), "err", err)
				mu.Lock()
				mon.Retract(a)
				mu.Unlock()
			}
		}
	}
	cons, err := s.js.OrderedConsumer(ctx, schema.StreamMetrics, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{schema.MetricsPrefix + ".>"}, DeliverPolicy: jetstream.DeliverNewPolicy})
	if err != nil {
		return fmt.Errorf("health: metrics consumer: %w", err)
	}
	it, err := cons.Messages(jetstream.PullExpiry(schema.PullExpiry))
	if err != nil {
		return fmt.Errorf("health: consume metrics: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := it.Next()
			if err != nil {
				if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
					return
				}
				continue
			}
			var mt pb.Metrics
			if err := proto.Unmarshal(msg.Data(), &mt); err != nil {
				s.m.HealthBad.Inc()
				continue
			}
			if mt.Sensor == "" {
				mt.Sensor = schema.SensorFromSubject(msg.Subject())
			}
			mu.Lock()
			alerts := mon.Observe(&mt, time.Now())
			mu.Unlock()
			emit(alerts)
		}
	}()
	t := time.NewTicker(check)
	defer t.Stop()
	s.log.Info("health checks", "every", check)
	for {
		select {
		case <-ctx.Done():
			<-done
			return nil
		case now := <-t.C:
			lags := s.lags(ctx)
			mu.Lock()
			alerts := append(mon.CheckSilent(now), mon.CheckLag(lags, now)...)
			mu.Unlock()
			emit(alerts)
		}
	}
}

// lags reads the pending counts of the pipeline's durable consumers; a
// consumer that does not exist (a stage not deployed) is skipped.
func (s *Stage) lags(ctx context.Context) []health.Lag {
	defs := schema.ConsumerConfigs(schema.StreamOptions{})
	defs = append(defs, schema.ConsumerDef{Stream: schema.StreamPackets, Config: ARPConsumerConfig(1)})
	var out []health.Lag
	for _, d := range defs {
		if s.grp != nil && (d.Config.Durable == schema.ConsumerDetector || d.Config.Durable == ConsumerARP) {
			continue // group mode reads neither: their backlog is not a lag
		}
		c, err := s.js.Consumer(ctx, d.Stream, d.Config.Durable)
		if err != nil {
			continue
		}
		info, err := c.Info(ctx)
		if err != nil {
			continue
		}
		out = append(out, health.Lag{Stream: d.Stream, Consumer: d.Config.Durable, Pending: info.NumPending, AckPending: info.NumAckPending})
	}
	return append(out, s.groupLags(ctx)...)
}

// groupLags reads the backlog of the detectors' consumer groups' work-queue
// streams (schema.GroupStreamConfig: FLOWS-<group> and
// FLOWS-<group>-targets; this instance's group name in group mode, else
// the default): a work queue keeps a message until a member acks it, so its
// backlog is the stream's message count, reported as Pending (delivered and
// not yet acked ones included: the detector role may read the stream's info
// but not list its consumers). The enrichers' work queue is not read: the
// detector role may not see it (ctl/perms). A group that does not exist is
// skipped.
func (s *Stage) groupLags(ctx context.Context) []health.Lag {
	det := schema.DetectorGroup
	if s.grp != nil {
		det = s.grp.g.Name
	}
	var out []health.Lag
	for _, name := range []string{det, schema.DetectorTargetGroup(det)} {
		st, err := s.js.Stream(ctx, schema.StreamFlows+"-"+name)
		if err != nil {
			continue
		}
		out = append(out, health.Lag{Stream: st.CachedInfo().Config.Name, Consumer: name, Pending: st.CachedInfo().State.Msgs})
	}
	return out
}
