// Command enricher turns PACKETS into FLOWS: it aggregates packet summaries
// into bidirectional flow records with Community ID, application, direction
// and features, and publishes them (see ../../README.md).
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
	"netwatch/enricher/internal/flow"
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
}

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
	fs.StringVar(&c.LocalNets, "local-nets", defaultLocalNets, "local networks (CIDRs, comma-separated) for flow direction")
	fs.UintVar(&c.Seed, "community-id.seed", 0, "Community ID seed (0..65535)")
	fs.IntVar(&c.Stage.Publish.MaxFlows, "publish.max-flows", 256, "flows per FlowBatch message")
	fs.DurationVar(&c.Stage.Publish.Linger, "publish.linger", 100*time.Millisecond, "longest a flow waits for its batch to fill")
	fs.IntVar(&c.Stage.Publish.MaxInflight, "publish.max-inflight", 256, "FlowBatch messages awaiting acknowledgement")
	fs.IntVar(&c.Stage.PullBatch, "consume.pull-batch", 500, "PACKETS messages per pull request")
	fs.DurationVar(&c.Stage.KeepAlive, "consume.keepalive", 30*time.Second, "InProgress interval of held PACKETS messages (AckWait is 2m)")
	fs.BoolVar(&c.Stage.ShutdownFlush, "shutdown.flush", true, "on SIGTERM end open flows as END_SHUTDOWN and ack; false leaves them for redelivery")
	fs.DurationVar(&c.Stage.DrainTimeout, "shutdown.timeout", 30*time.Second, "longest wait for flow publish acks at shutdown")
	fs.IntVar(&c.Replicas, "nats.replicas", 1, "stream replicas when provisioning (1 on one node, 3 on a cluster)")
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
	return errors.Join(errs...)
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
	if cfg.CheckOnly {
		fmt.Fprintln(stderr, "configuration ok")
		return nil
	}
	log := cfg.Logger(stderr, "enricher")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	nc, err := cfg.ConnectNATS(ctx, "enricher", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(cfg.Stage.Publish.MaxInflight*2),
		jetstream.WithPublishAsyncTimeout(10*time.Second)) // a lost PubAck surfaces as an error and is retried
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := schema.ProvisionRetry(ctx, js, schema.StreamOptions{Replicas: cfg.Replicas}); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	reg := ops.NewRegistry()
	stage := consume.New(js, cfg.Stage, log.With("component", "consume"), consume.NewMetrics(reg))
	hctx, hcancel := context.WithCancel(context.Background())
	httpDone := make(chan error, 1)
	go func() { httpDone <- ops.Serve(hctx, cfg.HTTPAddr, ops.Handler(reg, stage.Ready), log) }()
	log.Info("enricher started", "nats_url", cfg.NATSURL, "http_addr", cfg.HTTPAddr)
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
