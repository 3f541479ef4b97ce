package schema

import (
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
