// Command detector is the netwatch detection stage: it consumes flow records
// from FLOWS, runs the per-originator rules and the golearn flow model, and
// publishes alerts to ALERTS. `detector train` and `detector evaluate` build
// and check the model file (README.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/detector/internal/arp"
	"netwatch/detector/internal/capmodel"
	"netwatch/detector/internal/health"
	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/modelstore"
	"netwatch/detector/internal/output"
	"netwatch/detector/internal/policy"
	"netwatch/detector/internal/qname"
	"netwatch/detector/internal/report"
	"netwatch/detector/internal/rules"
	"netwatch/detector/internal/stage"
	"netwatch/detector/models"
	"netwatch/schema"
	"netwatch/schema/ops"
)

func main() {
	args := os.Args[1:]
	var err error
	switch {
	case len(args) > 0 && args[0] == "train":
		err = train(args[1:], os.Stdout, os.Getenv)
	case len(args) > 0 && args[0] == "evaluate":
		err = evaluate(args[1:], os.Stdout, os.Getenv)
	case len(args) > 0 && args[0] == "rescore":
		err = rescore(args[1:], os.Stdout, os.Stderr, os.Getenv)
	case len(args) > 0 && args[0] == "push":
		err = push(args[1:], os.Stdout, os.Stderr, os.Getenv)
	default:
		err = run(args, os.Stderr, os.Getenv)
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "detector:", err)
		os.Exit(1)
	}
}

// DefaultGCPercent is the -gc.percent default: the live heap of the rule
// and host windows may grow 4× before a collection, which halves the CPU
// the collector takes on the stage's path (BenchmarkHandle, README
// Performance) for a larger heap.
const DefaultGCPercent = 400

// Config is the detector service configuration.
type Config struct {
	ops.Common
	Model          string        // -model: model file; empty means the shipped model built into the binary
	QNameModel     string        // -qname.model: query-name model file for dns_tunnel; empty means the shipped one
	HostModel      string        // -host.model: per-host anomaly model file; empty means the shipped one, "off" none
	GCPercent      int           // -gc.percent: Go GC target percentage (debug.SetGCPercent); GOGC in the environment wins
	ModelAlerts    bool          // -model.alerts
	ModelThreshold float64       // -model.threshold
	ModelWindow    time.Duration // -model.window
	Rules          rules.Config
	ARP            arp.Config
	FetchBatch     int
	Replicas       int
	Provision      bool // -nats.provision: create or update the streams and durables at start (else wait for them)
	Health         health.Config
	HealthCheck    time.Duration // -health.check; 0 turns the health rules off
	ConfigFile     string        // -config
	Webhook        string        // -output.webhook
	Syslog         string        // -output.syslog
	ModelsBucket   string        // -models.bucket: object store of models (modelstore); "" off
	HostScores     string        // -host.scores-bucket: key-value bucket of host window scores; "" off
	HostScoresTTL  time.Duration // -host.scores-ttl
	Group          stage.Group   // -consume.group and the other -consume.* group flags
}

func (c *Config) register(fs *flag.FlagSet) {
	c.Common.Register(fs, "127.0.0.1:9103")
	fs.StringVar(&c.ConfigFile, "config", "", "YAML or JSON file with allow-lists and per-rule thresholds (flag names without the dash); reloaded when it changes and on SIGHUP")
	fs.StringVar(&c.Model, "model", "", "model file written by `detector train` (empty: the shipped "+models.FlowID3Name+" built into the binary)")
	fs.StringVar(&c.QNameModel, "qname.model", "", "DNS query-name model file for the dns_tunnel rule, written by `detector train -format qnames` (empty: the shipped "+models.QNameID3Name+" built into the binary)")
	fs.StringVar(&c.HostModel, "host.model", "", "per-host anomaly model written by `detector train -format hosts` (empty: the shipped "+models.HostIForestName+" built into the binary; off: none); its score annotates alerts (evidence host_anomaly) and GET /hosts, it never raises an alert")
	fs.BoolVar(&c.ModelAlerts, "model.alerts", false, "publish category \"anomaly\" alerts for flows the model scores at or above -model.threshold")
	fs.Float64Var(&c.ModelThreshold, "model.threshold", 0.95, "model score (attack probability, 0..1) that makes a flow anomalous")
	fs.DurationVar(&c.ModelWindow, "model.window", time.Minute, "at most one anomaly alert per originator, responder and window (packet time)")
	registerThresholds(fs, &c.Rules, &c.ARP)
	dh := health.DefaultConfig()
	fs.Float64Var(&c.Health.SilentIntervals, "health.silent-intervals", dh.SilentIntervals, "a sensor is silent after this many of its METRICS intervals without a message")
	fs.DurationVar(&c.Health.MinInterval, "health.min-interval", dh.MinInterval, "floor of a sensor's METRICS interval estimate")
	fs.Float64Var(&c.Health.DropRatio, "health.drop-ratio", dh.DropRatio, "capture drops / (received + drops) between two samples that raise a health alert")
	fs.Uint64Var(&c.Health.DropMin, "health.drop-min", dh.DropMin, "and at least this many drops between the two samples")
	fs.Float64Var(&c.Health.DiskRatio, "health.disk-ratio", dh.DiskRatio, "used / total of a monitored host's file system that raises a health alert")
	fs.Uint64Var(&c.Health.LagPending, "health.lag-pending", dh.LagPending, "messages pending on a durable consumer of the pipeline that raise a health alert")
	fs.DurationVar(&c.Health.Window, "health.window", dh.Window, "one health alert per rule, sensor and target per window (wall clock)")
	fs.DurationVar(&c.HealthCheck, "health.check", 10*time.Second, "how often silence and consumer lag are checked; 0 turns the health rules off")
	fs.StringVar(&c.Webhook, "output.webhook", "", "also POST every alert as JSON to this http(s) URL (bounded queue, retries with backoff)")
	fs.StringVar(&c.Syslog, "output.syslog", "", "also send every alert as an RFC 5424 syslog message to udp://host:port, tcp://host:port or host:port (UDP)")
	fs.IntVar(&c.FetchBatch, "consume.batch", 256, "FLOWS messages per pull request")
	g := &c.Group
	fs.StringVar(&g.Name, "consume.group", "", "consume FLOWS through this elastic partitioned consumer group (per-originator rules, partitioned by originator) and the group NAME-targets (per-target rules, partitioned by responder), so several detectors share the work (README \"Scaling\"); empty: the shared durable "+schema.ConsumerDetector+", one instance")
	fs.StringVar(&g.Member, "consume.member", "", "member name in both groups; stable across restarts (default: the host name)")
	fs.UintVar(&g.Partitions, "consume.partitions", schema.DetectorGroupPartitions, "partitions (max members) of each group when this instance creates it")
	fs.DurationVar(&g.AckWait, "consume.ack-wait", time.Minute, "AckWait of the group's member consumers, also the pinned TTL of a hot standby (same -consume.member)")
	fs.BoolVar(&g.Join, "consume.join", true, "add -consume.member to both groups' membership at start")
	fs.BoolVar(&g.Leave, "consume.leave", true, "remove -consume.member from both memberships at a clean stop, so the other members take its partitions at once (false with hot standbys)")
	fs.StringVar(&c.ModelsBucket, "models.bucket", modelstore.DefaultBucket, "JetStream object store bucket of models (objects flow, qname, host; `detector push` puts them): the newest of each kind is loaded at start and whenever it changes, for each kind whose file flag (-model, -qname.model, -host.model) is empty; empty: off")
	fs.StringVar(&c.HostScores, "host.scores-bucket", stage.HostScoresBucket, "JetStream key-value bucket the host anomaly score of every closed host window is written to (key sensor.addr.window_start_s), so flows can be annotated with their hosts' scores; empty: off")
	fs.DurationVar(&c.HostScoresTTL, "host.scores-ttl", 24*time.Hour, "age at which host scores expire from -host.scores-bucket (FLOWS keeps 24 h)")
	fs.IntVar(&c.GCPercent, "gc.percent", DefaultGCPercent, "Go garbage collector target: heap growth in percent of the live heap before a collection (Go's default 100); higher spends less CPU on GC for more memory; ignored when GOGC is set")
	fs.BoolVar(&c.Provision, "nats.provision", true, "create or update the streams and durable consumers at start; false with the least-privilege detector user, which waits for netwatchctl provision")
	fs.IntVar(&c.Replicas, "stream.replicas", 1, "stream and consumer replicas when provisioning (1 on one node, 3 on a cluster)")
}

// registerThresholds defines the rule flags (the ones a -config file may
// override) on fs, bound to r and a, with their defaults.
func registerThresholds(fs *flag.FlagSet, r *rules.Config, a *arp.Config) {
	d := rules.DefaultConfig()
	fs.Func("community-id.seed", "Community ID v1 seed (0..65535) of the example Community IDs the live packet path puts in alerts: the enricher's -community-id.seed (default 0)", func(v string) error {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return fmt.Errorf("%q: want 0..65535", v)
		}
		r.CommunityIDSeed = uint16(n)
		return nil
	})
	fs.IntVar(&r.PortscanPorts, "portscan.ports", d.PortscanPorts, "distinct probed ports from one originator to one responder in a window that make a port scan")
	fs.DurationVar(&r.PortscanWindow, "portscan.window", d.PortscanWindow, "port scan tumbling window (packet time, aligned to the Unix epoch)")
	fs.DurationVar(&r.PortscanFast, "portscan.fast", d.PortscanFast, "a scan that reaches -portscan.ports within this time of its first probe is severity high, else medium")
	fs.IntVar(&r.PortscanFlagProbes, "portscan.flag-probes", d.PortscanFlagProbes, "distinct (port, flags) NULL, FIN, Xmas or other flag probes from one originator to one responder in a window that make a port scan on their own (0: off)")
	fs.IntVar(&r.SweepHosts, "hostsweep.hosts", d.SweepHosts, "distinct probed responders on one port (or ICMP echo) from one originator in a window that make a host sweep")
	fs.DurationVar(&r.SweepWindow, "hostsweep.window", d.SweepWindow, "host sweep tumbling window (packet time)")
	fs.DurationVar(&r.SweepFast, "hostsweep.fast", d.SweepFast, "a sweep that reaches -hostsweep.hosts within this time is severity high, else medium")
	fs.DurationVar(&r.FloodWindow, "flood.window", d.FloodWindow, "syn_flood, udp_flood and icmp_flood tumbling window (packet time)")
	fs.IntVar(&r.SynFloodPkts, "synflood.pkts", d.SynFloodPkts, "SYNs of half-open TCP flows to one responder in a flood window that make a SYN flood (and at least 10 per distinct port)")
	fs.IntVar(&r.UDPFloodPkts, "udpflood.pkts", d.UDPFloodPkts, "UDP packets to one responder in a flood window that make a UDP flood")
	fs.IntVar(&r.ICMPFloodPkts, "icmpflood.pkts", d.ICMPFloodPkts, "ICMP request packets (not errors or replies) to one responder in a flood window that make an ICMP flood")
	fs.DurationVar(&r.BruteWindow, "bruteforce.window", d.BruteWindow, "brute-force tumbling window (packet time)")
	fs.IntVar(&r.BruteSessions, "bruteforce.sessions", d.BruteSessions, "sessions from one originator to one login service (SSH, FTP, Telnet, RDP, SMB, databases, mail, VNC) in a window that make a brute force")
	fs.IntVar(&r.BruteHTTP, "bruteforce.http-sessions", d.BruteHTTP, "sessions from one originator to one HTTP port with same-size responses in a window that make a brute force")
	fs.DurationVar(&r.DNSWindow, "dnstunnel.window", d.DNSWindow, "DNS tunnel tumbling window (packet time)")
	fs.IntVar(&r.DNSLong, "dnstunnel.long", d.DNSLong, "long high-entropy query names under one parent domain from one originator in a window that make a DNS tunnel")
	fs.IntVar(&r.DNSUnique, "dnstunnel.unique", d.DNSUnique, "distinct subdomains of one parent domain queried by one originator in a window that make a DNS tunnel")
	fs.IntVar(&r.DNSQueries, "dnstunnel.queries", d.DNSQueries, "DNS query packets for names under one parent domain from one originator in a window that make a DNS tunnel")
	fs.IntVar(&r.DNSModel, "dnstunnel.model-names", d.DNSModel, "query names under one parent domain from one originator in a window that the query-name model (-qname.model) classifies as tunnel and that make a DNS tunnel")
	fs.IntVar(&r.DNSTxtNull, "dnstunnel.txt-null", d.DNSTxtNull, "DNS query packets of type TXT or NULL for names under one parent domain from one originator in a window (and at least half of its queries) that make a DNS tunnel")
	fs.DurationVar(&r.DGAWindow, "dga.window", d.DGAWindow, "DGA tumbling window (packet time)")
	fs.IntVar(&r.DGADomains, "dga.domains", d.DGADomains, "distinct random-looking domains answered NXDOMAIN to one originator in a window that make a DGA alert")
	fs.IntVar(&r.AmpPkts, "amplification.pkts", d.AmpPkts, "unsolicited response packets (UDP from an amplification port, TCP SYN-ACK/RST) to one target in a flood window that make a reflection/amplification attack")
	fs.IntVar(&r.AmpSources, "amplification.sources", d.AmpSources, "distinct reflectors needed for an amplification alert")
	fs.DurationVar(&r.BeaconWindow, "beacon.window", d.BeaconWindow, "beaconing tumbling window (packet time)")
	fs.IntVar(&r.BeaconConns, "beacon.conns", d.BeaconConns, "connections from one originator to one responder service in a window before beaconing is judged")
	fs.DurationVar(&r.BeaconMinPeriod, "beacon.min-period", d.BeaconMinPeriod, "shortest mean time between connections that counts as beaconing")
	fs.Float64Var(&r.BeaconMaxCV, "beacon.max-cv", d.BeaconMaxCV, "largest coefficient of variation (std/mean) of the times between connections that counts as beaconing")
	fs.IntVar(&r.MaxKeys, "rules.max-keys", d.MaxKeys, "most open rule windows kept in memory; beyond it the oldest are dropped")
	da := arp.DefaultConfig()
	fs.DurationVar(&a.Window, "arp.window", da.Window, "arp_spoof alert window (packet time): one alert per claimed address, MAC and trigger per window")
	fs.DurationVar(&a.BindingTTL, "arp.binding-ttl", da.BindingTTL, "an IPv4 → MAC binding not refreshed for this long (packet time) is forgotten")
	fs.DurationVar(&a.AskTTL, "arp.ask-ttl", da.AskTTL, "how long a who-has is remembered: a reply within it is solicited")
	fs.IntVar(&a.Replies, "arp.replies", da.Replies, "unsolicited or gratuitous ARP replies from one MAC in a window that make a reply flood")
	fs.IntVar(&a.SweepHosts, "arp.sweep-hosts", da.SweepHosts, "distinct addresses one sender asks for (ARP who-has) in a window that make a host sweep (category hostsweep)")
	fs.IntVar(&a.MaxEntries, "arp.max-entries", da.MaxEntries, "most ARP bindings, questions and counters kept")
}

// thresholds returns base with p's threshold overrides applied, validated.
func thresholds(p *policy.Policy, baseRules rules.Config, baseARP arp.Config) (rules.Config, arp.Config, error) {
	fs := flag.NewFlagSet("thresholds", flag.ContinueOnError)
	var r rules.Config
	var a arp.Config
	registerThresholds(fs, &r, &a)
	r, a = baseRules, baseARP
	if err := p.Apply(fs); err != nil {
		return r, a, err
	}
	if err := errors.Join(r.Validate(), a.Validate()); err != nil {
		return r, a, err
	}
	return r, a, nil
}

// Validate reports every invalid field.
func (c *Config) Validate() error {
	errs := []error{c.Common.Validate(), c.Rules.Validate(), c.ARP.Validate()}
	if g := &c.Group; g.Name != "" {
		if g.Member == "" {
			g.Member, _ = os.Hostname()
		}
		if err := schema.ValidSensor(g.Name); err != nil {
			errs = append(errs, fmt.Errorf("-consume.group: %w", err))
		}
		if err := schema.ValidSensor(g.Member); err != nil {
			errs = append(errs, fmt.Errorf("-consume.member: %w", err))
		}
		if g.Partitions < 1 || g.Partitions > 1024 {
			errs = append(errs, fmt.Errorf("-consume.partitions %d: want 1..1024", g.Partitions))
		}
		if g.AckWait < time.Second {
			errs = append(errs, fmt.Errorf("-consume.ack-wait %s: want at least 1s", g.AckWait))
		}
	}
	if c.HealthCheck < 0 {
		errs = append(errs, fmt.Errorf("-health.check %s: want >= 0", c.HealthCheck))
	} else if c.HealthCheck > 0 {
		errs = append(errs, c.Health.Validate())
	}
	if c.ModelThreshold < 0 || c.ModelThreshold > 1 {
		errs = append(errs, fmt.Errorf("-model.threshold %v: want 0..1", c.ModelThreshold))
	}
	if c.ModelWindow < time.Second {
		errs = append(errs, fmt.Errorf("-model.window %s: want at least 1s", c.ModelWindow))
	}
	if c.FetchBatch < 1 {
		errs = append(errs, fmt.Errorf("-consume.batch %d: want at least 1", c.FetchBatch))
	}
	if c.GCPercent < 10 || c.GCPercent > 10000 {
		errs = append(errs, fmt.Errorf("-gc.percent %d: want 10..10000", c.GCPercent))
	}
	if c.Webhook != "" {
		if u, err := url.Parse(c.Webhook); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("-output.webhook %q: want an http:// or https:// URL", c.Webhook))
		}
	}
	if c.Syslog != "" {
		if _, _, err := output.ParseSyslogAddr(c.Syslog); err != nil {
			errs = append(errs, fmt.Errorf("-output.syslog: %w", err))
		}
	}
	if c.Replicas != 1 && c.Replicas != 3 {
		errs = append(errs, fmt.Errorf("-stream.replicas %d: want 1 or 3", c.Replicas))
	}
	if c.HostScoresTTL < time.Minute {
		errs = append(errs, fmt.Errorf("-host.scores-ttl %s: want at least 1m", c.HostScoresTTL))
	}
	return errors.Join(errs...)
}

// loadModel loads path, or the shipped model when path is empty.
func loadModel(path string) (*model.Tree, error) {
	if path != "" {
		return model.Load(path)
	}
	f, err := os.CreateTemp("", "netwatch-model-*")
	if err != nil {
		return nil, fmt.Errorf("load shipped model: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(models.FlowID3); err != nil {
		f.Close()
		return nil, fmt.Errorf("load shipped model: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("load shipped model: %w", err)
	}
	return model.Load(f.Name())
}

func run(args []string, stderr io.Writer, getenv func(string) string) error {
	var cfg Config
	fs := flag.NewFlagSet("detector", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	var pol *policy.Policy
	var err error
	ruleCfg, arpCfg := cfg.Rules, cfg.ARP
	if cfg.ConfigFile != "" {
		if pol, err = policy.Load(cfg.ConfigFile); err != nil {
			return err
		}
		if ruleCfg, arpCfg, err = thresholds(pol, cfg.Rules, cfg.ARP); err != nil {
			return fmt.Errorf("config %s: %w", cfg.ConfigFile, err)
		}
	}
	// A model that does not load is an error at start (issue 5): with
	// -check-config the detector exits 1; the service logs it, counts it
	// (netwatch_detector_model_load_errors_total) and runs every rule
	// without that model (a new version in the object store is loaded
	// when it arrives: flow and query-name models).
	var modelErrs []error
	tree, err := loadModel(cfg.Model)
	if err != nil {
		modelErrs, tree = append(modelErrs, fmt.Errorf("flow model: %w", err)), nil
	}
	qm, err := loadQNameModel(cfg.QNameModel)
	if err != nil {
		modelErrs, qm = append(modelErrs, fmt.Errorf("query-name model: %w", err)), nil
	}
	hm, err := loadHostModel(cfg.HostModel)
	if err != nil {
		modelErrs, hm = append(modelErrs, fmt.Errorf("host model: %w", err)), nil
	}
	hostWindow, hostName := time.Duration(0), "off"
	if hm != nil {
		if hostWindow, err = time.ParseDuration(hm.Window); err != nil || hostWindow < time.Second {
			modelErrs, hm = append(modelErrs, fmt.Errorf("host model: window %q: want a duration of at least 1s", hm.Window)), nil
		} else {
			hostName = fmt.Sprintf("%s (threshold %.4f)", hm.Name, hm.Threshold)
		}
	}
	if cfg.CheckOnly {
		if len(modelErrs) > 0 {
			return errors.Join(modelErrs...)
		}
		fmt.Fprintf(stderr, "configuration ok; model %s (%s); query-name model %s; host model %s\n", tree.Name(), tree.Meta.Eval, qm.Name, hostName)
		return nil
	}
	log := cfg.Logger(stderr, "detector")
	if getenv("GOGC") == "" {
		debug.SetGCPercent(cfg.GCPercent)
	}
	for _, e := range modelErrs {
		log.Error("model not loaded; the rules run without it", "err", e)
	}
	var scorer model.Scorer
	treeName, qmName := "none", ""
	if tree != nil {
		scorer, treeName = tree, tree.Name()
	}
	if qm != nil {
		qmName = qm.Name
	}
	log.Info("models", "model", treeName, "path", cfg.Model, "qname_model", qmName, "qname_path", cfg.QNameModel, "host_model", hostName)

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()

	nc, err := cfg.ConnectNATSInbox(ctx, "netwatch-detector", ops.StageInbox("detector"), log.With("component", "nats"))
	if err != nil {
		if ctx.Err() != nil { // signalled before NATS came up: a clean stop
			return nil
		}
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	needs := schema.Needs{Streams: []string{schema.StreamFlows, schema.StreamAlerts, schema.StreamPackets, schema.StreamMetrics},
		Consumers: map[string][]string{schema.StreamFlows: {schema.ConsumerDetector}}}
	if cfg.Group.Name != "" {
		// the groups' work-queue streams (netwatchctl provision creates
		// them; the detector user may not), instead of the durable
		needs.Consumers = nil
		needs.Streams = append(needs.Streams, schema.StreamFlows+"-"+cfg.Group.Name,
			schema.StreamFlows+"-"+schema.DetectorTargetGroup(cfg.Group.Name))
	}
	// its buckets: netwatchctl provision creates them (the detector user may not)
	if cfg.HostScores != "" {
		needs.Streams = append(needs.Streams, "KV_"+cfg.HostScores)
	}
	if cfg.ModelsBucket != "" {
		needs.Streams = append(needs.Streams, "OBJ_"+cfg.ModelsBucket)
	}
	if err := schema.ProvisionOrAwait(ctx, js, cfg.Provision, schema.StreamOptions{Replicas: cfg.Replicas, Log: log}, needs, func(missing error) {
		log.Warn("waiting for the streams (-nats.provision=false: netwatchctl provision creates them)", "missing", missing)
	}); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("provision: %w", err)
	}

	reg := ops.NewRegistry()
	var outputs []output.Output
	var closers []func(context.Context)
	om := output.NewMetrics(reg)
	if cfg.Webhook != "" {
		w := output.NewWebhook(output.WebhookConfig{URL: cfg.Webhook}, om, log.With("component", "webhook"))
		outputs, closers = append(outputs, w), append(closers, w.Close)
	}
	if cfg.Syslog != "" {
		sl, err := output.NewSyslog(output.SyslogConfig{Addr: cfg.Syslog}, om, log.With("component", "syslog"))
		if err != nil {
			return err
		}
		outputs, closers = append(outputs, sl), append(closers, sl.Close)
	}
	sc := stage.Config{Rules: ruleCfg, ARP: arpCfg, Outputs: outputs, ModelAlerts: cfg.ModelAlerts, ModelThreshold: cfg.ModelThreshold,
		ModelWindow: cfg.ModelWindow, FetchBatch: cfg.FetchBatch, HostModel: hm, HostWindow: hostWindow, Group: cfg.Group}
	if qm != nil {
		sc.NameModel, sc.NameModelName = qm, qm.Name
	}
	st := stage.New(sc, js, scorer, stage.NewMetrics(reg), log.With("component", "stage"))

	sm := st.Metrics()
	sm.ModelLoadErrors.Add(float64(len(modelErrs)))
	if pol != nil {
		st.SetPolicy(pol, ruleCfg, arpCfg)
		log.Info("config loaded", "path", cfg.ConfigFile, "policy", pol.String())
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		defer signal.Stop(hup)
		trigger := make(chan struct{})
		go func() {
			for {
				select {
				case <-hup:
					select {
					case trigger <- struct{}{}:
					case <-ctx.Done():
						return
					}
				case <-ctx.Done():
					return
				}
			}
		}()
		reload := func() error {
			p, err := policy.Load(cfg.ConfigFile)
			if err == nil {
				var r rules.Config
				var a arp.Config
				if r, a, err = thresholds(p, cfg.Rules, cfg.ARP); err == nil {
					st.SetPolicy(p, r, a)
					sm.Reloads.WithLabelValues("ok").Inc()
					log.Info("config reloaded", "path", cfg.ConfigFile, "policy", p.String())
					return nil
				}
				err = fmt.Errorf("config %s: %w", cfg.ConfigFile, err)
			}
			sm.Reloads.WithLabelValues("error").Inc()
			return err
		}
		go func() {
			err := policy.Watch(ctx, cfg.ConfigFile, trigger, reload, func(err error) {
				log.Error("config not reloaded; the previous one stays", "path", cfg.ConfigFile, "err", err)
			})
			if err != nil {
				log.Error("config file not watched (SIGHUP still reloads it)", "err", err)
				for {
					select {
					case <-trigger:
						if err := reload(); err != nil {
							log.Error("config not reloaded; the previous one stays", "path", cfg.ConfigFile, "err", err)
						}
					case <-ctx.Done():
						return
					}
				}
			}
		}()
	}

	httpCtx, stopHTTP := context.WithCancel(context.Background())
	defer stopHTTP()
	httpErr := make(chan error, 1)
	go func() {
		// Serve returns nil at once when -http.addr is empty: only a
		// failure stops the detector.
		mux := ops.Handler(reg, st.Ready)
		mux.Handle("GET /hosts", st.HostsHandler())
		if err := ops.Serve(httpCtx, cfg.HTTPAddr, mux, log.With("component", "http")); err != nil {
			httpErr <- err
		}
	}()

	// The ARP and health rules read other streams (PACKETS, METRICS,
	// consumer info) that a deployment's credentials may not allow yet:
	// their failure is logged and leaves the flow rules running.
	aux := make(chan struct{}, 4)
	go func() {
		if err := st.RunARP(ctx, cfg.Replicas); err != nil {
			log.Error("arp_spoof rule stopped; flow rules go on", "consumer", stage.ConsumerARP, "err", err)
		}
		aux <- struct{}{}
	}()
	auxRuns := 1
	if cfg.HealthCheck > 0 {
		auxRuns++
		go func() {
			if err := st.RunHealth(ctx, cfg.Health, cfg.HealthCheck); err != nil {
				log.Error("health rules stopped; flow rules go on", "err", err)
			}
			aux <- struct{}{}
		}()
	}
	// Models from the object store: the current ones before FLOWS is
	// consumed, then every new version. Like ARP and health, a store the
	// credentials do not allow leaves the loaded models in place.
	if cfg.ModelsBucket != "" {
		// a file flag pins its kind, unless that file did not load
		pinned := map[string]bool{modelstore.KindFlow: cfg.Model != "" && tree != nil, modelstore.KindQName: cfg.QNameModel != "" && qm != nil,
			modelstore.KindHost: cfg.HostModel != ""}
		if obs, err := modelstore.Open(ctx, js, cfg.ModelsBucket, cfg.Replicas); err != nil {
			log.Error("model store not watched; the models loaded at start stay", "bucket", cfg.ModelsBucket, "err", err)
		} else {
			initial := make(chan struct{})
			auxRuns++
			go func() {
				err := modelstore.Watch(ctx, obs, func(m modelstore.Model) {
					if pinned[m.Kind] {
						log.Info("model in the object store not used: its file flag is set", "kind", m.Kind, "model", m.Name(), "digest", m.Digest)
						return
					}
					if err := st.ApplyModel(m); err != nil {
						sm.ModelReloads.WithLabelValues(m.Kind, "error").Inc()
						log.Error("model in the object store not used; the previous one stays", "kind", m.Kind, "model", m.Name(), "err", err)
						return
					}
					sm.ModelReloads.WithLabelValues(m.Kind, "ok").Inc()
					log.Info("model loaded from the object store", "kind", m.Kind, "model", m.Name(), "digest", m.Digest, "bucket", cfg.ModelsBucket)
				}, func(kind string, err error) {
					sm.ModelReloads.WithLabelValues(kind, "error").Inc()
					log.Error("model in the object store not loaded; the previous one stays", "kind", kind, "err", err)
				}, initial)
				if err != nil {
					log.Error("model store not watched; the models loaded at start stay", "bucket", cfg.ModelsBucket, "err", err)
				}
				aux <- struct{}{}
			}()
			select {
			case <-initial:
			case <-time.After(10 * time.Second):
				log.Warn("model store: current models not read within 10s; consuming with the models loaded at start", "bucket", cfg.ModelsBucket)
			case <-ctx.Done():
			}
		}
	}
	// Host scores for annotating flows (HOST_SCORES key-value bucket).
	if cfg.HostScores != "" && hm != nil {
		if kv, err := stage.OpenHostScores(ctx, js, cfg.HostScores, cfg.Replicas, cfg.HostScoresTTL); err != nil {
			log.Error("host scores not written; flow rules go on", "bucket", cfg.HostScores, "err", err)
		} else {
			auxRuns++
			go func() {
				if err := st.RunHostScores(ctx, kv); err != nil {
					log.Error("host scores not written; flow rules go on", "bucket", cfg.HostScores, "err", err)
				}
				aux <- struct{}{}
			}()
		}
	}
	runErr := make(chan error, 1)
	go func() { runErr <- st.Run(ctx) }()
	select {
	case err = <-runErr:
		cancel()
	case err = <-httpErr:
		cancel()
		<-runErr
	}
	for i := 0; i < auxRuns; i++ {
		<-aux
	}
	// Data-flow order: intake stopped (Run returned, alerts published
	// synchronously), then flush the outputs (5 s at most), then NATS,
	// then stop HTTP.
	octx, ocancel := context.WithTimeout(context.Background(), 5*time.Second)
	for _, c := range closers {
		c(octx)
	}
	ocancel()
	if derr := nc.Drain(); derr != nil {
		log.Warn("drain nats", "err", derr)
	}
	stopHTTP()
	log.Info("stopped")
	return err
}

func train(args []string, stdout io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("detector train", flag.ContinueOnError)
	data := fs.String("data", "../shared/data/labeled/nsl-kdd/KDDTrain+_20Percent.txt", "NSL-KDD training file (CSV)")
	test := fs.String("test", "", "NSL-KDD test file (e.g. KDDTest+.txt); empty: hold out every fifth record of -data (see -all)")
	all := fs.Bool("all", false, "nsl-kdd: train on every record of -data (the shipped model); the meta's evaluation is then on the training records themselves")
	out := fs.String("out", filepath.Join("models", models.FlowID3Name), "model file to write")
	prune := fs.Float64("prune", 0, "golearn ID3 prune ratio (0: no pruning, deterministic)")
	name := fs.String("name", "", "model name (default flow-id3, qname-id3)")
	format := fs.String("format", "nsl-kdd", "nsl-kdd (flow model), captures (flow model trained on the labelled captures' own flows: -data the pcaps folder with its label files, -out default models/flow-captures-id3.model), qnames (DNS query-name model: -data train.csv, -test validate.csv) or hosts (per-host anomaly model: -data the pcaps folder with its label files)")
	quantile := fs.Float64("quantile", hostmodel.DefaultQuantile, "hosts: the threshold is this quantile of the benign training windows' scores")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	switch *format {
	case "captures":
		d, o := "../shared/data/pcaps", filepath.Join("models", "flow-captures-id3.model")
		if flagSet(fs, "data") {
			d = *data
		}
		if flagSet(fs, "out") {
			o = *out
		}
		if *name == "" {
			*name = "flow-captures-id3"
		}
		return trainCaptures(d, o, *name, stdout)
	case "hosts":
		d, o := "../shared/data/pcaps", filepath.Join("models", models.HostIForestName)
		if flagSet(fs, "data") {
			d = *data
		}
		if flagSet(fs, "out") {
			o = *out
		}
		return trainHosts(d, o, *quantile, stdout)
	case "qnames":
		if *name == "" {
			*name = "qname-id3"
		}
		d, o := "", ""
		if flagSet(fs, "data") {
			d = *data
		}
		if flagSet(fs, "out") {
			o = *out
		}
		return trainQNames(d, *test, o, *name, stdout)
	case "nsl-kdd":
		if *name == "" {
			*name = "flow-id3"
		}
	default:
		return fmt.Errorf("-format %q: want nsl-kdd, captures, qnames or hosts", *format)
	}
	fmt.Fprintf(stdout, "reading %s\n", *data)
	recs, err := model.ReadKDDFile(*data)
	if err != nil {
		return err
	}
	trainSet, testSet := recs, []model.Record(nil)
	source := filepath.Base(*data)
	switch {
	case *test != "":
		if testSet, err = model.ReadKDDFile(*test); err != nil {
			return err
		}
	case *all:
		testSet = recs
		source += " (every record; eval in-sample)"
	default:
		trainSet, testSet = model.Split(recs)
		source += " (records with index%5 != 4)"
	}
	var nAttack int
	for _, r := range trainSet {
		if r.Attack {
			nAttack++
		}
	}
	if nAttack == 0 || nAttack == len(trainSet) {
		// a tree of one leaf that answers the one class for every flow
		return fmt.Errorf("%s: the %d training records are all %s: a classifier needs both normal and attack records", *data, len(trainSet), map[bool]string{true: "attack", false: "normal"}[nAttack > 0])
	}
	fmt.Fprintf(stdout, "training on %d records (%s): binary ID3, 5-class ID3, isolation forest on the normal records\n", len(trainSet), model.FeatureSet)
	var t *model.Tree
	if *prune != 0 {
		t, err = model.Train(trainSet, *prune, *name) // the binary tree alone
	} else {
		t, err = model.TrainNSLKDD(trainSet, *name)
	}
	if err != nil {
		return err
	}
	t.Meta.TrainSource = source
	fmt.Fprintf(stdout, "evaluating on %d records\n", len(testSet))
	if t.Meta.Eval, err = model.Evaluate(t, testSet); err != nil {
		return err
	}
	if err := t.Save(*out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "trained %s on %d records, wrote %s\ntest split: %s\n", *name, len(trainSet), *out, t.Meta.Eval)
	return nil
}

func evaluate(args []string, stdout io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("detector evaluate", flag.ContinueOnError)
	format := fs.String("format", "nsl-kdd", "data format and model: nsl-kdd (flow model), captures (the flow classifier trained on the labelled captures, each capture scored by a tree trained without it; -data: the pcaps folder), qnames (DNS query-name model) or hosts (per-host anomaly model; -data: the pcaps folder with its label files)")
	path := fs.String("model", "", "model file (empty: the shipped model of -format)")
	data := fs.String("data", "", "file to evaluate on (default: KDDTrain+_20Percent.txt for nsl-kdd, validate.csv for qnames)")
	split := fs.Bool("split", true, "nsl-kdd: evaluate only the held-out fifth of -data (index%5 == 4) when -data is the training file; false: every record")
	holdout := fs.Bool("holdout-types", false, "nsl-kdd: instead of the shipped model, train the shipped design (model.TrainNSLKDD) on -data with whole attack types held out (two folds) and report normal/dos/probe/r2l/u2r on the held-out records; the folds go to stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	var rep report.Report
	switch *format {
	case "captures":
		// the flow classifier trained on the labelled captures' own flows,
		// each capture scored by a tree trained without it
		if *data == "" {
			*data = "../shared/data/pcaps"
		}
		fl, skipped, err := capmodel.Flows(*data, "", os.Stderr)
		if err != nil {
			return err
		}
		e, err := capmodel.LeaveOneCaptureOut(fl, skipped, capmodel.DefaultMaxPerCapture, *data)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	case "hosts":
		if *data == "" {
			*data = "../shared/data/pcaps"
		}
		f, err := loadHostModel(*path)
		if err != nil {
			return err
		}
		if f == nil {
			return errors.New("-model off: nothing to evaluate")
		}
		e, err := evaluateHosts(f, *data, os.Stderr)
		if err != nil {
			return err
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(e)
	case "nsl-kdd":
		if *data == "" {
			*data = "../shared/data/labeled/nsl-kdd/KDDTrain+_20Percent.txt"
		} else if !flagSet(fs, "split") {
			*split = false // another file: all of it
		}
		if *holdout {
			recs, err := model.ReadKDDFile(*data)
			if err != nil {
				return err
			}
			var folds []model.HoldOutFold
			if rep, folds, err = model.HoldOutTypes(recs, *data); err != nil {
				return err
			}
			for i, f := range folds {
				fmt.Fprintf(os.Stderr, "fold %d: %d training rows, %d test rows, held-out types %v\n", i, f.Train, f.Test, f.HeldOut)
			}
			break
		}
		t, err := loadModel(*path)
		if err != nil {
			return err
		}
		recs, err := model.ReadKDDFile(*data)
		if err != nil {
			return err
		}
		if *split {
			_, recs = model.Split(recs)
		}
		xs := make([]model.Features, len(recs))
		actual := make([]bool, len(recs))
		for i, r := range recs {
			xs[i], actual[i] = r.X, r.Attack
		}
		pred, err := t.Predict(xs)
		if err != nil {
			return err
		}
		p := make([]bool, len(pred))
		act5, pred5 := make([]string, len(recs)), make([]string, len(recs))
		for i, c := range pred {
			p[i] = c == model.ClassAttack
			if act5[i], err = model.Category(recs[i].Label); err != nil {
				return err
			}
			pred5[i] = t.PredictClass(xs[i])
		}
		five := report.Multi(t.Name(), *format, *data, model.CatNormal,
			append(append([]string(nil), model.Categories...), model.UnknownAttack), act5, pred5)
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(kddReport{report.Binary(t.Name(), *format, *data, model.ClassNormal, model.ClassAttack, actual, p), &five})
	case "qnames":
		if *data == "" {
			*data = "../shared/data/labeled/dns-tunnel-qnames/validate.csv"
		}
		m, err := loadQNameModel(*path)
		if err != nil {
			return err
		}
		recs, err := qname.ReadFile(*data)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return fmt.Errorf("%s: no query names", *data)
		}
		names := make([]string, len(recs))
		actual := make([]bool, len(recs))
		for i, r := range recs {
			names[i], actual[i] = r.Name, r.Tunnel
		}
		pred, err := m.Predict(names)
		if err != nil {
			return err
		}
		rep = report.Binary(m.Name, *format, *data, qname.ClassBenign, qname.ClassTunnel, actual, pred)
	default:
		return fmt.Errorf("-format %q: want nsl-kdd, captures, qnames or hosts", *format)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// kddReport is `detector evaluate -format nsl-kdd`'s JSON: the binary
// report (attack vs normal) at the top level and the 5-class one
// (model.Tree.PredictClass: normal, dos, probe, r2l, u2r, unknown_attack)
// under five_class.
type kddReport struct {
	report.Report
	FiveClass *report.Report `json:"five_class"`
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// loadQNameModel loads path, or the shipped query-name model when empty.
func loadQNameModel(path string) (*qname.Model, error) {
	if path != "" {
		return qname.Load(path)
	}
	f, err := os.CreateTemp("", "netwatch-qname-*")
	if err != nil {
		return nil, fmt.Errorf("load shipped qname model: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(models.QNameID3); err != nil {
		f.Close()
		return nil, fmt.Errorf("load shipped qname model: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("load shipped qname model: %w", err)
	}
	return qname.Load(f.Name())
}

// loadHostModel loads path, or the shipped host model when empty; "off"
// is no model (nil, nil).
func loadHostModel(path string) (*hostmodel.Forest, error) {
	if path == "off" {
		return nil, nil
	}
	if path != "" {
		return hostmodel.Load(path)
	}
	f, err := hostmodel.Parse(models.HostIForest)
	if err != nil {
		return nil, fmt.Errorf("load shipped host model: %w", err)
	}
	return f, nil
}

// hostRows reads the label files of the pcaps folder and computes the host
// windows of its labelled captures with tshark (progress on stderr).
func hostRows(pcaps string, progress io.Writer) ([]hostmodel.Row, error) {
	caps, err := hostmodel.ReadLabels(pcaps)
	if err != nil {
		return nil, err
	}
	return hostmodel.Rows(pcaps, caps, hostmodel.DefaultWindow, "", progress)
}

// evaluateHosts evaluates f on the labelled captures of pcaps.
func evaluateHosts(f *hostmodel.Forest, pcaps string, progress io.Writer) (*hostmodel.Eval, error) {
	rows, err := hostRows(pcaps, progress)
	if err != nil {
		return nil, err
	}
	return hostmodel.Evaluate(f, rows, pcaps)
}

// trainHosts trains the per-host anomaly model (detector train -format
// hosts) on the benign captures of the label files and evaluates it.
func trainHosts(pcaps, out string, q float64, stdout io.Writer) error {
	if !(q > 0 && q <= 1) {
		return fmt.Errorf("-quantile %v: want 0 < q <= 1", q)
	}
	fmt.Fprintf(stdout, "computing host windows (%s) of the labelled captures in %s with tshark\n", hostmodel.DefaultWindow, pcaps)
	rows, err := hostRows(pcaps, os.Stderr)
	if err != nil {
		return err
	}
	f, err := hostmodel.Train(rows, hostmodel.DefaultParams(), q)
	if err != nil {
		return err
	}
	f.Window = hostmodel.DefaultWindow.String()
	f.Train.Source = "pcap-labels.csv, lab/labels.csv: benign captures"
	fmt.Fprintf(stdout, "fitted golearn isolation forest %+v on %d benign host windows of %d captures; threshold %.4f (quantile %.2f)\n",
		f.Params, f.Train.Rows, len(f.Train.Captures), f.Threshold, q)
	fmt.Fprintln(stdout, "evaluating (benign captures held out one at a time)")
	if f.Eval, err = hostmodel.Evaluate(f, rows, pcaps); err != nil {
		return err
	}
	if err := f.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s; attack windows above the threshold %d/%d, benign (held out) %d/%d\n", out,
		f.Eval.AttackAnomalous, f.Eval.AttackWindows, f.Eval.BenignAnomalous, f.Eval.BenignWindows)
	return nil
}

// trainQNames trains the query-name model (detector train -format qnames).
func trainQNames(data, test, out, name string, stdout io.Writer) error {
	if data == "" {
		data = "../shared/data/labeled/dns-tunnel-qnames/train.csv"
	}
	if test == "" {
		test = "../shared/data/labeled/dns-tunnel-qnames/validate.csv"
	}
	if out == "" {
		out = filepath.Join("models", models.QNameID3Name)
	}
	fmt.Fprintf(stdout, "reading %s\n", data)
	recs, err := qname.ReadFile(data)
	if err != nil {
		return err
	}
	var nTunnel int
	for _, r := range recs {
		if r.Tunnel {
			nTunnel++
		}
	}
	if len(recs) == 0 || nTunnel == 0 || nTunnel == len(recs) {
		return fmt.Errorf("%s: %d names, %d of them tunnel: training needs both benign and tunnel names", data, len(recs), nTunnel)
	}
	fmt.Fprintf(stdout, "training ID3 on %d names (%d features)\n", len(recs), len(qname.FeatureNames))
	m, err := qname.Train(recs, name)
	if err != nil {
		return err
	}
	if err := m.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s; evaluating on %s\n", out, test)
	return evaluate([]string{"-format", "qnames", "-model", out, "-data", test}, stdout, func(string) string { return "" })
}

// rescore is `detector rescore -from T1 -to T2`: the current rules and
// model (the service's flags, -config thresholds and allow-lists) over the
// FLOWS messages stored in [T1, T2], alerts published to ALERTS under a new
// run id (stage.Rescore); prints a JSON summary.
func rescore(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var cfg Config
	fs := flag.NewFlagSet("detector rescore", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.register(fs)
	fromS := fs.String("from", "", "start of the range, RFC 3339 (FLOWS store time)")
	toS := fs.String("to", "", "end of the range, RFC 3339 (default: now)")
	run := fs.String("run", "", "run id (default rescore-<UTC time>); the same run over the same flows gives the same alert ids")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	from, err := time.Parse(time.RFC3339Nano, *fromS)
	if err != nil {
		return fmt.Errorf("-from %q: want RFC 3339 (2026-01-02T15:04:05Z): %w", *fromS, err)
	}
	to := time.Now()
	if *toS != "" {
		if to, err = time.Parse(time.RFC3339Nano, *toS); err != nil {
			return fmt.Errorf("-to %q: want RFC 3339: %w", *toS, err)
		}
	}
	if to.Before(from) {
		return fmt.Errorf("-to %s is before -from %s", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	if *run == "" {
		*run = "rescore-" + time.Now().UTC().Format("20060102T150405Z")
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration: %w", err)
	}
	var pol *policy.Policy
	ruleCfg, arpCfg := cfg.Rules, cfg.ARP
	if cfg.ConfigFile != "" {
		if pol, err = policy.Load(cfg.ConfigFile); err != nil {
			return err
		}
		if ruleCfg, arpCfg, err = thresholds(pol, cfg.Rules, cfg.ARP); err != nil {
			return fmt.Errorf("config %s: %w", cfg.ConfigFile, err)
		}
	}
	tree, err := loadModel(cfg.Model)
	if err != nil {
		return err
	}
	qm, err := loadQNameModel(cfg.QNameModel)
	if err != nil {
		return err
	}
	hm, err := loadHostModel(cfg.HostModel)
	if err != nil {
		return err
	}
	hostWindow := time.Duration(0)
	if hm != nil {
		if hostWindow, err = time.ParseDuration(hm.Window); err != nil || hostWindow < time.Second {
			return fmt.Errorf("host model: window %q: want a duration of at least 1s", hm.Window)
		}
	}
	log := cfg.Logger(stderr, "detector-rescore")
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	nc, err := cfg.ConnectNATSInbox(ctx, "netwatch-detector-rescore", ops.StageInbox("detector"), log.With("component", "nats"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	st := stage.New(stage.Config{Rules: ruleCfg, ARP: arpCfg, ModelAlerts: cfg.ModelAlerts, ModelThreshold: cfg.ModelThreshold,
		ModelWindow: cfg.ModelWindow, FetchBatch: cfg.FetchBatch, NameModel: qm, NameModelName: qm.Name,
		HostModel: hm, HostWindow: hostWindow}, js, tree, stage.NewMetrics(ops.NewRegistry()), log.With("component", "rescore"))
	if pol != nil {
		st.SetPolicy(pol, ruleCfg, arpCfg)
	}
	// the current models: the newest in the object store, where no file
	// flag pins the kind
	if cfg.ModelsBucket != "" {
		if obs, err := js.ObjectStore(ctx, cfg.ModelsBucket); err == nil {
			ms, err := modelstore.Current(ctx, obs)
			if err != nil {
				return err
			}
			pinned := map[string]bool{modelstore.KindFlow: cfg.Model != "", modelstore.KindQName: cfg.QNameModel != "",
				modelstore.KindHost: cfg.HostModel != ""}
			for _, m := range ms {
				if pinned[m.Kind] {
					continue
				}
				if err := st.ApplyModel(m); err != nil {
					return fmt.Errorf("%s model from %s: %w", m.Kind, cfg.ModelsBucket, err)
				}
				log.Info("model from the object store", "kind", m.Kind, "model", m.Name(), "digest", m.Digest)
			}
		} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("object store %s: %w", cfg.ModelsBucket, err)
		}
	}
	sum, err := st.Rescore(ctx, *run, from, to)
	if err != nil {
		return err
	}
	if err := nc.Drain(); err != nil {
		log.Warn("drain nats", "err", err)
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(sum)
}

// push implements `detector push -kind flow|qname|host -file FILE`: the
// file is parsed as a model of that kind (a file that does not load is an
// error and is not stored) and put into the -models.bucket object store,
// where every running detector picks it up (modelstore.Watch). Prints one
// JSON object: bucket, kind, model, size, digest.
func push(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	var common ops.Common
	fs := flag.NewFlagSet("detector push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	common.Register(fs, "")
	kind := fs.String("kind", "", "model kind: flow (-model files), qname (-qname.model) or host (-host.model)")
	file := fs.String("file", "", "model file written by `detector train`")
	bucket := fs.String("models.bucket", modelstore.DefaultBucket, "object store bucket of models")
	replicas := fs.Int("stream.replicas", 1, "replicas of the bucket when it is created (3 on a cluster)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return err
	}
	if *file == "" || *kind == "" || *bucket == "" {
		return fmt.Errorf("push: -kind, -file and -models.bucket are required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	m, err := modelstore.Parse(*kind, data)
	if err != nil {
		return fmt.Errorf("push %s: %w", *file, err)
	}
	log := common.Logger(stderr, "detector-push")
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	nc, err := common.ConnectNATSInbox(ctx, "netwatch-detector-push", ops.StageInbox("detector"), log.With("component", "nats"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	obs, err := modelstore.Open(ctx, js, *bucket, *replicas)
	if err != nil {
		return err
	}
	info, err := modelstore.Put(ctx, obs, *kind, data)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(map[string]any{"bucket": *bucket, "kind": *kind, "model": m.Name(),
		"size": info.Size, "digest": info.Digest})
}

// trainCaptures trains the flow classifier on the labelled captures' own
// flows (detector train -format captures): every capture's flows (tshark,
// at most capmodel.DefaultMaxPerCapture each) train one golearn ID3 tree of
// the shipped flow model's format, written to out; the leave-one-capture-out
// figures go into its meta and to stdout.
func trainCaptures(pcaps, out, name string, stdout io.Writer) error {
	fmt.Fprintf(stdout, "building flows of the labelled captures in %s with tshark\n", pcaps)
	fl, skipped, err := capmodel.Flows(pcaps, "", os.Stderr)
	if err != nil {
		return err
	}
	for _, s := range skipped {
		fmt.Fprintf(stdout, "skipped %s\n", s)
	}
	recs := capmodel.Cap(fl, capmodel.DefaultMaxPerCapture)
	fmt.Fprintf(stdout, "training ID3 on %d flows (at most %d per capture) of %d\n", len(recs), capmodel.DefaultMaxPerCapture, len(fl))
	t, err := model.Train(recs, 0, name)
	if err != nil {
		return err
	}
	t.Meta.TrainSource = "pcap-labels.csv, lab/labels.csv: flows of the labelled captures (tshark, per 5-tuple)"
	fmt.Fprintln(stdout, "evaluating, one capture held out at a time")
	e, err := capmodel.LeaveOneCaptureOut(fl, skipped, capmodel.DefaultMaxPerCapture, pcaps)
	if err != nil {
		return err
	}
	m := e.Confusion.Matrix // rows benign, attack
	t.Meta.Eval = model.Evaluation{N: e.N, TN: m[0][0], FP: m[0][1], FN: m[1][0], TP: m[1][1], Accuracy: e.BinaryAccuracy,
		Precision: e.Classes["attack"].Precision, Recall: e.Classes["attack"].Recall, F1: e.Classes["attack"].F1}
	if err := t.Save(out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s; held out by capture: %s\n", out, t.Meta.Eval)
	return nil
}
