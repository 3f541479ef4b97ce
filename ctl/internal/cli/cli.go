// Package cli is netwatchctl's commands (init, creds, provision, group,
// accounts-conf), callable
// from tests with injected arguments, environment and outputs.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"

	"netwatch/ctl/internal/auth"
	"netwatch/ctl/internal/perms"
	"netwatch/ctl/internal/site"
	"netwatch/schema"
	"netwatch/schema/ops"
)

const usage = `usage:
  netwatchctl init      -dir DIR [-operator NAME]
      create (or load) the operator and the NETWATCH and SYS accounts in DIR and write
      DIR/resolver.conf for nats-server configs to include
  netwatchctl creds     -dir DIR -sensor NAME [-o FILE] [-ttl DURATION]
  netwatchctl creds     -dir DIR -role enricher|detector|sink|api|admin [-name NAME] [-o FILE]
      write a .creds file for one sensor (publishes only its own subjects) or stage
  netwatchctl provision [-nats.url URLS] [-nats.creds FILE] [-replicas N] [-sites DOMAINS] [-timeout D]
      create or update every stream, durable consumer and the SENSORS registry bucket; with
      -sites, PACKETS, METRICS and KV_SENSORS also source each leaf site's buffer
  netwatchctl provision-site [-nats.url URL] [-nats.creds FILE] [-max-age D] [-max-bytes N]
      on a site's leaf node (its own JetStream domain): the site stream SITE that buffers
      the site sensors' packets and metrics on its disk, and the site's SENSORS bucket
  netwatchctl group     [-nats.url URLS] [-nats.creds FILE] [-group NAME] [-add NAMES] [-remove NAMES]
      list (and change) the members of the enrichers' consumer group: scaling down needs
      the removed members deleted, their partitions then move to the others
  netwatchctl accounts-conf -sensors NAME,NAME... [-o FILE]
      print static users with the same permissions (deploy/accounts.conf), for servers
      without JWT authentication
`

// Run executes netwatchctl with args (without the program name) and returns
// the exit status: 0 success, 1 error, 2 bad usage.
func Run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "init":
		err = cmdInit(args[1:], getenv, stdout)
	case "creds":
		err = cmdCreds(args[1:], getenv, stdout)
	case "provision":
		err = cmdProvision(args[1:], getenv, stdout)
	case "provision-site":
		err = cmdProvisionSite(args[1:], getenv, stdout)
	case "accounts-conf":
		err = cmdAccountsConf(args[1:], getenv, stdout)
	case "group":
		err = cmdGroup(args[1:], getenv, stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "netwatchctl: unknown command %q\n%s", args[0], usage)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "netwatchctl %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "netwatchctl %s: %v\n", args[0], err)
		return 1
	}
}

type usageError struct{ error }

func parse(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %v", fs.Args())}
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return usageError{err}
	}
	return nil
}

func cmdInit(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for the operator and account keys and resolver.conf")
	name := fs.String("operator", "netwatch", "operator name")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("-dir is required")}
	}
	t, err := auth.Init(*dir, *name)
	if err != nil {
		return err
	}
	npub, _ := t.Netwatch.PublicKey()
	fmt.Fprintf(stdout, "operator and accounts in %s; account %s is %s\ninclude %s/%s in every nats-server config\n",
		*dir, auth.AccountNetwatch, npub, *dir, auth.ResolverFile)
	return nil
}

func cmdCreds(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("creds", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory written by netwatchctl init")
	sensor := fs.String("sensor", "", "sensor name (the agent's -sensor)")
	role := fs.String("role", "", "role instead of a sensor: enricher, detector, sink, api, admin, leaf (a site's leaf node link)")
	name := fs.String("name", "", "user name for a role (default: the role)")
	out := fs.String("o", "", "output file (mode 0600; default: stdout)")
	ttl := fs.Duration("ttl", 0, "credentials expire after this long (0: never)")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	if *dir == "" {
		return usageError{errors.New("-dir is required")}
	}
	if (*sensor == "") == (*role == "") {
		return usageError{errors.New("give exactly one of -sensor and -role")}
	}
	var p perms.Set
	var err error
	user := *sensor
	if *sensor != "" {
		p, err = perms.Sensor(*sensor)
	} else {
		p, err = perms.Role(*role)
		user = *role
		if *name != "" {
			user = *name
		}
	}
	if err != nil {
		return usageError{err}
	}
	t, err := auth.Load(*dir)
	if err != nil {
		return err
	}
	creds, err := t.UserCreds(user, p, *ttl)
	if err != nil {
		return err
	}
	if *out == "" {
		_, err = stdout.Write(creds)
		return err
	}
	if err := os.WriteFile(*out, creds, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	return nil
}

func cmdProvision(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("provision", flag.ContinueOnError)
	url := fs.String("nats.url", "nats://127.0.0.1:4222", "NATS server URLs, comma-separated")
	creds := fs.String("nats.creds", "", "credentials file of an admin user")
	ca := fs.String("nats.tls-ca", "", "PEM CA file that signs the servers' certificates (default: the system roots)")
	replicas := fs.Int("replicas", 1, "replicas of every stream, consumer and the registry bucket (3 on a cluster)")
	sites := fs.String("sites", "", "comma-separated JetStream domains of leaf sites whose SITE stream PACKETS, METRICS and KV_SENSORS source (netwatchctl provision-site)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	partitions := fs.Uint("group.partitions", schema.GroupPartitions, "partitions (max members) of the enrichers' consumer group "+schema.EnricherGroup+" when it is created here")
	dpartitions := fs.Uint("detector.partitions", schema.DetectorGroupPartitions, "partitions (max members) of the detectors' consumer groups "+schema.DetectorGroup+" and "+schema.DetectorTargetGroup(schema.DetectorGroup)+" on FLOWS when they are created here")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	if *replicas < 1 || *replicas > 5 {
		return usageError{fmt.Errorf("-replicas %d: want 1 to 5", *replicas)}
	}
	domains := names(*sites)
	for _, d := range domains {
		if err := schema.ValidSensor(d); err != nil { // a domain is one subject token
			return usageError{fmt.Errorf("-sites %q: %w", d, err)}
		}
	}
	nc, js, err := connect(*url, *creds, *ca)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	o := schema.StreamOptions{Replicas: *replicas}
	if err := schema.ProvisionRetry(ctx, js, o); err != nil {
		return err
	}
	if _, err := schema.ProvisionRegistry(ctx, js, o); err != nil {
		return err
	}
	starts, err := provisionStageState(ctx, js, *replicas, *partitions, *dpartitions)
	if err != nil {
		return err
	}
	if len(domains) > 0 {
		if err := site.AddSources(ctx, js, domains); err != nil {
			return err
		}
	}
	if err := site.DenyRegistryRollups(ctx, js); err != nil {
		return err
	}
	for _, sc := range schema.StreamConfigs(o) {
		fmt.Fprintf(stdout, "stream %s: replicas %d\n", sc.Name, sc.Replicas)
	}
	for _, st := range site.HubStreams {
		for _, src := range site.Sources(st, domains) {
			fmt.Fprintf(stdout, "stream %s: sources %s %s from %s\n", st, src.Name, src.FilterSubject, src.External.APIPrefix)
		}
	}
	fmt.Fprintf(stdout, "consumers: %d, key-value bucket %s: replicas %d\n", len(schema.ConsumerConfigs(o)), schema.RegistryBucket, *replicas)
	fmt.Fprintf(stdout, "enricher group %s (stream %s-%s, %s), key-value buckets %s, %s, object store %s\n", schema.EnricherGroup,
		schema.StreamPackets, schema.EnricherGroup, sourcedFrom(schema.StreamPackets, starts[schema.EnricherGroup]),
		schema.CheckpointBucket, schema.HostScoresBucket, schema.ModelsBucket)
	for _, g := range []string{schema.DetectorGroup, schema.DetectorTargetGroup(schema.DetectorGroup)} {
		fmt.Fprintf(stdout, "detector group %s (stream %s-%s, %s): %d partitions\n", g, schema.StreamFlows, g,
			sourcedFrom(schema.StreamFlows, starts[g]), *dpartitions)
	}
	return nil
}

// sourcedFrom says where a group's work-queue stream starts reading stream.
func sourcedFrom(stream string, start *time.Time) string {
	if start == nil {
		return "sources " + stream + " from its first message"
	}
	return "sources " + stream + " from " + start.UTC().Format(time.RFC3339Nano)
}

// provisionStageState creates or updates what the stages keep their own
// state in (schema/stagestate.go): the enrichers' consumer group
// schema.EnricherGroup on PACKETS (pcgroups: its configuration key and its
// work-queue stream, replicas as PACKETS), their checkpoint bucket, the
// detector's host scores bucket and models object store, with replicas,
// and the detectors' two consumer groups on FLOWS (schema.DetectorGroup,
// partitioned by originator, and its target group, by responder; detector
// README "Scaling") with dpartitions partitions each.
// Each group's work-queue stream sources its stream from the time it is
// created here, never moved by a later provision (schema.CreateGroupStream):
// a new group does not read the PACKETS or FLOWS messages stored before
// it (so turning one enricher or detector into a group does not make the
// retained packets into flow records again or re-send every past alert),
// and provisioning before the sources publish loses nothing. It returns
// each group's source start by group name (nil: a group created without
// one, by pcgroups or an older netwatchctl, sourced from the beginning).
// The stages' users may create these but not update them, so provisioning
// them here fixes their configuration. A group that exists with another
// partition count is an error (pcgroups cannot change it: delete the group
// first, see deploy/README.md "Scaling the enrichers").
func provisionStageState(ctx context.Context, js jetstream.JetStream, replicas int, partitions, dpartitions uint) (map[string]*time.Time, error) {
	// pcgroups' bucket with the configuration pcgroups gives it (replicas
	// as PACKETS): CreateElastic reuses an existing bucket as it is, so an
	// update here resets anything else (a source) set on it
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		return nil, fmt.Errorf("provision enricher group %s: %w", schema.EnricherGroup, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "elastic-consumer-groups",
		Replicas: st.CachedInfo().Config.Replicas, Storage: jetstream.FileStorage}); err != nil {
		return nil, fmt.Errorf("provision key-value bucket elastic-consumer-groups: %w", err)
	}
	filter := pcgroups.PartitioningFilter{Filter: schema.GroupFilterSubject, PartitioningWildcards: schema.GroupPartitioningWildcards}
	start := map[string]*time.Time{}
	if start[schema.EnricherGroup], err = provisionGroup(ctx, js, schema.StreamPackets, schema.EnricherGroup, partitions, filter); err != nil {
		return nil, fmt.Errorf("provision enricher group %s: %w", schema.EnricherGroup, err)
	}
	for _, g := range []struct {
		name      string
		wildcards []int
	}{{schema.DetectorGroup, schema.DetectorOrigWildcards}, {schema.DetectorTargetGroup(schema.DetectorGroup), schema.DetectorTargetWildcards}} {
		filter := pcgroups.PartitioningFilter{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: g.wildcards}
		if start[g.name], err = provisionGroup(ctx, js, schema.StreamFlows, g.name, dpartitions, filter); err != nil {
			return nil, fmt.Errorf("provision detector group %s: %w", g.name, err)
		}
	}
	for _, cfg := range []jetstream.KeyValueConfig{schema.CheckpointBucketConfig(replicas), schema.HostScoresConfig(replicas, 0)} {
		if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
			return nil, fmt.Errorf("provision key-value bucket %s: %w", cfg.Bucket, err)
		}
	}
	if _, err := js.CreateOrUpdateObjectStore(ctx, schema.ModelsConfig(replicas)); err != nil {
		return nil, fmt.Errorf("provision object store %s: %w", schema.ModelsBucket, err)
	}
	return start, nil
}

// provisionGroup creates the elastic consumer group name on stream with
// filter and partitions: its work-queue stream first, sourced from now
// (schema.CreateGroupStream; an existing one is kept as it is), then its
// pcgroups configuration, whose create of the stream then finds ours
// (jetstream.ErrStreamNameAlreadyInUse: it differs by the start time). It
// returns the source's start (nil: from the beginning of stream).
func provisionGroup(ctx context.Context, js jetstream.JetStream, stream, name string, partitions uint,
	filter pcgroups.PartitioningFilter) (*time.Time, error) {
	start, err := schema.CreateGroupStream(ctx, js, stream, name, partitions, filter.Filter, filter.PartitioningWildcards)
	if err != nil {
		return nil, err
	}
	_, err = pcgroups.CreateElastic(ctx, js, stream, name, partitions, []pcgroups.PartitioningFilter{filter}, 0, 0)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil, err
	}
	return start, nil
}

func cmdAccountsConf(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("accounts-conf", flag.ContinueOnError)
	sensors := fs.String("sensors", "", "comma-separated sensor names")
	out := fs.String("o", "", "output file (default: stdout)")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	if *sensors == "" {
		return usageError{errors.New("-sensors is required")}
	}
	conf, err := perms.AccountsConf(strings.Split(*sensors, ","))
	if err != nil {
		return usageError{err}
	}
	if *out == "" {
		_, err = io.WriteString(stdout, conf)
		return err
	}
	return os.WriteFile(*out, []byte(conf), 0o600)
}

// cmdGroup lists the members of an enricher consumer group (the elastic
// pcgroups group -consume.group on PACKETS, enricher/README.md "Scaling")
// and adds or deletes members first when asked. An enricher joins its group
// at start (-consume.join) but never leaves it: a member that is stopped
// for good keeps its partitions, which then wait unconsumed, until it is
// deleted here; pcgroups then gives them to the remaining members, which
// replay their unacked messages with the group's checkpoints. It prints
// the membership and which members have a consumer (are running).
// With -stream FLOWS it works on the detectors' groups: the originator
// group -group and its target group (schema.DetectorTargetGroup) together;
// a detector leaves both at a clean stop (-consume.leave), so this is for
// one stopped for good without it.
func cmdGroup(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("group", flag.ContinueOnError)
	url := fs.String("nats.url", "nats://127.0.0.1:4222", "NATS server URLs, comma-separated")
	creds := fs.String("nats.creds", "", "credentials file of an admin user")
	ca := fs.String("nats.tls-ca", "", "PEM CA file that signs the servers' certificates (default: the system roots)")
	group := fs.String("group", perms.EnricherGroup, "consumer group name (the enrichers' -consume.group; with -stream FLOWS the detectors' -consume.group, default "+schema.DetectorGroup+")")
	stream := fs.String("stream", schema.StreamPackets, "stream of the group: "+schema.StreamPackets+" (enrichers) or "+schema.StreamFlows+" (detectors: the group and its target group)")
	add := fs.String("add", "", "comma-separated member names to add")
	remove := fs.String("remove", "", "comma-separated member names to delete")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	groups := []string{*group}
	switch *stream {
	case schema.StreamPackets:
	case schema.StreamFlows:
		if !isSet(fs, "group") {
			*group = schema.DetectorGroup
		}
		groups = []string{*group, schema.DetectorTargetGroup(*group)}
	default:
		return usageError{fmt.Errorf("-stream %q: want %s or %s", *stream, schema.StreamPackets, schema.StreamFlows)}
	}
	nc, js, err := connect(*url, *creds, *ca)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, g := range groups {
		if err := groupMembers(ctx, js, *stream, g, names(*add), names(*remove), stdout); err != nil {
			return err
		}
	}
	return nil
}

// isSet reports whether flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// groupMembers adds and deletes members of the elastic group on stream
// and prints its membership.
func groupMembers(ctx context.Context, js jetstream.JetStream, stream, group string, add, remove []string, stdout io.Writer) error {
	if a := add; len(a) > 0 {
		if _, err := pcgroups.AddMembers(ctx, js, stream, group, a); err != nil {
			return fmt.Errorf("add members %v to group %s: %w", a, group, err)
		}
	}
	if r := remove; len(r) > 0 {
		if _, err := pcgroups.DeleteMembers(ctx, js, stream, group, r); err != nil {
			return fmt.Errorf("delete members %v from group %s: %w", r, group, err)
		}
	}
	c, err := pcgroups.GetElasticConsumerGroupConfig(ctx, js, stream, group)
	if err != nil {
		return fmt.Errorf("group %s on %s: %w", group, stream, err)
	}
	active, err := pcgroups.ListElasticActiveMembers(ctx, js, stream, group)
	if err != nil {
		return fmt.Errorf("active members of group %s: %w", group, err)
	}
	fmt.Fprintf(stdout, "group %s on %s: %d partitions\n", group, stream, c.MaxMembers)
	for _, m := range c.Members {
		state := "no consumer (not running)"
		if slices.Contains(active, m) {
			state = "consuming"
		}
		fmt.Fprintf(stdout, "member %s: %d partitions, %s\n", m, len(pcgroups.ElasticGetPartitionFilters(*c, m)), state)
	}
	return nil
}

// names splits a comma-separated list, dropping blanks.
func names(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// cmdProvisionSite provisions a site's leaf node (site.Provision): the SITE
// stream and the site's SENSORS bucket, in the site's own JetStream domain.
func cmdProvisionSite(args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("provision-site", flag.ContinueOnError)
	url := fs.String("nats.url", "nats://127.0.0.1:4222", "the site's leaf node")
	creds := fs.String("nats.creds", "", "credentials file of an admin user")
	ca := fs.String("nats.tls-ca", "", "PEM CA file that signs the server's certificate (default: the system roots)")
	maxAge := fs.Duration("max-age", 0, "how long the site keeps a message (0: 72h)")
	maxBytes := fs.Int64("max-bytes", 0, "disk limit of the site stream, bytes (0: 50 GiB)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parse(fs, args, getenv); err != nil {
		return err
	}
	if *maxAge < 0 || *maxBytes < 0 {
		return usageError{errors.New("-max-age and -max-bytes must not be negative")}
	}
	nc, js, err := connect(*url, *creds, *ca)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	domain, err := site.Provision(ctx, js, site.Options{MaxAge: *maxAge, MaxBytes: *maxBytes})
	if err != nil {
		return err
	}
	sc := site.StreamConfig(site.Options{MaxAge: *maxAge, MaxBytes: *maxBytes})
	fmt.Fprintf(stdout, "site domain %s: stream %s (%v, %s, %d bytes) and key-value bucket %s\n"+
		"on the hub: netwatchctl provision -sites %s (with the other sites)\n",
		domain, sc.Name, sc.Subjects, sc.MaxAge, sc.MaxBytes, schema.RegistryBucket, domain)
	return nil
}

// connect connects netwatchctl to url (comma-separated URLs; user and
// password may be in them) with an optional credentials file and CA file,
// and returns the connection (the caller closes it) and its JetStream
// context.
func connect(url, creds, ca string) (*nats.Conn, jetstream.JetStream, error) {
	opts := []nats.Option{nats.Name("netwatchctl")}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	if ca != "" {
		opts = append(opts, nats.RootCAs(ca))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
