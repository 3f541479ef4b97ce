// Package pipeline wires the agent's stages (capture → decode → fragment →
// publish, plus host metrics) and holds its configuration.
package pipeline

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcap"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/publish"
	"netwatch/schema"
	"netwatch/schema/ops"
)

// Config is the agent's configuration (flags, then NETWATCH_* environment).
type Config struct {
	ops.Common
	PCAP              string        // -pcap: capture file to read; exclusive with Interface
	Interface         string        // -interface: live capture interface
	BPF               string        // -bpf: pcap-filter(7) expression for live capture
	Snaplen           int           // -snaplen: bytes kept per frame, live
	Promisc           bool          // -promisc: promiscuous mode, live
	Sensor            string        // -sensor: token-safe sensor name
	ReplaySpeed       float64       // -replay-speed: 0 as fast as possible, 1 recorded pace
	SummaryFull       bool          // -summary.full: also tcp_seq, tcp_ack and every packet's ip_id
	BatchSize         int           // -batch.size: packets per PACKETS message
	BatchFlush        time.Duration // -batch.flush: max age (wall clock) of an open batch
	WatermarkInterval time.Duration // -watermark.interval: live watermark batches period (publish.Watermarks); 0 for none
	MetricsInterval   time.Duration // -metrics.interval: METRICS period
	MetricsOnly       bool          // -metrics-only: no capture, host metrics only (RunMetrics); exclusive with PCAP and Interface
	MetricsPaths      string        // -metrics.paths: comma-separated directories whose file systems METRICS reports too (Paths)
	MaxInflight       int           // -publish.max-inflight: unacked PACKETS messages
	ExcludePorts      string        // -exclude.ports: TCP ports never captured live
	CaptureOwnTraffic bool          // -capture.own-traffic: do not exclude the pipeline's ports
	Summary           bool          // -summary: print a JSON summary of -pcap, no broker
	CaptureMethod     string        // -capture.method: "libpcap" (default) or "afpacket", live
	Fanout            int           // -afpacket.fanout: sockets (and decode workers) in one PACKET_FANOUT_HASH group
	RingMB            int           // -afpacket.ring-mb: ring size per socket, MiB
	BufferMB          int           // -buffer.max-mb: unacked PACKETS bytes held while NATS is slow or away, MiB
	Provision         bool          // -nats.provision: create or update the streams at start (false for a least-privilege sensor user)
	InboxPrefix       string        // -nats.inbox-prefix: reply subjects' prefix; empty means "_INBOX_" + Sensor (Inbox)
	AckTimeout        time.Duration // -nats.ack-timeout: a publish without a JetStream ack after this is retried
}

// DefaultSensor is the host name with every character a sensor name may not
// hold replaced by '-', at most 64 characters.
func DefaultSensor() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "agent"
	}
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// Register adds the agent's flags to fs.
func (c *Config) Register(fs *flag.FlagSet) {
	c.Common.Register(fs, "127.0.0.1:9101")
	fs.StringVar(&c.PCAP, "pcap", "", "read this pcap or pcapng file, publish it, and exit")
	fs.StringVar(&c.Interface, "interface", "", "capture live from this interface (libpcap)")
	fs.StringVar(&c.BPF, "bpf", "", "BPF filter for live capture (pcap-filter syntax)")
	fs.IntVar(&c.Snaplen, "snaplen", 262144, "bytes captured per frame (live)")
	fs.BoolVar(&c.Promisc, "promisc", true, "promiscuous mode (live)")
	fs.StringVar(&c.Sensor, "sensor", DefaultSensor(), "sensor name (letters, digits, '-', '_')")
	fs.Float64Var(&c.ReplaySpeed, "replay-speed", 0, "file replay speed: 0 as fast as possible, 1 recorded pace, 2 twice as fast")
	fs.IntVar(&c.BatchSize, "batch.size", 1024, "packet summaries per PACKETS message")
	fs.BoolVar(&c.SummaryFull, "summary.full", false, "also publish tcp_seq, tcp_ack and the ip_id of every packet (no stage reads them; about a quarter of a TCP summary)")
	fs.DurationVar(&c.BatchFlush, "batch.flush", 200*time.Millisecond, "send a batch when its first packet is this old")
	fs.DurationVar(&c.WatermarkInterval, "watermark.interval", publish.DefaultWatermarkInterval,
		"live: send a watermark on every bucket this often (the enricher ends idle flows by them, not by its wall clock); 0 for none")
	fs.DurationVar(&c.MetricsInterval, "metrics.interval", 10*time.Second, "host metrics and capture statistics period")
	fs.BoolVar(&c.MetricsOnly, "metrics-only", false, "capture nothing: publish host metrics (CPU, memory, disks, interfaces) every -metrics.interval, e.g. on the database host; not with -pcap or -interface")
	fs.StringVar(&c.MetricsPaths, "metrics.paths", "", "comma-separated directories (e.g. the PostgreSQL data directory) whose file systems are reported in METRICS too, even of a type not listed by default")
	fs.IntVar(&c.MaxInflight, "publish.max-inflight", 256, "max unacked PACKETS messages")
	fs.DurationVar(&c.AckTimeout, "nats.ack-timeout", 5*time.Second,
		"a publish not acknowledged by JetStream within this is sent again (same Nats-Msg-Id, so never stored twice); it bounds the delay a stream leader's loss adds")
	fs.StringVar(&c.ExcludePorts, "exclude.ports", "4222,5432,6222,7422,8222", "TCP ports not captured live (with the -nats.url ports)")
	fs.BoolVar(&c.CaptureOwnTraffic, "capture.own-traffic", false, "capture the pipeline's own NATS and PostgreSQL traffic too")
	fs.BoolVar(&c.Summary, "summary", false, "print a JSON summary of -pcap on stdout, without a broker, and exit")
	fs.StringVar(&c.CaptureMethod, "capture.method", "libpcap", "live capture method: libpcap or afpacket (TPACKET_V3)")
	fs.IntVar(&c.Fanout, "afpacket.fanout", 1, "afpacket: sockets in one PACKET_FANOUT_HASH group, each read and decoded by its own goroutine")
	fs.IntVar(&c.RingMB, "afpacket.ring-mb", 32, "afpacket: ring size of each socket, MiB")
	fs.BoolVar(&c.Provision, "nats.provision", true, "create or update the streams at start; false with a sensor's own credentials, which may not (netwatchctl provision does it)")
	fs.StringVar(&c.InboxPrefix, "nats.inbox-prefix", "", "prefix of the agent's reply subjects (publish acks, API replies); empty: _INBOX_<sensor>, the only inbox a sensor's credentials may subscribe to (netwatchctl creds -sensor)")
	fs.IntVar(&c.BufferMB, "buffer.max-mb", DefaultBufferMB, "unacked PACKETS messages held while NATS is slow or unreachable, MiB (live: beyond it batches are dropped and counted; files wait)")
}

// Validate checks the configuration; the error lists every problem.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Common.Validate(); err != nil {
		errs = append(errs, err)
	}
	switch {
	case c.MetricsOnly && (c.PCAP != "" || c.Interface != ""):
		errs = append(errs, errors.New("-metrics-only captures nothing: it cannot be combined with -pcap or -interface"))
	case c.MetricsOnly && c.Summary:
		errs = append(errs, errors.New("-metrics-only captures nothing: it cannot be combined with -summary"))
	case !c.MetricsOnly && (c.PCAP == "") == (c.Interface == ""):
		errs = append(errs, errors.New("want exactly one of -pcap and -interface (or -metrics-only)"))
	}
	if c.Summary && c.PCAP == "" && !c.MetricsOnly {
		errs = append(errs, errors.New("-summary needs -pcap"))
	}
	for _, p := range c.Paths() {
		if fi, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("-metrics.paths: %w", err))
		} else if !fi.IsDir() {
			errs = append(errs, fmt.Errorf("-metrics.paths: %s is not a directory", p))
		}
	}
	if strings.TrimSpace(c.MetricsPaths) != "" && len(c.Paths()) == 0 {
		errs = append(errs, fmt.Errorf("-metrics.paths %q: no directory", c.MetricsPaths))
	}
	if err := schema.ValidSensor(c.Sensor); err != nil {
		errs = append(errs, fmt.Errorf("-sensor: %w", err))
	}
	if c.Snaplen < 64 || c.Snaplen > 262144 {
		errs = append(errs, fmt.Errorf("-snaplen %d: want 64..262144", c.Snaplen))
	}
	if c.ReplaySpeed < 0 {
		errs = append(errs, fmt.Errorf("-replay-speed %g: want >= 0", c.ReplaySpeed))
	}
	if c.BatchSize < 1 || c.BatchSize > 65536 {
		errs = append(errs, fmt.Errorf("-batch.size %d: want 1..65536", c.BatchSize))
	}
	if c.BatchFlush <= 0 {
		errs = append(errs, fmt.Errorf("-batch.flush %s: want > 0", c.BatchFlush))
	}
	if c.WatermarkInterval < 0 {
		errs = append(errs, fmt.Errorf("-watermark.interval %s: want ≥ 0", c.WatermarkInterval))
	}
	if c.MetricsInterval <= 0 {
		errs = append(errs, fmt.Errorf("-metrics.interval %s: want > 0", c.MetricsInterval))
	}
	if c.AckTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("-nats.ack-timeout %v: want at least 100ms", c.AckTimeout))
	}
	if c.MaxInflight < 1 {
		errs = append(errs, fmt.Errorf("-publish.max-inflight %d: want >= 1", c.MaxInflight))
	}
	switch c.CaptureMethod {
	case "", "libpcap", "afpacket":
	default:
		errs = append(errs, fmt.Errorf("-capture.method %q: want libpcap or afpacket", c.CaptureMethod))
	}
	if c.Fanout < 1 || c.Fanout > 64 {
		errs = append(errs, fmt.Errorf("-afpacket.fanout %d: want 1..64", c.Fanout))
	} else if c.Fanout > 1 && c.CaptureMethod != "afpacket" {
		errs = append(errs, fmt.Errorf("-afpacket.fanout %d needs -capture.method afpacket", c.Fanout))
	}
	if c.RingMB < 1 || c.RingMB > 4096 {
		errs = append(errs, fmt.Errorf("-afpacket.ring-mb %d: want 1..4096", c.RingMB))
	}
	if p := c.Inbox(); p == "" || strings.ContainsAny(p, "*> \t\r\n") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
		errs = append(errs, fmt.Errorf("-nats.inbox-prefix %q: want subject tokens without wildcards, spaces or a trailing '.'", p))
	}
	if c.BufferMB < 1 {
		errs = append(errs, fmt.Errorf("-buffer.max-mb %d: want >= 1", c.BufferMB))
	}
	if f, err := c.Filter(); err != nil {
		errs = append(errs, err)
	} else if c.Interface != "" && f != "" {
		if _, err := pcap.CompileBPFFilter(layers.LinkTypeEthernet, c.Snaplen, f); err != nil {
			errs = append(errs, fmt.Errorf("-bpf %q: %w", c.BPF, err))
		}
	}
	return errors.Join(errs...)
}

// Paths are the directories of -metrics.paths: split at commas, spaces
// around each trimmed, empty ones dropped.
func (c *Config) Paths() []string {
	var out []string
	for _, p := range strings.Split(c.MetricsPaths, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Filter is the BPF filter of a live capture: -bpf AND-ed with the exclusion
// of the pipeline's own ports unless -capture.own-traffic.
func (c *Config) Filter() (string, error) {
	if c.CaptureOwnTraffic {
		return c.BPF, nil
	}
	return capture.ExcludeFilter(c.BPF, c.NATSURL, c.ExcludePorts)
}
