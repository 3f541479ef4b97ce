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
)

// Set is one user's permissions: subjects it may publish and subscribe to
// (NATS wildcards). Everything else is denied.
type Set struct {
	Pub []string
	Sub []string
}

// Roles are the pipeline users netwatchctl knows, besides "sensor".
var Roles = []string{"enricher", "detector", "sink", "api", "admin"}

const inbox = "_INBOX.>" // replies: publish acks, API responses, pulled messages

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

// Sensor is what the agent named sensor needs: publish its packet batches
// (netwatch.packets.<sensor>.>), its metrics (netwatch.metrics.<sensor>)
// and its registry record ($KV.SENSORS.<sensor>), the stream-info requests
// a publisher and a KV client make, and receive replies on its inbox. It
// provisions nothing and reads no stream. An invalid name is an error.
//
// The inbox is _INBOX.> because the agent connects with nats.go's default
// inbox prefix; the sensor can subscribe there but only receives replies
// whose subjects it guesses (nuid, 22 random characters).
func Sensor(name string) (Set, error) {
	if err := schema.ValidSensor(name); err != nil {
		return Set{}, err
	}
	pub := []string{
		schema.PacketsPrefix + "." + name + ".>",
		schema.MetricsSubject(name),
		"$KV." + schema.RegistryBucket + "." + name,
	}
	pub = append(pub, info(schema.StreamPackets, schema.StreamMetrics, kvStream)...)
	return Set{Pub: pub, Sub: []string{inbox}}, nil
}

// provisioning is what schema.ProvisionRetry asks for: create or update
// every stream and durable consumer. The stages call it at start today, so
// their users carry it (without delete or purge); netwatchctl provision
// uses the admin user.
func provisioning() []string {
	var out []string
	for _, sc := range schema.StreamConfigs(schema.StreamOptions{}) {
		out = append(out, "$JS.API.STREAM.CREATE."+sc.Name, "$JS.API.STREAM.UPDATE."+sc.Name, "$JS.API.STREAM.INFO."+sc.Name)
	}
	for _, cd := range schema.ConsumerConfigs(schema.StreamOptions{}) {
		out = append(out, "$JS.API.CONSUMER.CREATE."+cd.Stream+"."+cd.Config.Durable,
			"$JS.API.CONSUMER.CREATE."+cd.Stream+"."+cd.Config.Durable+".>",
			// schema.Provision reads a durable's replicas so as never to lower them
			"$JS.API.CONSUMER.INFO."+cd.Stream+"."+cd.Config.Durable)
	}
	return out
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
			info(schema.StreamPackets, schema.StreamFlows, schema.StreamCounters), provisioning())
	case "detector":
		s.Pub = slices.Concat([]string{schema.AlertsPrefix + ".>"},
			pull(schema.StreamFlows, schema.ConsumerDetector),
			info(schema.StreamFlows, schema.StreamAlerts), provisioning())
	case "sink":
		s.Pub = slices.Concat(pull(schema.StreamFlows, schema.ConsumerSinkFlows),
			pull(schema.StreamAlerts, schema.ConsumerSinkAlerts),
			pull(schema.StreamMetrics, schema.ConsumerSinkMetrics),
			info(schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics), provisioning())
		s.Sub = []string{}
	case "api":
		streams := []string{schema.StreamPackets, schema.StreamFlows, schema.StreamAlerts,
			schema.StreamMetrics, schema.StreamCounters, kvStream}
		s.Pub = info(streams...)
		for _, st := range streams {
			// ordered consumers for replay and the registry listing: ephemeral
			// create (with a filter subject), next, delete, flow control
			s.Pub = append(s.Pub, "$JS.API.CONSUMER.CREATE."+st+".>", "$JS.API.CONSUMER.MSG.NEXT."+st+".>",
				"$JS.API.CONSUMER.DELETE."+st+".>", "$JS.API.CONSUMER.INFO."+st+".>",
				"$JS.API.CONSUMER.LIST."+st, "$JS.FC."+st+".>")
		}
		s.Pub = append(s.Pub, "$JS.API.DIRECT.GET."+kvStream+".>", "$JS.API.STREAM.MSG.GET."+kvStream)
		s.Sub = []string{schema.FlowsPrefix + ".>", schema.AlertsPrefix + ".>",
			schema.MetricsPrefix + ".>", schema.CountersPrefix + ".>"}
	case "admin":
		s.Pub = []string{"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "netwatch.>"}
		s.Sub = []string{"netwatch.>", "$JS.EVENT.>"}
	default:
		return Set{}, fmt.Errorf("unknown role %q: want sensor or one of %v", role, Roles)
	}
	s.Sub = append(s.Sub, inbox)
	s.Pub = dedup(s.Pub)
	return s, nil
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
		for _, dir := range []struct {
			key  string
			subj []string
		}{{"publish", p.Pub}, {"subscribe", p.Sub}} {
			fmt.Fprintf(&b, "          %s: { allow: [\n", dir.key)
			for _, s := range dir.subj {
				fmt.Fprintf(&b, "            %q\n", s)
			}
			b.WriteString("          ] }\n")
		}
		b.WriteString("        } }\n")
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
	b.WriteString(`      # Remote sites' leaf nodes log in as this user (leaf/site.conf); their sensors are
      # checked by the leaf node's own copy of these users.
      { user: leaf, password: "change-me-leaf" }
    ]
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
	"enricher": "enricher: PACKETS in (durable enricher), FLOWS and COUNTERS out; provisions at start",
	"detector": "detector: FLOWS in (durable detector), ALERTS out; provisions at start",
	"sink":     "sink: FLOWS, ALERTS, METRICS in (durables sink-*); provisions at start",
	"api":      "api: live subscriptions, replay and registry through ordered consumers, stream info",
	"admin":    "admin: netwatchctl provision, operators' tools (the whole JetStream API)",
}
