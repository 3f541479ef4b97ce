// Command enricher turns PACKETS into FLOWS and COUNTERS: it aggregates
// packet summaries into bidirectional flow records with Community ID,
// application, direction, GeoIP/ASN, names from DNS answers and features,
// publishes them, and publishes per-second traffic counters per sensor (see
// ../../README.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/enricher/internal/consume"
	"netwatch/enricher/internal/counters"
	"netwatch/enricher/internal/flow"
	"netwatch/enricher/internal/geo"
	"netwatch/enricher/internal/names"
	"netwatch/schema"
	"netwatch/schema/ops"
)

// defaultLocalNets are RFC 1918, RFC 6598 shared, link-local and RFC 4193 ULA.
const defaultLocalNets = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,169.254.0.0/16,fc00::/7,fe80::/10"

// Config is the enricher's configuration (flag > NETWATCH_* > default).
type Config struct {
	ops.Common
	Stage     consume.Config
	LocalNets string // -local-nets, comma-separated CIDRs; empty leaves Flow.Direction empty
	Seed      uint   // -community-id.seed
	Replicas  int    // -nats.replicas of the provisioned streams
	Provision bool   // -nats.provision: create or update the streams and durables at start (else wait for them)
	GeoCity   string // -geoip.city, a MaxMind City (or Country) database; empty for none
	GeoASN    string // -geoip.asn, a MaxMind ASN database; empty for none
	GeoCache  int    // -geoip.cache, addresses whose lookups are cached

	geo *geo.DB // opened by Validate
}

// DefaultMaxFlows is the default of -flow.max-flows: about 590 MB of flow
// state at the measured 590 bytes per open flow (README "Benchmarks",
// BenchmarkMemoryPerFlow).
const DefaultMaxFlows = 1_000_000

func (c *Config) register(fs *flag.FlagSet) {
	c.Common.Register(fs, "127.0.0.1:9102")
	d := flow.DefaultConfig()
	f := &c.Stage.Flow
	fs.DurationVar(&f.IdleTCP, "flow.idle-timeout.tcp", d.IdleTCP, "idle timeout of TCP flows, packet time (Zeek tcp_inactivity_timeout)")
	fs.DurationVar(&f.IdleUDP, "flow.idle-timeout.udp", d.IdleUDP, "idle timeout of UDP flows (Zeek udp_inactivity_timeout)")
	fs.DurationVar(&f.IdleICMP, "flow.idle-timeout.icmp", d.IdleICMP, "idle timeout of ICMP/ICMPv6 flows (Zeek icmp_inactivity_timeout)")
	fs.DurationVar(&f.IdleOther, "flow.idle-timeout.other", d.IdleOther, "idle timeout of other IP protocols")
	fs.DurationVar(&f.Active, "flow.active-timeout", d.Active, "active timeout: longer flows emit interim records (0: off)")
	fs.DurationVar(&f.CloseLinger, "flow.close-linger", d.CloseLinger, "time a TCP flow stays after FIN both ways or RST, for the last ACKs (0: end at once)")
	fs.BoolVar(&f.Features, "flow.features", false, "fill the features map of flow records (the detector does not need it)")
	fs.DurationVar(&c.Stage.WallTick, "flow.wall-tick", 5*time.Second, "how often an idle bucket's clock follows the wall clock")
	fs.DurationVar(&c.Stage.WatermarkSilence, "flow.watermark-silence", 30*time.Second,
		"a sensor whose agent sent a watermark within it moves its flow clocks by watermarks only (not the wall clock)")
	fs.StringVar(&c.LocalNets, "local-nets", defaultLocalNets, "local networks (CIDRs, comma-separated) for flow direction")
	fs.UintVar(&c.Seed, "community-id.seed", 0, "Community ID seed (0..65535)")
	fs.IntVar(&c.Stage.Publish.MaxFlows, "publish.max-flows", 256, "flows per FlowBatch message")
	fs.DurationVar(&c.Stage.Publish.Linger, "publish.linger", 100*time.Millisecond, "longest a flow waits for its batch to fill")
	fs.IntVar(&c.Stage.Publish.MaxInflight, "publish.max-inflight", 256, "FlowBatch messages awaiting acknowledgement")
	fs.IntVar(&c.Stage.PullBatch, "consume.pull-batch", 500, "PACKETS messages per pull request")
	fs.DurationVar(&c.Stage.KeepAlive, "consume.keepalive", 30*time.Second, "InProgress interval of held PACKETS messages (AckWait is 2m)")
	fs.BoolVar(&c.Stage.ShutdownFlush, "shutdown.flush", true, "on SIGTERM end open flows as END_SHUTDOWN and ack; false leaves them for redelivery")
	fs.DurationVar(&c.Stage.DrainTimeout, "shutdown.timeout", 30*time.Second, "longest wait for flow publish acks at shutdown")
	fs.BoolVar(&c.Provision, "nats.provision", true, "create or update the streams and durable consumers at start; false with the least-privilege enricher user, which waits for netwatchctl provision")
	fs.IntVar(&c.Replicas, "nats.replicas", 1, "stream replicas when provisioning (1 on one node, 3 on a cluster)")
	fs.IntVar(&c.Stage.MaxFlows, "flow.max-flows", DefaultMaxFlows, "open flows in all flow tables; at the limit the least recently active flow of the table is ended early (0: no bound)")
	fs.StringVar(&c.GeoCity, "geoip.city", "", "MaxMind GeoIP2/GeoLite2 City (or Country) database file for orig_/resp_country and _city")
	fs.StringVar(&c.GeoASN, "geoip.asn", "", "MaxMind GeoLite2/GeoIP2 ASN database file for orig_/resp_asn and _as_org")
	fs.IntVar(&c.GeoCache, "geoip.cache", geo.DefaultCacheSize, "addresses whose GeoIP/ASN lookups are cached")
	dn := names.DefaultConfig()
	fs.IntVar(&c.Stage.Names.Max, "dns.names-max", dn.Max, "addresses named from DNS answers kept per sensor")
	fs.DurationVar(&c.Stage.Names.MinTTL, "dns.names-min-ttl", dn.MinTTL, "shortest time a name from a DNS answer is kept (longer than the record's TTL if needed)")
	fs.DurationVar(&c.Stage.Names.MaxTTL, "dns.names-max-ttl", dn.MaxTTL, "longest time a name from a DNS answer is kept")
	fs.BoolVar(&c.Stage.NoNames, "dns.names-off", false, "do not name flow addresses from DNS answers")
	dc := counters.DefaultConfig()
	fs.DurationVar(&c.Stage.Counters.Lateness, "counters.lateness", dc.Lateness, "packet time a second of COUNTERS stays open behind the watermark (the oldest bucket clock)")
	fs.IntVar(&c.Stage.Counters.MaxOpen, "counters.max-open", dc.MaxOpen, "seconds of COUNTERS kept open while a bucket holds the watermark back")
	fs.IntVar(&c.Stage.Counters.Top, "counters.top", dc.Top, "responder addresses per second in COUNTERS, busiest first")
	fs.IntVar(&c.Stage.Counters.MaxAddrs, "counters.max-addrs", dc.MaxAddrs, "distinct addresses tracked per second for COUNTERS (sources, responders)")
	host, _ := os.Hostname()
	fs.StringVar(&c.Stage.Instance, "instance", host, "this instance's name in COUNTERS message ids; keep it stable across restarts (default: host name)")
	g := &c.Stage.Group
	fs.StringVar(&g.Name, "consume.group", "", "consume PACKETS through this elastic partitioned consumer group (empty: the shared durable, one instance)")
	fs.StringVar(&g.Member, "consume.member", "", "member name in -consume.group; instances with the same name are hot standbys (default: -instance)")
	fs.UintVar(&g.Partitions, "consume.partitions", 16, "partitions (max members) of -consume.group when this instance creates it")
	fs.DurationVar(&g.AckWait, "consume.ack-wait", time.Minute, "AckWait of the group's consumers, also the pinned TTL: how long a standby waits before taking over")
	fs.BoolVar(&g.Join, "consume.join", true, "add -consume.member to the group's membership at start")
}

// Validate checks the configuration and parses -local-nets.
func (c *Config) Validate() error {
	errs := []error{c.Common.Validate(), c.Stage.Flow.Validate()}
	c.Stage.Flow.LocalNets = nil
	for _, s := range strings.Split(c.LocalNets, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("-local-nets: %w", err))
			continue
		}
		c.Stage.Flow.LocalNets = append(c.Stage.Flow.LocalNets, p.Masked())
	}
	if c.Seed > 65535 {
		errs = append(errs, fmt.Errorf("-community-id.seed %d: want 0..65535", c.Seed))
	}
	c.Stage.Flow.Seed = uint16(c.Seed)
	if c.Stage.Publish.MaxFlows < 1 || c.Stage.Publish.MaxInflight < 1 || c.Stage.PullBatch < 1 {
		errs = append(errs, errors.New("-publish.max-flows, -publish.max-inflight and -consume.pull-batch must be positive"))
	}
	if c.Replicas != 1 && c.Replicas != 3 {
		errs = append(errs, fmt.Errorf("-nats.replicas %d: want 1 or 3", c.Replicas))
	}
	if c.Stage.MaxFlows < 0 {
		errs = append(errs, fmt.Errorf("-flow.max-flows %d: must not be negative", c.Stage.MaxFlows))
	}
	if c.Stage.Names.Max < 0 || c.Stage.Names.MinTTL < 0 || c.Stage.Names.MaxTTL < c.Stage.Names.MinTTL {
		errs = append(errs, errors.New("-dns.names-max must not be negative and -dns.names-max-ttl must be at least -dns.names-min-ttl"))
	}
	if c.Stage.Counters.Lateness < 0 || c.Stage.Counters.Top < 1 || c.Stage.Counters.MaxAddrs < 1 || c.Stage.Counters.MaxOpen < 1 {
		errs = append(errs, errors.New("-counters.lateness must not be negative, -counters.top, -counters.max-addrs and -counters.max-open must be positive"))
	}
	if c.Stage.Instance == "" || strings.ContainsAny(c.Stage.Instance, " \t\r\n") {
		errs = append(errs, fmt.Errorf("-instance %q: want a non-empty name without spaces", c.Stage.Instance))
	}
	if g := &c.Stage.Group; g.Name != "" {
		if g.Member == "" {
			g.Member = c.Stage.Instance
		}
		if err := schema.ValidSensor(g.Name); err != nil { // a NATS name token
			errs = append(errs, fmt.Errorf("-consume.group: %w", err))
		}
		if err := schema.ValidSensor(g.Member); err != nil {
			errs = append(errs, fmt.Errorf("-consume.member: %w", err))
		}
		if g.Partitions < 1 || g.AckWait <= c.Stage.KeepAlive {
			errs = append(errs, fmt.Errorf("-consume.partitions must be positive and -consume.ack-wait (%s) longer than -consume.keepalive (%s)", g.AckWait, c.Stage.KeepAlive))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// Open (and verify) the databases last, so a broken file is reported
	// with -check-config too.
	db, err := geo.Open(c.GeoCity, c.GeoASN, c.GeoCache)
	if err != nil {
		return err
	}
	c.geo = db
	c.Stage.Flow.Geo = db
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "enricher:", err)
		os.Exit(1)
	}
}

func run(args []string, getenv func(string) string, stderr io.Writer) error {
	fs := flag.NewFlagSet("enricher", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	cfg.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	defer cfg.geo.Close()
	if cfg.CheckOnly {
		fmt.Fprintln(stderr, "configuration ok")
		return nil
	}
	log := cfg.Logger(stderr, "enricher")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	nc, err := cfg.ConnectNATSInbox(ctx, "enricher", ops.StageInbox("enricher"), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.Stage.Publish.MaxInflight*2),
		jetstream.WithPublishAsyncTimeout(10*time.Second)) // a lost PubAck surfaces as an error and is retried
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	needs := schema.Needs{Streams: []string{schema.StreamPackets, schema.StreamFlows, schema.StreamCounters}}
	if g := cfg.Stage.Group.Name; g == "" {
		needs.Consumers = map[string][]string{schema.StreamPackets: {schema.ConsumerEnricher}}
	} else {
		// the group's work-queue stream, pcgroups' bucket and the
		// checkpoints: netwatchctl provision creates them for group
		// "enrichers" (schema/stagestate.go); the enricher user may not
		needs.Streams = append(needs.Streams, schema.StreamPackets+"-"+g, "KV_elastic-consumer-groups", "KV_"+schema.CheckpointBucket)
	}
	if err := schema.ProvisionOrAwait(ctx, js, cfg.Provision, schema.StreamOptions{Replicas: cfg.Replicas, Log: log}, needs, func(missing error) {
		log.Warn("waiting for the streams (-nats.provision=false: netwatchctl provision creates them)", "missing", missing)
	}); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	reg := ops.NewRegistry()
	cfg.Stage.Replicas = cfg.Replicas
	stage := consume.New(js, cfg.Stage, log.With("component", "consume"), consume.NewMetrics(reg))
	hctx, hcancel := context.WithCancel(context.Background())
	httpDone := make(chan error, 1)
	go func() { httpDone <- ops.Serve(hctx, cfg.HTTPAddr, ops.Handler(reg, stage.Ready), log) }()
	log.Info("enricher started", "nats_url", cfg.NATSURL, "http_addr", cfg.HTTPAddr, "instance", cfg.Stage.Instance,
		"geoip_city", cfg.GeoCity, "geoip_asn", cfg.GeoASN, "max_flows", cfg.Stage.MaxFlows)
	runErr := stage.Run(ctx) // returns after draining publishes
	hcancel()
	if err := <-httpDone; err != nil && !errors.Is(err, context.Canceled) {
		log.Error("http", "err", err)
	}
	if err := nc.Drain(); err != nil {
		log.Warn("nats drain", "err", err)
	}
	return runErr
}
