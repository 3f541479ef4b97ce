package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/modelstore"
	"netwatch/schema"
)

// HostScoresBucket is the default JetStream key-value bucket (stream
// KV_HOST_SCORES) the detector writes every closed host window's anomaly
// score to, so that a flow can be annotated with the scores of its two
// hosts by anyone who reads the bucket (issue 5: the host model's "score
// annotates hosts, flows and alerts"; the detector does not write flows).
const HostScoresBucket = schema.HostScoresBucket

// HostScoresModelKey is the key of the bucket's HostScoresModel entry.
const HostScoresModelKey = schema.HostScoresModelKey

// HostScoresModel describes the scores of the bucket (schema.HostScoresModel).
type HostScoresModel = schema.HostScoresModel

// HostScoreKey is schema.HostScoreKey: "<sensor>.<addr>.<window start s>".
func HostScoreKey(sensor string, addr netip.Addr, windowStartNs int64) string {
	return schema.HostScoreKey(sensor, addr, windowStartNs)
}

// OpenHostScores binds the HOST_SCORES bucket (bucket), or creates it when
// missing with schema.HostScoresConfig (one value per key, entries expire
// after ttl, file storage), and returns it. An existing bucket keeps its
// configuration (its TTL is the one it was created with).
func OpenHostScores(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, ttl time.Duration) (jetstream.KeyValue, error) {
	// An existing bucket is bound as it is (netwatchctl provision creates
	// it on a fleet, and the detector user may not update a stream's
	// configuration); a missing one is created.
	kv, err := js.KeyValue(ctx, bucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("key-value bucket %s: %w", bucket, err)
	}
	cfg := schema.HostScoresConfig(replicas, ttl)
	cfg.Bucket = bucket
	kv, err = js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("key-value bucket %s: %w", bucket, err)
	}
	return kv, nil
}

// hostScoresQueue is the most closed host windows waiting for their put.
const hostScoresQueue = 16384

// RunHostScores writes every closed host window (HostScore JSON, the same
// object as GET /hosts lists) to kv under HostScoreKey, and the model's
// HostScoresModel under "model", until ctx ends. Windows reach it through
// a queue of 16,384: when the bucket cannot keep up (a spoofed flood closes
// one window per source) the excess is dropped and counted
// (netwatch_detector_host_scores_dropped_total), never holding up the
// rules; a failed put is counted and not retried (scores annotate, alerts
// and flows do not depend on them). Without a host model it returns nil
// at once. Call it at most once.
func (s *Stage) RunHostScores(ctx context.Context, kv jetstream.KeyValue) error {
	h := s.hosts
	if h == nil {
		return nil
	}
	ch := make(chan HostScore, hostScoresQueue)
	s.engMu.Lock()
	h.out = ch
	f := h.f
	s.engMu.Unlock()
	defer func() {
		s.engMu.Lock()
		h.out = nil
		s.engMu.Unlock()
	}()
	putModel := func(f *hostmodel.Forest) error {
		b, _ := json.Marshal(HostScoresModel{Model: f.Name, Threshold: f.Threshold, Quantile: f.Quantile, WindowNs: h.window})
		_, err := kv.Put(ctx, HostScoresModelKey, b)
		return err
	}
	if err := putModel(f); err != nil {
		return fmt.Errorf("put host scores model: %w", err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case hs := <-ch:
			addr, err := netip.ParseAddr(hs.Addr)
			if err != nil {
				continue
			}
			b, _ := json.Marshal(hs)
			if _, err := kv.Put(ctx, HostScoreKey(hs.Sensor, addr, hs.WindowStart), b); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				s.m.HostScoresErrors.Inc()
				s.log.Warn("put host score", "sensor", hs.Sensor, "err", err)
				continue
			}
			s.m.HostScoresPut.Inc()
			s.engMu.Lock()
			nf := h.f
			s.engMu.Unlock()
			if nf != f { // a new host model from the object store
				f = nf
				if err := putModel(f); err != nil && ctx.Err() == nil {
					s.log.Warn("put host scores model", "err", err)
				}
			}
		}
	}
}

// ErrHostModelOff is returned by ApplyModel for a host model when the
// detector runs without one (-host.model off): off stays off.
var ErrHostModelOff = errors.New("host model is off (-host.model off)")

// ApplyModel installs a model from the MODELS object store: the flow
// classifier, the query-name model of dns_tunnel or the host anomaly model
// take effect from the next flow. A host model must count windows of the
// length the running one does (the open windows are kept); otherwise, or
// when the host model is off, it is an error and nothing changes. Safe for
// concurrent use with Handle and HandleARP.
func (s *Stage) ApplyModel(m modelstore.Model) error {
	s.engMu.Lock()
	defer s.engMu.Unlock()
	switch {
	case m.Flow != nil:
		s.scorer = m.Flow
	case m.QName != nil:
		s.engine.SetNameModel(m.QName, m.QName.Name)
	case m.Host != nil:
		h := s.hosts
		if h == nil {
			return ErrHostModelOff
		}
		w, err := time.ParseDuration(m.Host.Window)
		if err != nil || int64(w) != h.window {
			return fmt.Errorf("host model %s: window %q, the running one counts %v windows", m.Host.Name, m.Host.Window, time.Duration(h.window))
		}
		h.mu.Lock()
		h.f = m.Host
		clear(h.memo)
		h.mu.Unlock()
	default:
		return fmt.Errorf("model of kind %q: nothing to apply", m.Kind)
	}
	return nil
}

// Models reports the names of the models in use: flow classifier, query-name
// model and host model ("" when none).
func (s *Stage) Models() (flow, qnameModel, host string) {
	s.engMu.Lock()
	defer s.engMu.Unlock()
	if s.scorer != nil {
		flow = s.scorer.Name()
	}
	qnameModel = s.engine.NameModelName()
	if s.hosts != nil {
		host = s.hosts.f.Name
	}
	return flow, qnameModel, host
}
