// Package hostscores annotates flows with the anomaly scores of their two
// hosts, read from the detector's key-value bucket (schema.HostScoresBucket,
// issue 5: the host model's score "annotates hosts, flows and alerts"). The
// detector writes one entry per closed host window (schema.HostScoreKey:
// sensor, address, window start) and a schema.HostScoresModel entry that
// gives the window length; a flow's hosts are looked up in the window that
// contains the flow's start. A host window still open (the last minute) or
// expired from the bucket (its TTL, 24 h by default) has no score: the
// flow's field stays null.
package hostscores

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/record"
	"netwatch/schema"
)

// Cache bounds: entries are kept cacheTTL (a closed window's score never
// changes; a missing one may appear when its window closes), at most
// cacheMax of them; the model entry is re-read every modelTTL.
const (
	cacheTTL = time.Minute
	cacheMax = 100_000
	modelTTL = 30 * time.Second
)

type entry struct {
	score *record.HostScore // nil: no score
	at    time.Time
}

// Annotator looks up host scores in one bucket. The zero value and a nil
// *Annotator annotate nothing. Safe for concurrent use.
type Annotator struct {
	js     jetstream.JetStream
	bucket string

	mu      sync.Mutex
	kv      jetstream.KeyValue
	kvAt    time.Time // last bind attempt
	model   schema.HostScoresModel
	modelAt time.Time
	cache   map[string]entry
}

// New returns an Annotator of bucket (schema.HostScoresBucket when empty)
// through js; nil js gives a nil Annotator.
func New(js jetstream.JetStream, bucket string) *Annotator {
	if js == nil {
		return nil
	}
	if bucket == "" {
		bucket = schema.HostScoresBucket
	}
	return &Annotator{js: js, bucket: bucket, cache: map[string]entry{}}
}

// Budget is the longest one Annotate spends on lookups: a flows answer is
// never held back more than this for its annotation.
const Budget = 2 * time.Second

// Annotate sets OrigHostScore and RespHostScore of every flow it finds a
// score for. Lookups that fail (no bucket yet, NATS away, ctx done) leave
// the fields nil: a flow is never held back for its annotation. With the
// NATS connection down it looks nothing up (a request on a reconnecting
// connection waits for its context: independent QA, seventh session, saw
// /api/v1/flows take 30 s); otherwise it spends at most Budget and stops at
// the first failed lookup.
func (a *Annotator) Annotate(ctx context.Context, flows []record.Flow) {
	if a == nil || len(flows) == 0 {
		return
	}
	if nc := a.js.Conn(); nc != nil && !nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, Budget)
	defer cancel()
	kv, model := a.bind(ctx)
	if kv == nil || model.WindowNs <= 0 {
		return
	}
	for i := range flows {
		f := &flows[i]
		start := time.Time(f.Start).UnixNano()
		w := start - start%model.WindowNs
		var ok bool
		if f.OrigHostScore, ok = a.lookup(ctx, kv, f.Sensor, f.OrigAddr, w); !ok {
			return
		}
		if f.RespHostScore, ok = a.lookup(ctx, kv, f.Sensor, f.RespAddr, w); !ok {
			return
		}
	}
}

// bind returns the bucket and its model entry, re-trying a missing bucket
// and re-reading the model at most every modelTTL.
func (a *Annotator) bind(ctx context.Context) (jetstream.KeyValue, schema.HostScoresModel) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	if a.kv == nil && now.Sub(a.kvAt) >= modelTTL {
		a.kvAt = now
		if kv, err := a.js.KeyValue(ctx, a.bucket); err == nil {
			a.kv = kv
		}
	}
	if a.kv != nil && now.Sub(a.modelAt) >= modelTTL {
		if e, err := a.kv.Get(ctx, schema.HostScoresModelKey); err == nil {
			var m schema.HostScoresModel
			if json.Unmarshal(e.Value(), &m) == nil {
				a.model, a.modelAt = m, now
			}
		} else if errors.Is(err, jetstream.ErrKeyNotFound) {
			a.modelAt = now
		}
	}
	return a.kv, a.model
}

// lookup is the score of addr's host window; ok is false when the bucket
// could not be read (NATS away, ctx done), not for a missing score.
func (a *Annotator) lookup(ctx context.Context, kv jetstream.KeyValue, sensor, addr string, windowStart int64) (score *record.HostScore, ok bool) {
	ip, err := netip.ParseAddr(addr)
	if err != nil || schema.ValidSensor(sensor) != nil {
		return nil, true
	}
	key := schema.HostScoreKey(sensor, ip, windowStart)
	now := time.Now()
	a.mu.Lock()
	if e, ok := a.cache[key]; ok && now.Sub(e.at) < cacheTTL {
		a.mu.Unlock()
		return e.score, true
	}
	a.mu.Unlock()
	e, err := kv.Get(ctx, key)
	switch {
	case err == nil:
		var v schema.HostScore
		if json.Unmarshal(e.Value(), &v) == nil {
			score = &record.HostScore{Score: v.Score, Anomalous: v.Anomalous,
				WindowStart: record.Time(time.Unix(0, v.WindowStart)), WindowEnd: record.Time(time.Unix(0, v.WindowEnd))}
		}
	case errors.Is(err, jetstream.ErrKeyNotFound):
	default:
		return nil, false // not cached: try again next time
	}
	a.mu.Lock()
	if len(a.cache) >= cacheMax {
		for k, old := range a.cache { // drop the expired, else everything
			if now.Sub(old.at) >= cacheTTL {
				delete(a.cache, k)
			}
		}
		if len(a.cache) >= cacheMax {
			clear(a.cache)
		}
	}
	a.cache[key] = entry{score: score, at: now}
	a.mu.Unlock()
	return score, true
}
