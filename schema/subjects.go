package schema

import (
	"fmt"
	"hash/fnv"
	"strings"
)

// Buckets is the number of hash buckets in PACKETS and FLOWS subjects
// (DESIGN.md). Changing it re-partitions every stream: treat it as fixed.
const Buckets = 64

// Subject prefixes of the four streams.
const (
	PacketsPrefix = "netwatch.packets"
	FlowsPrefix   = "netwatch.flows"
	AlertsPrefix  = "netwatch.alerts"
	MetricsPrefix = "netwatch.metrics"
	// CountersPrefix is the subject prefix of the COUNTERS stream
	// (per-second traffic counters from the enricher; added to DESIGN.md's four).
	CountersPrefix = "netwatch.counters"
)

// PacketsSubject is netwatch.packets.<sensor>.<bucket>.
func PacketsSubject(sensor string, bucket uint32) string {
	return fmt.Sprintf("%s.%s.%d", PacketsPrefix, sensor, bucket)
}

// FlowsSubject is netwatch.flows.<sensor>.<orig_bucket>.<resp_bucket>.
func FlowsSubject(sensor string, origBucket, respBucket uint32) string {
	return fmt.Sprintf("%s.%s.%d.%d", FlowsPrefix, sensor, origBucket, respBucket)
}

// AlertsSubject is netwatch.alerts.<sensor>.
func AlertsSubject(sensor string) string { return AlertsPrefix + "." + sensor }

// MetricsSubject is netwatch.metrics.<sensor>.
func MetricsSubject(sensor string) string { return MetricsPrefix + "." + sensor }

// CountersSubject is netwatch.counters.<sensor>: pb.TrafficCounters messages.
func CountersSubject(sensor string) string { return CountersPrefix + "." + sensor }

// ValidSensor reports whether name can be a sensor name: a single NATS
// subject token of letters, digits, '-' and '_', 1 to 64 characters.
func ValidSensor(name string) error {
	if name == "" || len(name) > 64 {
		return fmt.Errorf("sensor name %q: want 1 to 64 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("sensor name %q: only letters, digits, '-' and '_' are allowed", name)
		}
	}
	return nil
}

// SensorFromSubject returns the <sensor> token of any netwatch subject, or ""
// when subject is not one.
func SensorFromSubject(subject string) string {
	parts := strings.SplitN(subject, ".", 4)
	if len(parts) < 3 || parts[0] != "netwatch" {
		return ""
	}
	return parts[2]
}

// PacketBucket is the bucket of a packet's flow: FNV-1a (32 bit) over the
// two (address, port) endpoints in sorted order, then proto and VLAN, modulo
// Buckets, so both directions of a flow land in the same bucket.
// Addresses are 4 or 16 bytes.
func PacketBucket(a []byte, aport uint32, b []byte, bport uint32, proto, vlan uint32) uint32 {
	if endpointLess(b, bport, a, aport) {
		a, aport, b, bport = b, bport, a, aport
	}
	h := fnv.New32a()
	var buf [4]byte
	h.Write(a)
	h.Write(putU16(buf[:0], aport))
	h.Write(b)
	h.Write(putU16(buf[:0], bport))
	h.Write([]byte{byte(proto), byte(vlan >> 8), byte(vlan)})
	return h.Sum32() % Buckets
}

// AddrBucket is the bucket of one address in FLOWS subjects: FNV-1a (32 bit)
// of its 4 or 16 bytes, modulo Buckets.
func AddrBucket(addr []byte) uint32 {
	h := fnv.New32a()
	h.Write(addr)
	return h.Sum32() % Buckets
}

func putU16(b []byte, v uint32) []byte { return append(b, byte(v>>8), byte(v)) }

func endpointLess(a []byte, aport uint32, b []byte, bport uint32) bool {
	if len(a) != len(b) {
		return len(a) < len(b)
	}
	for i := range a {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return aport < bport
}
