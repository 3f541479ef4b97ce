// Package site is the store-and-forward of a remote site (issue 8, DESIGN.md
// "Multi-host": "a site runs a NATS leaf node ... whose sensors buffer
// locally"): the site's leaf node runs its own JetStream domain with one
// stream, SITE, that stores the site sensors' packet batches and metrics,
// and a SENSORS registry bucket; the hub's PACKETS, METRICS and KV_SENSORS
// source them across the leaf connection (JetStream stream sources with
// the external API prefix $JS.<domain>.API, ADR-28 of
// nats-architecture-and-design and docs.nats.io "JetStream on Leaf Nodes").
// While the WAN link is down the site's disk holds what its sensors
// publish; when it is back, the hub's sources resume after the last
// message they stored from the site (the server finds it by the
// Nats-Stream-Source header), so each message is forwarded once.
//
// The leaf connection must not also carry the sensors' subjects directly
// (deny_exports and deny_imports in deploy/leaf/site.conf): the hub's
// streams would otherwise capture each message twice, once live and once
// through the source.
package site

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
)

// Stream is the name of the site stream in every site's domain (each site
// is its own JetStream domain, so the name repeats; the hub tells the
// sites apart by API prefix).
const Stream = "SITE"

// Subjects are what Stream stores: every packet batch and metrics message
// published at the site (only the site's own sensors publish there).
var Subjects = []string{schema.PacketsPrefix + ".>", schema.MetricsPrefix + ".>"}

// Options size the site's buffer; the zero value gives the defaults.
type Options struct {
	MaxAge   time.Duration // how long the site keeps a message, forwarded or not; 0 means 72 h (a weekend's outage)
	MaxBytes int64         // the site stream's disk limit, bytes; 0 means 50 GiB. Beyond it the oldest go (DiscardOld)
}

// StreamConfig is the site stream: file storage on the leaf node's disk,
// one replica (a site runs one leaf server), the agent's 2-minute
// duplicate window for its retried publishes (Nats-Msg-Id), limits
// retention: messages stay after the hub has sourced them, until MaxAge or
// MaxBytes (a source consumer does not acknowledge, so a work queue would
// never empty).
func StreamConfig(o Options) jetstream.StreamConfig {
	if o.MaxAge == 0 {
		o.MaxAge = 72 * time.Hour
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 50 << 30
	}
	return jetstream.StreamConfig{Name: Stream, Subjects: Subjects, Storage: jetstream.FileStorage,
		Retention: jetstream.LimitsPolicy, MaxAge: o.MaxAge, MaxBytes: o.MaxBytes, Discard: jetstream.DiscardOld,
		Duplicates: 2 * time.Minute, Replicas: 1,
		Description: "netwatch site buffer: the site sensors' packets and metrics, sourced by the hub's PACKETS and METRICS"}
}

// APIPrefix is the JetStream API prefix of a site domain as seen from the
// hub across the leaf connection.
func APIPrefix(domain string) string { return "$JS." + domain + ".API" }

// Sources returns what the hub stream named stream sources from the sites
// with these domains: PACKETS the site streams' packet subjects, METRICS
// their metrics, KV_SENSORS the sites' registry buckets. Another stream
// has none.
func Sources(stream string, domains []string) []*jetstream.StreamSource {
	var out []*jetstream.StreamSource
	for _, d := range domains {
		ext := &jetstream.ExternalStream{APIPrefix: APIPrefix(d)}
		switch stream {
		case schema.StreamPackets:
			out = append(out, &jetstream.StreamSource{Name: Stream, FilterSubject: schema.PacketsPrefix + ".>", External: ext})
		case schema.StreamMetrics:
			out = append(out, &jetstream.StreamSource{Name: Stream, FilterSubject: schema.MetricsPrefix + ".>", External: ext})
		case "KV_" + schema.RegistryBucket:
			out = append(out, &jetstream.StreamSource{Name: "KV_" + schema.RegistryBucket, External: ext})
		}
	}
	return out
}

// HubStreams are the hub streams that source from sites.
var HubStreams = []string{schema.StreamPackets, schema.StreamMetrics, "KV_" + schema.RegistryBucket}

// AddSources makes the hub's PACKETS, METRICS and KV_SENSORS source from
// the sites with these domains, keeping any other source they have. A
// stream that already has them is not updated. Call it after
// schema.Provision and schema.ProvisionRegistry, which write the streams'
// configuration without sources (and so remove them: a stage starting
// with its own provisioning does that too, see deploy/README.md "Sites").
// When a source comes back, the server resumes it after the last message
// the stream holds from it, so nothing is sourced twice.
func AddSources(ctx context.Context, js jetstream.JetStream, domains []string) error {
	for _, name := range HubStreams {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("add site sources to %s: %w", name, err)
		}
		cfg := st.CachedInfo().Config
		changed := false
		for _, src := range Sources(name, domains) {
			if !slices.ContainsFunc(cfg.Sources, func(s *jetstream.StreamSource) bool { return sameSource(s, src) }) {
				cfg.Sources = append(cfg.Sources, src)
				changed = true
			}
		}
		if !changed {
			continue
		}
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("add site sources to %s: %w", name, err)
		}
	}
	return nil
}

func sameSource(a, b *jetstream.StreamSource) bool {
	ap, bp := "", ""
	if a.External != nil {
		ap = a.External.APIPrefix
	}
	if b.External != nil {
		bp = b.External.APIPrefix
	}
	return a.Name == b.Name && a.FilterSubject == b.FilterSubject && ap == bp
}

// Provision creates or updates, on the site's leaf node that js is
// connected to, the site stream and the site's SENSORS registry bucket
// (schema.RegistryConfig, one replica: the site's agents announce
// themselves there and the hub's KV_SENSORS sources it). It returns the
// site's JetStream domain; a server without a domain is an error (it is
// not a site: the site stream's subjects would overlap the hub's PACKETS
// and METRICS).
func Provision(ctx context.Context, js jetstream.JetStream, o Options) (domain string, err error) {
	ai, err := js.AccountInfo(ctx)
	if err != nil {
		return "", fmt.Errorf("provision site: %w", err)
	}
	if ai.Domain == "" {
		return "", errors.New("provision site: the server has no JetStream domain (jetstream { domain: <site> } in leaf/site.conf)")
	}
	if _, err := js.CreateOrUpdateStream(ctx, StreamConfig(o)); err != nil {
		return "", fmt.Errorf("provision site stream %s: %w", Stream, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, schema.RegistryConfig(1, 0)); err != nil {
		return "", fmt.Errorf("provision site registry %s: %w", schema.RegistryBucket, err)
	}
	if err := DenyRegistryRollups(ctx, js); err != nil {
		return "", err
	}
	return ai.Domain, nil
}

// DenyRegistryRollups is schema.DenyRegistryRollups: rollups off on
// KV_SENSORS, so that a sensor's put with "Nats-Rollup: all" cannot erase
// the other sensors' records.
func DenyRegistryRollups(ctx context.Context, js jetstream.JetStream) error {
	return schema.DenyRegistryRollups(ctx, js)
}
