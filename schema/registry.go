package schema

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RegistryBucket is the JetStream key-value bucket of the sensor registry
// (issue 8): one key per sensor name, whose value is the JSON of a
// SensorRecord. The bucket's stream is KV_SENSORS and its subjects
// $KV.SENSORS.<sensor>, so a sensor's credentials can allow it to write
// only its own key.
const RegistryBucket = "SENSORS"

// DefaultHeartbeat is how often an agent re-puts its record, and
// DefaultOnlineWithin how recent its last put must be for List to call the
// sensor online (three missed heartbeats make it offline).
const (
	DefaultHeartbeat    = 10 * time.Second
	DefaultOnlineWithin = 30 * time.Second
)

// SensorRecord is what an agent announces about itself in the registry.
// Times are UTC wall-clock times of the agent's host.
type SensorRecord struct {
	Name       string    `json:"name"`       // the agent's -sensor, a subject token
	Host       string    `json:"host"`       // os.Hostname of the agent
	Version    string    `json:"version"`    // the agent's build version
	Interfaces []string  `json:"interfaces"` // capture interfaces (or the file for a replay)
	Boot       string    `json:"boot"`       // the agent's boot id (pb.PacketBatch.Boot, part of its Nats-Msg-Id)
	Started    time.Time `json:"started"`    // when the agent started
	Heartbeat  time.Time `json:"heartbeat"`  // the agent's clock at its latest put
}

// SensorStatus is a SensorRecord as read back by List.
type SensorStatus struct {
	SensorRecord
	// LastSeen is the server's time of the latest put (the KV entry's
	// creation time), so that a sensor's clock skew does not matter.
	LastSeen time.Time `json:"last_seen"`
	// Online is true when LastSeen is at most the onlineWithin given to List
	// before now.
	Online   bool   `json:"online"`
	Revision uint64 `json:"revision"` // the KV revision of the record
}

// RegistryConfig is the bucket definition: the latest record per sensor
// (history 1), kept for ttl after its last put (0 means 7 days), file
// storage, replicas as for the streams (0 means 1).
func RegistryConfig(replicas int, ttl time.Duration) jetstream.KeyValueConfig {
	if replicas == 0 {
		replicas = 1
	}
	if ttl == 0 {
		ttl = 7 * 24 * time.Hour
	}
	return jetstream.KeyValueConfig{Bucket: RegistryBucket, History: 1, TTL: ttl,
		Storage: jetstream.FileStorage, Replicas: replicas, MaxValueSize: 64 << 10,
		Description: "netwatch sensor registry: one record per sensor, re-put every heartbeat"}
}

// ProvisionRegistry creates or updates the registry bucket with
// RegistryConfig(o.Replicas, 0), keeping an existing bucket's sources and
// higher replicas; calling it again changes nothing.
func ProvisionRegistry(ctx context.Context, js jetstream.JetStream, o StreamOptions) (jetstream.KeyValue, error) {
	cfg := RegistryConfig(o.Replicas, 0)
	if st, err := js.Stream(ctx, "KV_"+RegistryBucket); err == nil {
		// a hub's registry sources the leaf sites' (netwatchctl provision
		// -sites): keep them, and never lower the replicas
		cfg.Sources = st.CachedInfo().Config.Sources
		cfg.Replicas = max(cfg.Replicas, st.CachedInfo().Config.Replicas)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("provision key-value bucket %s: %w", RegistryBucket, err)
	}
	if err := DenyRegistryRollups(ctx, js); err != nil {
		return nil, fmt.Errorf("provision key-value bucket %s: %w", RegistryBucket, err)
	}
	return kv, nil
}

// DenyRegistryRollups turns off rollups (the stream option
// allow_rollup_hdrs) on the registry bucket's stream KV_SENSORS, which
// nats.go's CreateOrUpdateKeyValue always turns on. A sensor may put only
// its own key ($KV.SENSORS.<sensor>), but a put carrying the header
// "Nats-Rollup: all" would erase every other sensor's record, and
// nats-server permissions cannot see headers; with rollups off the server
// refuses such a put (JetStream error 10111, "rollup not permitted"). A
// sensor never needs one (a KV put is a plain message; only KV Purge sends
// a rollup). ProvisionRegistry calls it; call it after any other
// CreateOrUpdateKeyValue of the bucket. Already off: nothing is updated.
func DenyRegistryRollups(ctx context.Context, js jetstream.JetStream) error {
	name := "KV_" + RegistryBucket
	st, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("deny rollups on %s: %w", name, err)
	}
	cfg := st.CachedInfo().Config
	if !cfg.AllowRollup {
		return nil
	}
	cfg.AllowRollup = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("deny rollups on %s: %w", name, err)
	}
	return nil
}

// OpenRegistry binds to the existing registry bucket; it needs only the
// stream-info request on KV_SENSORS (a sensor's credentials allow it). The
// error wraps jetstream.ErrBucketNotFound when the bucket was not provisioned.
func OpenRegistry(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, RegistryBucket)
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %s: %w", RegistryBucket, err)
	}
	return kv, nil
}

// Announce writes rec under its name, with Heartbeat set to now when zero,
// and returns the KV revision. The name must pass ValidSensor.
func Announce(ctx context.Context, kv jetstream.KeyValue, rec SensorRecord) (uint64, error) {
	if err := ValidSensor(rec.Name); err != nil {
		return 0, fmt.Errorf("announce: %w", err)
	}
	if rec.Heartbeat.IsZero() {
		rec.Heartbeat = time.Now().UTC()
	}
	data, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("announce %s: %w", rec.Name, err)
	}
	rev, err := kv.Put(ctx, rec.Name, data)
	if err != nil {
		return 0, fmt.Errorf("announce %s: %w", rec.Name, err)
	}
	return rev, nil
}

// Heartbeat re-announces rec with Heartbeat set to now: a KV entry has no
// separate touch, so the whole record is put again (a few hundred bytes
// every DefaultHeartbeat).
func Heartbeat(ctx context.Context, kv jetstream.KeyValue, rec SensorRecord) (uint64, error) {
	rec.Heartbeat = time.Now().UTC()
	return Announce(ctx, kv, rec)
}

// RunHeartbeat announces rec, then heartbeats every interval (0 means
// DefaultHeartbeat) until ctx ends. A failed put is passed to onErr (which
// may be nil) and retried at the next tick; it returns ctx's error.
func RunHeartbeat(ctx context.Context, kv jetstream.KeyValue, rec SensorRecord, interval time.Duration, onErr func(error)) error {
	if interval <= 0 {
		interval = DefaultHeartbeat
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, interval)
		_, err := Heartbeat(pctx, kv, rec)
		cancel()
		if err != nil && ctx.Err() == nil && onErr != nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// List returns every sensor in the registry, sorted by name, with Online
// set for those whose latest put is at most onlineWithin (0 means
// DefaultOnlineWithin) before now. A record that does not decode is
// returned with only its name (the key) and Online false.
func List(ctx context.Context, kv jetstream.KeyValue, now time.Time, onlineWithin time.Duration) ([]SensorStatus, error) {
	if onlineWithin <= 0 {
		onlineWithin = DefaultOnlineWithin
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list sensors: %w", err)
	}
	defer lister.Stop()
	out := []SensorStatus{}
	for key := range lister.Keys() {
		e, err := kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // deleted or expired since the key was listed
		}
		if err != nil {
			return nil, fmt.Errorf("get sensor %s: %w", key, err)
		}
		st := SensorStatus{LastSeen: e.Created().UTC(), Revision: e.Revision()}
		if json.Unmarshal(e.Value(), &st.SensorRecord) != nil || st.Name != key {
			out = append(out, SensorStatus{SensorRecord: SensorRecord{Name: key}, LastSeen: st.LastSeen, Revision: st.Revision})
			continue
		}
		st.Online = now.Sub(st.LastSeen) <= onlineWithin
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
