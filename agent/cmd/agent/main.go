// Command agent is the netwatch sensor: it captures packets from a file or an
// interface, decodes them, and publishes batched packet summaries, host
// metrics and capture statistics to NATS JetStream (see ../../README.md).
// With -metrics-only it captures nothing and publishes host metrics only
// (a host to watch that does not capture, such as the database's).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/term"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/pipeline"
	"netwatch/schema"
	"netwatch/schema/ops"
)

// memoryLimit is the agent's soft Go memory limit (runtime/debug), unless
// GOMEMLIMIT sets another: the publish buffer (-buffer.max-mb, 96 MiB), the
// NATS client's reconnect buffer (64 MiB) and the read-ahead chunks fit
// under it, and the collector works harder near it instead of letting the
// heap double, so that a broker outage keeps the agent under 256 MB.
const memoryLimit = 224 << 20

func main() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg pipeline.Config
	cfg.Register(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 2
	}
	log := cfg.Logger(stderr, "agent")
	if err := cfg.Validate(); err != nil {
		if cfg.Summary {
			printJSON(stdout, map[string]string{"file": cfg.PCAP, "error": err.Error()})
		}
		log.Error("invalid configuration", "err", err)
		return 2
	}
	if cfg.CheckOnly && cfg.MetricsOnly {
		log.Info("configuration valid", "mode", "metrics-only", "paths", cfg.Paths())
		return 0
	}
	if cfg.CheckOnly {
		// The capture is part of the configuration: open it (a missing or
		// unreadable file, one that is not a capture, an unsupported link
		// type, a missing interface or one the agent may not capture on)
		// and close it again, without reading a frame or touching NATS.
		src, err := cfg.Open()
		if err != nil {
			log.Error("invalid configuration", "err", err)
			return 2
		}
		src.Close()
		log.Info("configuration valid", "source", src.Name(), "link_type", src.LinkType().String())
		return 0
	}
	if cfg.Summary {
		sctx, sstop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		r, err := pipeline.SummarizeContext(sctx, cfg.PCAP, progressTo(stderr))
		sstop()
		printJSON(stdout, r)
		if err != nil {
			log.Error("summary failed", "err", err)
			return 1
		}
		return 0
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// a second signal while draining (e.g. the broker is gone for good) exits at once
		<-ctx.Done()
		c := make(chan os.Signal, 1)
		signal.Notify(c, os.Interrupt, syscall.SIGTERM)
		<-c
		log.Error("second signal: exiting without waiting for acks")
		os.Exit(1)
	}()

	// Fail fast on what needs no broker: a missing file or interface, an
	// unsupported link type. A file stays open for the run (a pipe cannot
	// be opened twice); opening a pipe waits for its writer and its file
	// header, so a signal meanwhile ends the agent (nothing was read). An
	// interface is closed again and reopened by Run, so that the kernel
	// does not queue (and drop) frames while NATS is being connected.
	var src capture.Source
	if !cfg.MetricsOnly {
		type opened struct {
			src capture.Source
			err error
		}
		och := make(chan opened, 1)
		go func() {
			src, err := cfg.Open()
			och <- opened{src, err}
		}()
		select {
		case o := <-och:
			if o.err != nil {
				log.Error("open capture", "err", o.err)
				return 1
			}
			src = o.src
		case <-ctx.Done():
			log.Info("interrupted while opening the capture: nothing was read")
			return 0
		}
		if cfg.PCAP == "" {
			src.Close()
			src = nil
		}
	}
	closeSrc := src != nil
	defer func() {
		if closeSrc {
			src.Close()
		}
	}()

	nc, err := cfg.ConnectNATS(ctx, "netwatch-agent-"+cfg.Sensor, log)
	if err != nil {
		log.Error("connect", "err", err)
		return 1
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4*cfg.MaxInflight),
		jetstream.WithPublishAsyncTimeout(cfg.AckTimeout))
	if err != nil {
		log.Error("jetstream", "err", err)
		return 1
	}
	if cfg.Provision {
		if err := schema.ProvisionRetry(ctx, js, schema.StreamOptions{Log: log}); err != nil {
			log.Error("provision streams", "err", err)
			return 1
		}
	}
	if cfg.Provision {
		pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := schema.ProvisionRegistry(pctx, js, schema.StreamOptions{})
		cancel()
		if err != nil {
			log.Warn("sensor registry not provisioned", "err", err)
		}
	}
	reg := ops.NewRegistry()
	agent := pipeline.New(cfg, js, reg, log)
	agent.Progress = progressTo(stderr)
	if src != nil {
		agent.Source, closeSrc = src, false // Run closes it
	}
	hctx, hstop := context.WithCancel(context.Background())
	defer hstop()
	go func() {
		if err := ops.Serve(hctx, cfg.HTTPAddr, ops.Handler(reg, func() error {
			if !nc.IsConnected() {
				return errors.New("nats not connected")
			}
			return nil
		}), log); err != nil {
			log.Error("ops http", "err", err)
		}
	}()
	// The sensor registry (schema.RegistryBucket): announce before capturing
	// and heartbeat while capturing, so the api can tell which sensors are
	// online. Without the bucket the agent still runs.
	if kv, err := schema.OpenRegistry(ctx, js); err != nil {
		log.Warn("sensor registry unavailable; this sensor will not show as online", "err", err)
	} else {
		host, _ := os.Hostname()
		// a metrics-only agent captures on no interface: an empty list
		interfaces := []string{}
		switch {
		case cfg.PCAP != "":
			interfaces = []string{cfg.PCAP}
		case cfg.Interface != "":
			interfaces = []string{cfg.Interface}
		}
		rec := schema.SensorRecord{Name: cfg.Sensor, Host: host, Version: version(), Interfaces: interfaces,
			Boot: agent.Boot, Started: time.Now().UTC()}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := schema.Announce(actx, kv, rec); err != nil {
			log.Warn("sensor registry announce", "err", err)
		}
		cancel()
		go func() {
			_ = schema.RunHeartbeat(hctx, kv, rec, 0, func(err error) { log.Warn("sensor registry heartbeat", "err", err) })
		}()
	}
	if cfg.MetricsOnly {
		log.Info("agent started", "sensor", cfg.Sensor, "boot", agent.Boot, "mode", "metrics-only")
		if err := agent.RunMetrics(ctx); err != nil {
			log.Error("agent stopped with an error", "err", err)
			return 1
		}
		log.Info("agent stopped")
		return 0
	}
	log.Info("agent started", "sensor", cfg.Sensor, "boot", agent.Boot, "pcap", cfg.PCAP, "interface", cfg.Interface)
	if err := agent.Run(ctx); err != nil {
		log.Error("agent stopped with an error", "err", err)
		return 1
	}
	log.Info("agent stopped")
	return 0
}

// version is the module version of the agent binary, or its VCS revision
// for a development build.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 && (v == "" || v == "(devel)") {
			v = s.Value[:12]
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return v
}

// progressTo returns stderr when it is a terminal (reading a file then
// shows a progress line), else nil.
func progressTo(stderr io.Writer) io.Writer {
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		return f
	}
	return nil
}

func printJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
