package schema

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// The stages' own state in JetStream besides the streams of StreamConfigs:
// the enrichers' consumer group (github.com/synadia-io/orbit.go/pcgroups:
// its configuration key in bucket "elastic-consumer-groups" and its
// work-queue stream "PACKETS-<group>") and flow checkpoints, the
// detector's host scores and models. On a fleet an administrator creates
// them (netwatchctl provision), so that the stages' users need no right to
// update a stream's configuration (a stage that may update a stream can
// add a source to it and read any other stream through it); a stage
// started first, or without credentials, creates what is missing with the
// same configuration and never updates one.
const (
	// EnricherGroup is the enrichers' default consumer group name
	// (enricher -consume.group in deploy/).
	EnricherGroup = "enrichers"
	// GroupPartitions is the default partition count (the maximum of
	// members) of an enricher group when it is created.
	GroupPartitions = 16
	// CheckpointBucket is the key-value bucket of the enrichers' flow
	// checkpoints (keys <group>.<sensor>.<bucket>.<...>).
	CheckpointBucket = "ENRICHER_FLOWS"
	// CheckpointTTL is how long a checkpoint lives without being rewritten.
	CheckpointTTL = 24 * time.Hour
	// HostScoresBucket is the detector's key-value bucket of host window
	// scores (keys <sensor>.<addr>.<window start s>).
	HostScoresBucket = "HOST_SCORES"
	// HostScoresTTL is the default age at which host scores expire.
	HostScoresTTL = 24 * time.Hour
	// ModelsBucket is the detector's object store of models.
	ModelsBucket = "MODELS"
)

// GroupFilterSubject and GroupPartitioningWildcards partition PACKETS for
// an enricher group on the <sensor> and <bucket> tokens of
// netwatch.packets.<sensor>.<bucket> (a pcgroups.PartitioningFilter).
var (
	GroupFilterSubject         = PacketsPrefix + ".*.*"
	GroupPartitioningWildcards = []int{1, 2}
)

// The detectors' consumer groups on FLOWS (detector -consume.group,
// detector README "Scaling"): DetectorGroup partitions FLOWS on the
// <sensor> and <orig_bucket> tokens of
// netwatch.flows.<sensor>.<orig_bucket>.<resp_bucket>, so every flow of
// one originator reaches one member (the per-originator rules), and its
// target group DetectorTargetGroup(DetectorGroup) on <sensor> and
// <resp_bucket>, so every flow to one target reaches one member (the
// per-target rules: floods, amplification). Each member joins both.
const (
	// DetectorGroup is the detectors' default originator group name.
	DetectorGroup = "detectors"
	// DetectorGroupPartitions is the default partition count (the maximum
	// of members) of both detector groups when they are created.
	DetectorGroupPartitions = 16
)

// DetectorTargetGroup is the name of the target group that goes with the
// originator group name: name + "-targets".
func DetectorTargetGroup(name string) string { return name + "-targets" }

// DetectorGroupFilterSubject and the partitioning wildcards (1-based
// positions of its '*' tokens, as pcgroups.PartitioningFilter counts them)
// of the two detector groups.
var (
	DetectorGroupFilterSubject = FlowsPrefix + ".*.*.*"
	DetectorOrigWildcards      = []int{1, 2}
	DetectorTargetWildcards    = []int{1, 3}
)

// GroupPartition is the partition the NATS server's subject transform
// {{Partition(n,...)}} gives a subject whose partitioning tokens are
// tokens: FNV-1a (32 bit) of the tokens concatenated without separator,
// modulo n (nats-server server/subject_transform.go, getHashPartition). A
// consumer group member uses it to tell which addresses its partitions
// hold, e.g. GroupPartition(16, sensor, strconv.Itoa(AddrBucket(addr))).
func GroupPartition(n uint, tokens ...string) uint {
	if n == 0 {
		return 0
	}
	h := uint32(2166136261)
	for _, t := range tokens {
		for i := 0; i < len(t); i++ {
			h ^= uint32(t[i])
			h *= 16777619
		}
	}
	return uint(h % uint32(n))
}

// CheckpointBucketConfig is the enrichers' checkpoint bucket: one value
// per key, CheckpointTTL, file storage, replicas (0 means 1).
func CheckpointBucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{Bucket: CheckpointBucket, Description: "enricher flow checkpoints (see enricher README)",
		History: 1, TTL: CheckpointTTL, Storage: jetstream.FileStorage, Replicas: max(replicas, 1)}
}

// HostScoresConfig is the detector's host scores bucket: one value per
// key, entries expire after ttl (0 means HostScoresTTL), file storage,
// replicas (0 means 1).
func HostScoresConfig(replicas int, ttl time.Duration) jetstream.KeyValueConfig {
	if ttl == 0 {
		ttl = HostScoresTTL
	}
	return jetstream.KeyValueConfig{Bucket: HostScoresBucket, History: 1, TTL: ttl, Storage: jetstream.FileStorage,
		Replicas:    max(replicas, 1),
		Description: "netwatch detector: host anomaly score of every closed host window (key sensor.addr.window_start_s)"}
}

// ModelsConfig is the detector's models object store: file storage,
// replicas (0 means 1).
func ModelsConfig(replicas int) jetstream.ObjectStoreConfig {
	return jetstream.ObjectStoreConfig{Bucket: ModelsBucket, Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
		Description: "netwatch detector models (detector push)"}
}

// GroupStreamConfig is the work-queue stream of the elastic consumer
// group name on stream as github.com/synadia-io/orbit.go/pcgroups v0.2.2
// CreateElastic makes it (no buffer limits), with a start time on its
// source: named "<stream>-<name>", work-queue retention, DiscardNew,
// AllowDirect, replicas and storage as stream, sourcing stream through the
// partitioning transform filter -> "{{Partition(partitions,wildcards)}}."
// + filter with its i-th '*' as "{{Wildcard(i)}}", from the first message
// stored at or after start (nil start: from the first message stream
// holds, as pcgroups does).
func GroupStreamConfig(stream, name string, partitions uint, filter string, wildcards []int, replicas int,
	storage jetstream.StorageType, start *time.Time) jetstream.StreamConfig {
	toks := strings.Split(filter, ".")
	n := 0
	for i, t := range toks {
		if t == "*" {
			n++
			toks[i] = fmt.Sprintf("{{Wildcard(%d)}}", n)
		}
	}
	w := make([]string, len(wildcards))
	for i, x := range wildcards {
		w[i] = strconv.Itoa(x)
	}
	dest := fmt.Sprintf("{{Partition(%d)}}.%s", partitions, strings.Join(toks, "."))
	if len(w) > 0 {
		dest = fmt.Sprintf("{{Partition(%d,%s)}}.%s", partitions, strings.Join(w, ","), strings.Join(toks, "."))
	}
	return jetstream.StreamConfig{Name: stream + "-" + name, Retention: jetstream.WorkQueuePolicy, Replicas: replicas,
		Storage: storage, Discard: jetstream.DiscardNew, AllowDirect: true,
		Sources: []*jetstream.StreamSource{{Name: stream, OptStartTime: start,
			SubjectTransforms: []jetstream.SubjectTransformConfig{{Source: filter, Destination: dest}}}}}
}

// CreateGroupStream creates the work-queue stream of the consumer group
// name on stream (GroupStreamConfig) sourcing stream from now (the
// server's time when it is created): a new group receives only what stream stores from then
// on, not what it already holds (FLOWS keeps 24 h, PACKETS 1 h by
// default), so switching from one instance (a durable consumer that has
// already read them) to a group does not run them again (detectors:
// every past alert re-sent; enrichers: every retained packet made into
// flow records again). The cost: messages stored before the group
// exists are never read by it; create the group before the sources
// publish (netwatchctl provision does, deploy/README.md). A stream that
// exists is left as it is (its start is never moved, also when pcgroups
// or an older netwatchctl created it without one) after checking that it
// sources stream through the same transform. It returns the source's
// start (nil: from the beginning of stream). Call it before
// pcgroups.CreateElastic, whose own create of the stream then fails with
// jetstream.ErrStreamNameAlreadyInUse (the configs differ by the start).
func CreateGroupStream(ctx context.Context, js jetstream.JetStream, stream, name string, partitions uint, filter string,
	wildcards []int) (*time.Time, error) {
	src, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("group %s: stream %s: %w", name, stream, err)
	}
	now := src.CachedInfo().TimeStamp // the server's clock (the source compares it with its stored times)
	if now.IsZero() {
		now = time.Now()
	}
	now = now.UTC()
	want := GroupStreamConfig(stream, name, partitions, filter, wildcards, src.CachedInfo().Config.Replicas,
		src.CachedInfo().Config.Storage, &now)
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if s, err = js.CreateStream(ctx, want); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("group %s: create stream %s: %w", name, want.Name, err)
		}
		if err != nil { // created meanwhile by another
			s, err = js.Stream(ctx, want.Name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("group %s: stream %s: %w", name, want.Name, err)
	}
	got := s.CachedInfo().Config.Sources
	if len(got) != 1 || got[0].Name != stream || !reflect.DeepEqual(got[0].SubjectTransforms, want.Sources[0].SubjectTransforms) {
		return nil, fmt.Errorf("group %s: stream %s exists with sources %v, want %s through %v: delete the group first",
			name, want.Name, sourceNames(got), stream, want.Sources[0].SubjectTransforms)
	}
	return got[0].OptStartTime, nil
}

func sourceNames(ss []*jetstream.StreamSource) []string {
	var n []string
	for _, s := range ss {
		n = append(n, s.Name)
	}
	return n
}
