// Package schema is the contract between the netwatch stages: the subjects,
// buckets and message ids of DESIGN.md's "Subjects and streams", and the
// JetStream streams and consumers every stage provisions idempotently at start.
// The messages themselves are in package pb (generated from proto/).
package schema
