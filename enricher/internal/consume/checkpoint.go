package consume

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/enricher/internal/flow"
	"netwatch/schema"
)

// openCheckpoints binds the group's work-queue stream and creates (or
// binds) the CheckpointBucket key-value bucket.
func (s *Stage) openCheckpoints(ctx context.Context) error {
	g := s.cfg.Group
	name := schema.StreamPackets + "-" + g.Name // pcgroups' stream name
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("consumer group stream %s: %w", name, err)
	}
	s.wq = st
	s.epoch = st.CachedInfo().Created.UnixNano()
	kv, err := s.js.KeyValue(ctx, CheckpointBucket)
	if err != nil {
		// missing: create it (netwatchctl provision does on a fleet); never
		// update an existing one (the enricher user may not)
		kv, err = s.js.CreateKeyValue(ctx, schema.CheckpointBucketConfig(s.cfg.Replicas))
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = s.js.KeyValue(ctx, CheckpointBucket)
		}
		if err != nil {
			return fmt.Errorf("key-value bucket %s: %w", CheckpointBucket, err)
		}
	}
	s.kv = kv
	return nil
}

// keyPrefix is the checkpoint key prefix of a PACKETS subject
// netwatch.packets.<sensor>.<bucket>: <group>.<sensor>.<bucket>.
func (s *Stage) keyPrefix(subj string) string {
	return s.cfg.Group.Name + "." + strings.TrimPrefix(subj, schema.PacketsPrefix+".") + "."
}

// loadCheckpoints returns the checkpoints of one PACKETS subject's flows
// made on the current group stream.
func (s *Stage) loadCheckpoints(ctx context.Context, subj string) ([]*flow.FlowState, error) {
	w, err := s.kv.Watch(ctx, s.keyPrefix(subj)+"*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var states []*flow.FlowState
	for {
		select {
		case e := <-w.Updates():
			if e == nil { // all current values delivered
				return states, nil
			}
			st, err := flow.ParseFlowState(e.Value())
			if err != nil {
				s.log.Warn("bad flow checkpoint ignored", "key", e.Key(), "err", err)
				continue
			}
			if st.Epoch == s.epoch {
				states = append(states, st)
			}
		case <-ctx.Done():
			return states, ctx.Err()
		}
	}
}

// cpRef is a record's checkpoint and the records' input messages, released
// once the checkpoint is stored.
type cpRef struct {
	key  string
	data []byte
	refs []flow.Ref
}

func (*cpRef) Retain() {}

// released is the publisher's callback for a published FlowBatch or
// COUNTERS message: it stores the batch's checkpoints (all published
// asynchronously, then waited for; retried until stored), then releases
// the input messages. It runs on the publisher's goroutine, in publish
// order, so a flow's checkpoints are stored in record order.
func (s *Stage) released(ctx context.Context, refs []flow.Ref) {
	var cps []*cpRef
	for _, r := range refs {
		if c, ok := r.(*cpRef); ok {
			cps = append(cps, c)
		}
	}
	if len(cps) > 0 && !s.storeCheckpoints(ctx, cps) {
		return // shutting down: the messages stay held and are returned
	}
	for _, r := range refs {
		switch r := r.(type) {
		case *held:
			r.release()
		case *cpRef:
			for _, h := range r.refs {
				h.(*held).release()
			}
		}
	}
}

func (s *Stage) storeCheckpoints(ctx context.Context, cps []*cpRef) bool {
	futs := make([]jetstream.PubAckFuture, len(cps))
	for i, c := range cps {
		futs[i], _ = s.js.PublishAsync("$KV."+CheckpointBucket+"."+c.key, c.data)
	}
	for i, f := range futs {
		if f != nil {
			select {
			case <-f.Ok():
				continue
			case <-f.Err():
			case <-ctx.Done():
				return false
			}
		}
		// Retry in order until stored: the messages stay held meanwhile.
		for d := 100 * time.Millisecond; ; d = min(2*d, 5*time.Second) {
			if _, err := s.kv.Put(ctx, cps[i].key, cps[i].data); err == nil {
				break
			} else {
				s.m.PubErrors.Inc()
				s.log.Warn("store flow checkpoint", "key", cps[i].key, "err", err)
			}
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return false
			}
		}
	}
	return true
}
