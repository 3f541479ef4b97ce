// Package perms is the least-privilege table of netwatch's NATS users
// (issue 8, DESIGN.md "Multi-host"): which subjects each sensor and each
// pipeline stage may publish and subscribe to, JetStream API requests
// included. netwatchctl writes these into user JWTs; deploy/accounts.conf
// spells out the same lists for static users, and a test keeps them equal.
//
// JetStream API subjects are those of the NATS JetStream wire API
// ($JS.API.STREAM.INFO.<stream>, $JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>,
// acks on $JS.ACK.<stream>.<durable>.>, see ADR-1 and ADR-8 of nats-architecture-and-design
// and nats.go's jetstream/api.go).
package perms

import (
	"fmt"
	"slices"
	"strings"

	"netwatch/schema"
	"netwatch/schema/ops"
)

// Set is one user's permissions: subjects it may publish and subscribe to
// (NATS wildcards). Everything else is denied. PubDeny carves subjects out
// of Pub's wildcards (a deny wins over an allow in nats-server): a role
// that creates ephemeral consumers on a stream (names are random, so the
// allow is a wildcard) may still not touch another stage's durable there.
type Set struct {
	Pub     []string
	PubDeny []string
	Sub     []string
	// ConnTypes, when not empty, are the only connection types the user
	// may log in with (nats-server's allowed_connection_types, the JWT's
	// allowed_connection_types: "STANDARD", "WEBSOCKET", "LEAFNODE", ...).
	ConnTypes []string
}

// EnricherGroup is the consumer group name (the enricher's -consume.group)
// the enricher role's permissions are written for: its work-queue stream
// PACKETS-<EnricherGroup>, its membership key in pcgroups' bucket and its
// checkpoint keys. Another group name needs its own lines.
const EnricherGroup = schema.EnricherGroup

// DetectorGroup is the detectors' originator consumer group name (the
// detector's -consume.group) the detector role's permissions are written
// for, with its target group schema.DetectorTargetGroup(DetectorGroup):
// their work-queue streams FLOWS-<group> and membership keys. Another
// group name needs its own lines.
const DetectorGroup = schema.DetectorGroup

// ConsumerDetectorARP is the detector's durable consumer on PACKETS for
// ARP summaries (detector/internal/stage.ConsumerARP; not in schema).
const ConsumerDetectorARP = "detector-arp"

// DetectorModelsBucket and DetectorHostScoresBucket are the detector's
// own state buckets (schema.ModelsBucket, the -models.bucket object store
// it loads models from and watches, and schema.HostScoresBucket, the
// -host.scores-bucket key-value bucket of host window scores), created by
// netwatchctl provision; other names need their own lines.
const (
	DetectorModelsBucket     = schema.ModelsBucket
	DetectorHostScoresBucket = schema.HostScoresBucket
)

// detectorBuckets is what the detector needs of its buckets: the models
// object store (stream OBJ_<bucket>: create when missing, info, direct
// gets of an object's meta, ordered consumers reading chunks and watching
// the meta subjects, flow control) read only (`detector push` puts models
// with the admin user), and the host scores key-value bucket (info, puts of
// any key). No create or update: a user that may update a stream's
// configuration can add a source to it and read any stream through it
// (the QA of issue 8 did that with the enricher's checkpoint bucket), and
// one that may create it can do the same before it exists.
func detectorBuckets() []string {
	obj := "OBJ_" + DetectorModelsBucket
	kv := "KV_" + DetectorHostScoresBucket
	return []string{
		"$JS.API.STREAM.INFO." + obj, "$JS.API.DIRECT.GET." + obj + ".>",
		"$JS.API.STREAM.MSG.GET." + obj,
		"$JS.API.CONSUMER.CREATE." + obj + ".*", "$JS.API.CONSUMER.CREATE." + obj + ".*.>",
		"$JS.API.CONSUMER.INFO." + obj + ".*", "$JS.API.CONSUMER.DELETE." + obj + ".*", "$JS.FC." + obj + ".>",
		"$JS.API.STREAM.INFO." + kv,
		"$KV." + DetectorHostScoresBucket + ".>",
	}
}

// pcgroupsBucket is the key-value bucket in which
// github.com/synadia-io/orbit.go/pcgroups keeps every elastic consumer
// group's configuration and membership (key <stream>.<group>).
const pcgroupsBucket = "elastic-consumer-groups"

// durables lists every durable consumer of the pipeline by stream, with
// the role that owns it.
func durables() map[string]map[string]string {
	out := map[string]map[string]string{}
	add := func(stream, durable, owner string) {
		if out[stream] == nil {
			out[stream] = map[string]string{}
		}
		out[stream][durable] = owner
	}
	for _, cd := range schema.ConsumerConfigs(schema.StreamOptions{}) {
		owner := "sink"
		switch cd.Config.Durable {
		case schema.ConsumerEnricher:
			owner = "enricher"
		case schema.ConsumerDetector:
			owner = "detector"
		}
		add(cd.Stream, cd.Config.Durable, owner)
	}
	add(schema.StreamPackets, ConsumerDetectorARP, "detector")
	return out
}

// ephemeral is what ordered (ephemeral) consumers on stream need: create
// with or without a filter subject, next, info, delete (nats.go deletes a
// reset ordered consumer). Names are random, so these are wildcards; the
// returned deny list takes the durables of the stream back out: no role
// deletes a durable, and only its owner pulls from it, and no role
// creates or updates one of them either (a create
// request on a durable's name rewrites its configuration, e.g. sink-flows'
// filter). Streams and the schema's durables are created by admin
// (netwatchctl provision); a stage run with these users passes
// -nats.provision=false and waits for them (schema.AwaitProvisioned).
func ephemeral(role, stream string) (allow, deny []string) {
	allow = []string{"$JS.API.CONSUMER.CREATE." + stream + ".*", "$JS.API.CONSUMER.CREATE." + stream + ".*.>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".*", "$JS.API.CONSUMER.INFO." + stream + ".*",
		"$JS.API.CONSUMER.DELETE." + stream + ".*"}
	var names []string
	for d := range durables()[stream] {
		names = append(names, d)
	}
	slices.Sort(names)
	for _, d := range names {
		deny = append(deny, "$JS.API.CONSUMER.DELETE."+stream+"."+d)
		deny = append(deny, "$JS.API.CONSUMER.CREATE."+stream+"."+d, "$JS.API.CONSUMER.CREATE."+stream+"."+d+".>")
		if durables()[stream][d] != role {
			deny = append(deny, "$JS.API.CONSUMER.MSG.NEXT."+stream+"."+d)
		}
	}
	return allow, deny
}

// kvBucket is what a client of one key-value bucket needs besides its
// puts: stream info, direct gets (Get) and watches (an ordered push
// consumer on the bucket's stream: create with the key filter, flow
// control, delete when it stops). keys is the watched key pattern.
func kvBucket(bucket, keys string) []string {
	st := "KV_" + bucket
	return []string{"$JS.API.STREAM.INFO." + st, "$JS.API.DIRECT.GET." + st + ".$KV." + bucket + "." + keys,
		"$JS.API.CONSUMER.CREATE." + st + ".*.$KV." + bucket + "." + keys,
		"$JS.API.CONSUMER.DELETE." + st + ".*", "$JS.FC." + st + ".>"}
}

// Roles are the users netwatchctl knows, besides "sensor": the pipeline
// stages, admin, and leaf (a remote site's leaf node link, LeafSite).
var Roles = []string{"enricher", "detector", "sink", "api", "admin", "leaf"}

// SiteStream is the name of every site's buffer stream (site.Stream; the
// site package imports this one's users, so the name is repeated here).
const SiteStream = "SITE"

// leaf is the user a remote site's leaf node logs in to the hub with
// (deploy/leaf/site.conf, deploy/README.md "Sites"), and nothing else: it
// may connect only as a leaf node (ConnTypes LEAFNODE: a client with its
// password is refused), and it carries only what the hub's stream sources
// exchange with the site's JetStream domain (nats-server stream.go,
// trySetupSourceConsumer and tryDeleteSourcingConsumer; ADR-28 of
// nats-architecture-and-design). On a leaf connection a user's publish
// list is what the leaf node may send into the hub and its subscribe list
// what the hub forwards to it (nats-server docs, "Leaf Nodes"):
//   - into the hub: the sourced messages and heartbeats on the source
//     consumers' deliver subjects ($JS.S.<random>) and the replies to the
//     hub's consumer create requests ($JSC.R.>);
//   - to the site: the hub's requests on a site domain's API to create or
//     delete a source consumer on SITE or KV_SENSORS ($JS.<site>.API.
//     CONSUMER.CREATE/DELETE.<stream>...), and the hub's flow-control
//     replies ($JS.FC.>).
//
// It reaches no netwatch subject (the site's sensors' messages cross only
// through the sources), no hub JetStream API and no client's inbox.
func leaf() Set {
	var sub []string
	for _, st := range []string{SiteStream, kvStream} {
		sub = append(sub, "$JS.*.API.CONSUMER.CREATE."+st, "$JS.*.API.CONSUMER.CREATE."+st+".>",
			"$JS.*.API.CONSUMER.DELETE."+st+".*")
	}
	return Set{Pub: []string{"$JS.S.>", "$JSC.R.>"}, Sub: append(sub, "$JS.FC.>"), ConnTypes: []string{"LEAFNODE"}}
}

// inbox is a role's reply subjects: publish acks, API responses, pulled
// messages. A stage connects with its own prefix (ops.StageInbox: the
// enricher, detector, sink and api pass it to ops.ConnectNATSInbox), so no
// role reads another's replies; admin (netwatchctl, operators' tools with
// nats.go's default prefix) keeps _INBOX.>, which no stage's or sensor's
// replies use. Sensors have their own (SensorInbox).
func inbox(role string) string {
	if role == "admin" {
		return "_INBOX.>"
	}
	return ops.StageInbox(role) + ".>"
}

func info(streams ...string) []string {
	out := []string{"$JS.API.INFO"}
	for _, s := range streams {
		out = append(out, "$JS.API.STREAM.INFO."+s)
	}
	return out
}

func pull(stream, durable string) []string {
	return []string{
		"$JS.API.CONSUMER.INFO." + stream + "." + durable,
		"$JS.API.CONSUMER.MSG.NEXT." + stream + "." + durable,
		"$JS.ACK." + stream + "." + durable + ".>",
	}
}

var kvStream = "KV_" + schema.RegistryBucket

// SensorInbox is the inbox prefix of the agent named sensor
// ("_INBOX_<sensor>", the agent's -nats.inbox-prefix default): its replies
// (publish acks, API responses) arrive on SensorInbox(sensor)+".<nuid>",
// a subject space no other client's permissions reach. The prefix follows
// nats.go's CustomInboxPrefix rules (no wildcard, no trailing '.'); a
// valid sensor name (schema.ValidSensor: letters, digits, '-', '_') is a
// single token, so the prefix is one token too and two sensors' inboxes
// never overlap.
func SensorInbox(sensor string) string { return "_INBOX_" + sensor }

// Sensor is what the agent named sensor needs: publish its packet batches
// (netwatch.packets.<sensor>.>), its metrics (netwatch.metrics.<sensor>)
// and its registry record ($KV.SENSORS.<sensor>), the registry's stream
// info (a KV client binds with it; a subjects_filter on it still lists
// the registry's keys, i.e. the sensor names), and receive replies on its own inbox
// (SensorInbox: the agent connects with nats.CustomInboxPrefix), so it
// cannot read other clients' replies on _INBOX.>. It provisions nothing
// and reads no stream. An invalid name is an error.
func Sensor(name string) (Set, error) {
	if err := schema.ValidSensor(name); err != nil {
		return Set{}, err
	}
	pub := []string{
		schema.PacketsPrefix + "." + name + ".>",
		schema.MetricsSubject(name),
		"$KV." + schema.RegistryBucket + "." + name,
	}
	// The registry's stream info only: nats.go binds a key-value bucket
	// with it (schema.OpenRegistry). The agent publishes without stream
	// info, so PACKETS' and METRICS' info (whose subjects_filter lists every
	// sensor's subjects and counts) and $JS.API.INFO are not granted.
	pub = append(pub, "$JS.API.STREAM.INFO."+kvStream)
	return Set{Pub: pub, Sub: []string{SensorInbox(name) + ".>"}}, nil
}

// Role returns the permissions of a pipeline user: enricher (PACKETS in,
// FLOWS and COUNTERS out), detector (FLOWS in, ALERTS out), sink (FLOWS,
// ALERTS, METRICS in), api (read every stream: live core subscriptions,
// replay with ordered consumers, stream and consumer info, the registry)
// or admin (the whole JetStream API and every netwatch subject; for
// netwatchctl provision). An unknown role is an error.
func Role(role string) (Set, error) {
	var s Set
	switch role {
	case "enricher":
		s.Pub = slices.Concat([]string{schema.FlowsPrefix + ".>", schema.CountersPrefix + ".>"},
			pull(schema.StreamPackets, schema.ConsumerEnricher),
			info(schema.StreamPackets, schema.StreamFlows, schema.StreamCounters),
			enricherGroup(EnricherGroup))
	case "detector":
		s.Pub = slices.Concat([]string{schema.AlertsPrefix + ".>"},
			pull(schema.StreamFlows, schema.ConsumerDetector),
			info(schema.StreamFlows, schema.StreamAlerts, schema.StreamPackets, schema.StreamMetrics),
			// ARP rule: its own durable on PACKETS, created at start
			[]string{"$JS.API.CONSUMER.CREATE." + schema.StreamPackets + "." + ConsumerDetectorARP,
				"$JS.API.CONSUMER.CREATE." + schema.StreamPackets + "." + ConsumerDetectorARP + ".>"},
			pull(schema.StreamPackets, ConsumerDetectorARP), detectorBuckets(),
			detectorGroup(DetectorGroup), detectorGroup(schema.DetectorTargetGroup(DetectorGroup)))
		// group mode: every member reads all of PACKETS for the live rules
		// through an ordered consumer (no durable, no acks); the durables
		// stay denied, except creating its own detector-arp (one instance)
		allow, deny := ephemeral("detector", schema.StreamPackets)
		s.Pub = append(s.Pub, allow...)
		for _, d := range deny {
			if !strings.HasPrefix(d, "$JS.API.CONSUMER.CREATE."+schema.StreamPackets+"."+ConsumerDetectorARP) {
				s.PubDeny = append(s.PubDeny, d)
			}
		}
		// health (METRICS live) and rescore (FLOWS by time): ordered consumers
		for _, st := range []string{schema.StreamMetrics, schema.StreamFlows} {
			allow, deny := ephemeral("detector", st)
			s.Pub = append(s.Pub, allow...)
			s.PubDeny = append(s.PubDeny, deny...)
		}
		// lag rule: consumer info (read only) of every durable
		var lag []string
		for st, ds := range durables() {
			for d := range ds {
				lag = append(lag, "$JS.API.CONSUMER.INFO."+st+"."+d)
			}
		}
		slices.Sort(lag) // map order: keep accounts.conf stable
		s.Pub = append(s.Pub, lag...)
	case "sink":
		s.Pub = slices.Concat(pull(schema.StreamFlows, schema.ConsumerSinkFlows),
			pull(schema.StreamAlerts, schema.ConsumerSinkAlerts),
			pull(schema.StreamMetrics, schema.ConsumerSinkMetrics),
			info(schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics))
		s.Sub = []string{}
	case "api":
		streams := []string{schema.StreamFlows, schema.StreamAlerts,
			schema.StreamMetrics, schema.StreamCounters, kvStream}
		// PACKETS: stream info and the consumer list (the pipeline page's
		// lag) only; no consumer on it, so the api cannot read the sensors'
		// packet summaries (QA of issue 8)
		s.Pub = append(info(append([]string{schema.StreamPackets}, streams...)...), "$JS.API.CONSUMER.LIST."+schema.StreamPackets)
		for _, st := range streams {
			// ordered consumers for replay and the registry listing: ephemeral
			// create (with a filter subject), next, delete, flow control; the
			// stages' durables are denied but their info (lag) stays readable
			allow, deny := ephemeral("api", st)
			s.Pub = append(s.Pub, allow...)
			s.Pub = append(s.Pub, "$JS.API.CONSUMER.LIST."+st, "$JS.FC."+st+".>")
			s.PubDeny = append(s.PubDeny, deny...)
		}
		s.Pub = append(s.Pub, "$JS.API.DIRECT.GET."+kvStream+".>", "$JS.API.STREAM.MSG.GET."+kvStream)
		// host anomaly scores of flows (api/internal/hostscores): read only
		hs := "KV_" + schema.HostScoresBucket
		s.Pub = append(s.Pub, "$JS.API.STREAM.INFO."+hs, "$JS.API.DIRECT.GET."+hs+".>")
		s.Sub = []string{schema.FlowsPrefix + ".>", schema.AlertsPrefix + ".>",
			schema.MetricsPrefix + ".>", schema.CountersPrefix + ".>"}
	case "admin":
		s.Pub = []string{"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "netwatch.>"}
		s.Sub = []string{"netwatch.>", "$JS.EVENT.>"}
	case "leaf":
		return leaf(), nil
	default:
		return Set{}, fmt.Errorf("unknown role %q: want sensor or one of %v", role, Roles)
	}
	s.Sub = append(s.Sub, inbox(role))
	s.Pub = dedup(s.Pub)
	s.PubDeny = dedup(s.PubDeny)
	return s, nil
}

// enricherGroup is what the enricher needs in consumer-group mode
// (-consume.group group, enricher README "Scaling" and "Crash and
// membership changes"): pcgroups' configuration bucket (read and update
// the group's key, watch it), the group's
// work-queue stream PACKETS-<group> sourced from PACKETS (info, direct
// gets of unacked messages for the replay), its member consumers
// (named after the members: create with their partition filters, info,
// delete when membership changes, pinned pulls, acks), and the checkpoint
// bucket ENRICHER_FLOWS (info, puts and watches of the group's keys).
// Nothing of it reaches PACKETS itself or another stage's consumer. It
// creates none of those streams (netwatchctl provision does, for group
// EnricherGroup): a user that may create or update a stream can give it a
// source and read any other stream through it.
func enricherGroup(group string) []string {
	wq := schema.StreamPackets + "-" + group
	cp := schema.CheckpointBucket
	key := schema.StreamPackets + "." + group
	out := []string{
		"$KV." + pcgroupsBucket + "." + key,
		"$JS.API.STREAM.INFO." + wq, "$JS.API.DIRECT.GET." + wq,
		"$JS.API.CONSUMER.CREATE." + wq + ".*", "$JS.API.CONSUMER.CREATE." + wq + ".*.>",
		"$JS.API.CONSUMER.INFO." + wq + ".*", "$JS.API.CONSUMER.DELETE." + wq + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + wq + ".*", "$JS.ACK." + wq + ".>",
		"$KV." + cp + "." + group + ".>",
	}
	out = append(out, kvBucket(pcgroupsBucket, key)...)
	return append(out, kvBucket(cp, group+".>")...)
}

// detectorGroup is what a detector member needs of one of its consumer
// groups on FLOWS (-consume.group, detector README "Scaling"): pcgroups'
// configuration key of the group (read, watch, and update: join at start,
// leave at a clean stop), the group's work-queue stream FLOWS-<group>
// (info), its member consumers (named after the members: create with
// their partition filters, info, delete when membership changes, pinned
// pulls, acks). It creates no stream and no group: netwatchctl provision
// does (a user that may create a stream can give it a source and read any
// other stream through it).
func detectorGroup(group string) []string {
	wq := schema.StreamFlows + "-" + group
	key := schema.StreamFlows + "." + group
	out := []string{
		"$KV." + pcgroupsBucket + "." + key,
		"$JS.API.STREAM.INFO." + wq,
		"$JS.API.CONSUMER.CREATE." + wq + ".*", "$JS.API.CONSUMER.CREATE." + wq + ".*.>",
		"$JS.API.CONSUMER.INFO." + wq + ".*", "$JS.API.CONSUMER.DELETE." + wq + ".*",
		"$JS.API.CONSUMER.MSG.NEXT." + wq + ".*", "$JS.ACK." + wq + ".>",
	}
	return append(out, kvBucket(pcgroupsBucket, key)...)
}

func dedup(xs []string) []string {
	seen := map[string]bool{}
	out := xs[:0]
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// AccountsConf renders the static-users alternative to JWT credentials: a
// nats-server configuration fragment with account NETWATCH (JetStream), one
// user per pipeline role (Roles), one per sensor, a leaf user for remote
// sites, and account SYS. Passwords are "change-me-<user>" placeholders to
// replace (or bcrypt hashes from "nats server passwd"). deploy/accounts.conf
// is its output for sensors sensor-a and sensor-b.
func AccountsConf(sensors []string) (string, error) {
	var b strings.Builder
	b.WriteString(`# netwatch accounts with static users (included by cluster/n*.conf and leaf/site.conf).
# Generated by: netwatchctl accounts-conf -sensors ` + strings.Join(sensors, ",") + `
# The permissions are those of netwatchctl's JWT credentials (ctl/internal/perms): each
# sensor publishes only netwatch.packets.<sensor>.>, netwatch.metrics.<sensor> and its
# registry key $KV.SENSORS.<sensor>, and reads nothing but replies to its own requests;
# each stage has only its streams, durable consumers and JetStream API calls. Replace every
# "change-me-*" password (bcrypt hashes from "nats server passwd" work too). For many
# sensors prefer JWT credentials (deploy/README.md, "Many sensors").
accounts {
  NETWATCH {
    jetstream: enabled
    users: [
`)
	user := func(name, comment string, p Set) {
		fmt.Fprintf(&b, "      # %s\n      { user: %s, password: %q,\n        permissions: {\n", comment, name, "change-me-"+name)
		list := func(key string, subj []string) {
			fmt.Fprintf(&b, "            %s: [\n", key)
			for _, s := range subj {
				fmt.Fprintf(&b, "              %q\n", s)
			}
			b.WriteString("            ]\n")
		}
		for _, dir := range []struct {
			key         string
			allow, deny []string
		}{{"publish", p.Pub, p.PubDeny}, {"subscribe", p.Sub, nil}} {
			fmt.Fprintf(&b, "          %s: {\n", dir.key)
			list("allow", dir.allow)
			if len(dir.deny) > 0 {
				list("deny", dir.deny)
			}
			b.WriteString("          }\n")
		}
		b.WriteString("        }")
		if len(p.ConnTypes) > 0 {
			q := make([]string, len(p.ConnTypes))
			for i, c := range p.ConnTypes {
				q[i] = fmt.Sprintf("%q", c)
			}
			fmt.Fprintf(&b, ",\n        allowed_connection_types: [%s]", strings.Join(q, ", "))
		}
		b.WriteString(" }\n")
	}
	for _, r := range Roles {
		p, _ := Role(r)
		user(r, roleDoc[r], p)
	}
	for _, sn := range sensors {
		p, err := Sensor(sn)
		if err != nil {
			return "", err
		}
		user(sn, "sensor "+sn+": the agent's -sensor "+sn, p)
	}
	b.WriteString(`    ]
  }
  SYS {
    users: [ { user: sys, password: "change-me-sys" } ]
  }
}
system_account: SYS
`)
	return b.String(), nil
}

var roleDoc = map[string]string{
	"enricher": "enricher: PACKETS in (durable enricher), FLOWS and COUNTERS out; run with -nats.provision=false",
	"detector": "detector: FLOWS in (durable detector), ALERTS out; run with -nats.provision=false",
	"sink":     "sink: FLOWS, ALERTS, METRICS in (durables sink-*); run with -nats.provision=false",
	"api":      "api: live subscriptions, replay and registry through ordered consumers, stream info",
	"admin":    "admin: netwatchctl provision, operators' tools (the whole JetStream API)",
	"leaf": "leaf: remote sites' leaf nodes (leaf/site.conf) log in as this user, as leaf nodes only;\n" +
		"      # it carries only the hub's stream sources of the sites' SITE and KV_SENSORS streams.\n" +
		"      # A site's sensors are checked by the leaf node's own copy of these users.",
}
