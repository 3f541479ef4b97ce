// Package rules holds the detector's per-originator rules (port scan, host
// sweep). They run on flow records from FLOWS in packet time: every rule
// counts in tumbling windows aligned to multiples of its window length (Unix
// epoch), so replaying the same flows gives the same windows and therefore
// the same alert ids (schema.AlertID).
package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// Config holds the rule thresholds. The zero value is not valid: start from
// DefaultConfig. README.md explains where each default comes from.
type Config struct {
	PortscanPorts  int           // distinct probed responder ports from one originator to one responder per window
	PortscanWindow time.Duration // tumbling window length, packet time
	PortscanFast   time.Duration // threshold reached within this time of the first probe: severity high
	SweepHosts     int           // distinct probed responders on one port (or ICMP echo) from one originator per window
	SweepWindow    time.Duration
	SweepFast      time.Duration
	MaxKeys        int // most (originator, target, window) states kept; beyond it the oldest windows are dropped
}

// DefaultConfig returns the thresholds documented in README.md.
func DefaultConfig() Config {
	return Config{
		PortscanPorts: 50, PortscanWindow: time.Minute, PortscanFast: 10 * time.Second,
		SweepHosts: 32, SweepWindow: time.Minute, SweepFast: 10 * time.Second,
		MaxKeys: 1_000_000,
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.PortscanPorts < 2 {
		errs = append(errs, fmt.Errorf("-portscan.ports %d: want at least 2", c.PortscanPorts))
	}
	if c.PortscanWindow < time.Second {
		errs = append(errs, fmt.Errorf("-portscan.window %s: want at least 1s", c.PortscanWindow))
	}
	if c.SweepHosts < 2 {
		errs = append(errs, fmt.Errorf("-hostsweep.hosts %d: want at least 2", c.SweepHosts))
	}
	if c.SweepWindow < time.Second {
		errs = append(errs, fmt.Errorf("-hostsweep.window %s: want at least 1s", c.SweepWindow))
	}
	if c.MaxKeys < 1 {
		errs = append(errs, fmt.Errorf("-rules.max-keys %d: want at least 1", c.MaxKeys))
	}
	return errors.Join(errs...)
}

// Rule names (the alert's rule field and the first input of its id).
const (
	RulePortscan  = "portscan"
	RuleHostsweep = "hostsweep"
)

// TCP flag bits (RFC 9293).
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// IsProbe reports whether a flow looks like a scan probe rather than a
// conversation: no responder packets at all (SYN or UDP with no reply), a
// responder RST with no payload either way (closed TCP port), or a TCP
// handshake that carried no payload either way (SYN scan to an open port:
// SYN, SYN-ACK, RST). ICMP is never a port probe. Interim records
// (final=false) count too: the first record of a probe is all there is.
func IsProbe(f *pb.Flow) bool {
	switch f.GetProto() {
	case 6:
		if f.GetOrigBytes() != 0 || f.GetRespBytes() != 0 {
			return false
		}
		if f.GetRespPkts() == 0 {
			return true
		}
		if f.GetRespTcpFlags()&flagRST != 0 {
			return true
		}
		// Handshake only: at most SYN + RST/ACK from the originator.
		return f.GetOrigTcpFlags()&flagSYN != 0 && f.GetOrigPkts() <= 3
	case 17:
		return f.GetRespPkts() == 0
	}
	return false
}

// isEchoRequest is an ICMP or ICMPv6 echo request flow.
func isEchoRequest(f *pb.Flow) bool {
	return (f.GetProto() == 1 && f.GetIcmpType() == 8) || (f.GetProto() == 58 && f.GetIcmpType() == 128)
}

type key struct {
	rule   string
	sensor string
	orig   netip.Addr
	target netip.Addr // invalid (zero) for hostsweep
	win    int64      // window start, Unix ns
}

type state struct {
	firstNs  int64
	ports    map[uint32]struct{}                // portscan: distinct probed ports (proto<<16 | port)
	hosts    map[uint32]map[netip.Addr]struct{} // hostsweep: port key -> responders
	flows    int
	fired    bool
	winEndNs int64
}

// Engine evaluates the rules on a stream of flows. It is not safe for
// concurrent use: one goroutine per partition.
type Engine struct {
	cfg   Config
	state map[key]*state
	// watermark is the latest flow end time seen (packet time); windows
	// that ended more than one window length before it are dropped.
	watermark int64
}

// New returns an engine with cfg (which must be valid).
func New(cfg Config) *Engine {
	return &Engine{cfg: cfg, state: map[key]*state{}}
}

// Keys is the number of (rule, originator, target, window) states held.
func (e *Engine) Keys() int { return len(e.state) }

func addr(b []byte) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(b)
	return a.Unmap(), ok
}

func windowStart(ns int64, w time.Duration) int64 {
	d := int64(w)
	s := ns - ns%d
	if ns < 0 && ns%d != 0 {
		s -= d
	}
	return s
}

// Observe feeds one flow record of sensor to every rule and returns the
// alerts it triggers (usually none). An alert fires once per key; if its
// publish fails, call Retract so that the redelivered flow fires it again.
func (e *Engine) Observe(sensor string, f *pb.Flow) []*pb.Alert {
	orig, ok1 := addr(f.GetOrigAddr())
	resp, ok2 := addr(f.GetRespAddr())
	if !ok1 || !ok2 {
		return nil
	}
	t := f.GetStartNs()
	if f.GetEndNs() > e.watermark {
		e.watermark = f.GetEndNs()
		e.expire()
	}
	var out []*pb.Alert
	if IsProbe(f) {
		k := key{RulePortscan, sensor, orig, resp, windowStart(t, e.cfg.PortscanWindow)}
		s := e.get(k, t, e.cfg.PortscanWindow)
		s.flows++
		s.ports[f.GetProto()<<16|f.GetRespPort()] = struct{}{}
		if !s.fired && len(s.ports) >= e.cfg.PortscanPorts {
			s.fired = true
			out = append(out, e.portscanAlert(k, s, f))
		}
	}
	if IsProbe(f) || isEchoRequest(f) {
		port := f.GetProto()<<16 | f.GetRespPort()
		if f.GetProto() == 1 || f.GetProto() == 58 {
			port = f.GetProto()<<16 | f.GetIcmpType()
		}
		k := key{RuleHostsweep, sensor, orig, netip.Addr{}, windowStart(t, e.cfg.SweepWindow)}
		s := e.get(k, t, e.cfg.SweepWindow)
		s.flows++
		hs := s.hosts[port]
		if hs == nil {
			hs = map[netip.Addr]struct{}{}
			s.hosts[port] = hs
		}
		hs[resp] = struct{}{}
		if !s.fired && len(hs) >= e.cfg.SweepHosts {
			s.fired = true
			out = append(out, e.sweepAlert(k, s, f, port))
		}
	}
	return out
}

// Retract forgets that the alert with this rule, originator, target and
// window fired, so the next matching flow fires it again (after a failed
// publish). Unknown alerts are ignored.
func (e *Engine) Retract(a *pb.Alert) {
	orig, _ := netip.ParseAddr(a.GetOrigAddr())
	target, _ := netip.ParseAddr(a.GetRespAddr())
	if s, ok := e.state[key{a.GetRule(), a.GetSensor(), orig, target, a.GetWindowStartNs()}]; ok {
		s.fired = false
	}
}

func (e *Engine) get(k key, t int64, w time.Duration) *state {
	s, ok := e.state[k]
	if !ok {
		if len(e.state) >= e.cfg.MaxKeys {
			e.evictOldest()
		}
		s = &state{firstNs: t, winEndNs: k.win + int64(w), ports: map[uint32]struct{}{}, hosts: map[uint32]map[netip.Addr]struct{}{}}
		e.state[k] = s
	}
	if t < s.firstNs {
		s.firstNs = t
	}
	return s
}

// expire drops windows that ended more than one window length before the
// watermark (one window of lateness for flows that arrive out of order).
func (e *Engine) expire() {
	for k, s := range e.state {
		if s.winEndNs+(s.winEndNs-k.win) < e.watermark {
			delete(e.state, k)
		}
	}
}

func (e *Engine) evictOldest() {
	var oldest key
	first := true
	for k := range e.state {
		if first || k.win < oldest.win {
			oldest, first = k, false
		}
	}
	delete(e.state, oldest)
}

func samplePorts(m map[uint32]struct{}, n int) (tcp, udp []uint32) {
	for p := range m {
		switch p >> 16 {
		case 6:
			tcp = append(tcp, p&0xffff)
		case 17:
			udp = append(udp, p&0xffff)
		}
	}
	sort.Slice(tcp, func(i, j int) bool { return tcp[i] < tcp[j] })
	sort.Slice(udp, func(i, j int) bool { return udp[i] < udp[j] })
	if len(tcp) > n {
		tcp = tcp[:n]
	}
	if len(udp) > n {
		udp = udp[:n]
	}
	return tcp, udp
}

func severity(elapsed, fast time.Duration) pb.Severity {
	if elapsed <= fast {
		return pb.Severity_SEVERITY_HIGH
	}
	return pb.Severity_SEVERITY_MEDIUM
}

func strength(n, threshold int) float64 {
	// 0.5 at the threshold, approaching 1 at 10x the threshold.
	s := 0.5 + 0.5*float64(n-threshold)/float64(9*threshold)
	return min(s, 1)
}

func (e *Engine) portscanAlert(k key, s *state, f *pb.Flow) *pb.Alert {
	tcp, udp := samplePorts(s.ports, 20)
	elapsed := time.Duration(f.GetEndNs() - s.firstNs)
	if elapsed < 0 {
		elapsed = 0
	}
	ev, _ := json.Marshal(map[string]any{
		"distinct_ports":   len(s.ports),
		"probe_flows":      s.flows,
		"threshold":        e.cfg.PortscanPorts,
		"sample_tcp_ports": tcp,
		"sample_udp_ports": udp,
		"window_start_ns":  k.win,
		"window_end_ns":    s.winEndNs,
		"first_probe_ns":   s.firstNs,
		"elapsed_seconds":  elapsed.Seconds(),
	})
	o, t := k.orig.String(), k.target.String()
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RulePortscan, o, t, k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      severity(elapsed, e.cfg.PortscanFast),
		Category:      "portscan",
		Technique:     "T1046",
		OrigAddr:      o,
		RespAddr:      t,
		Summary:       fmt.Sprintf("%s probed %d distinct ports on %s within %.1fs", o, len(s.ports), t, elapsed.Seconds()),
		Evidence:      ev,
		Rule:          RulePortscan,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(len(s.ports), e.cfg.PortscanPorts),
	}
}

func portName(p uint32) string {
	switch p >> 16 {
	case 6:
		return fmt.Sprintf("tcp/%d", p&0xffff)
	case 17:
		return fmt.Sprintf("udp/%d", p&0xffff)
	case 1:
		return "icmp/echo"
	case 58:
		return "icmpv6/echo"
	}
	return fmt.Sprintf("proto%d/%d", p>>16, p&0xffff)
}

func (e *Engine) sweepAlert(k key, s *state, f *pb.Flow, port uint32) *pb.Alert {
	hs := s.hosts[port]
	sample := make([]string, 0, len(hs))
	for h := range hs {
		sample = append(sample, h.String())
	}
	sort.Strings(sample)
	if len(sample) > 20 {
		sample = sample[:20]
	}
	elapsed := time.Duration(f.GetEndNs() - s.firstNs)
	if elapsed < 0 {
		elapsed = 0
	}
	ev, _ := json.Marshal(map[string]any{
		"service":         portName(port),
		"distinct_hosts":  len(hs),
		"probe_flows":     s.flows,
		"threshold":       e.cfg.SweepHosts,
		"sample_hosts":    sample,
		"window_start_ns": k.win,
		"window_end_ns":   s.winEndNs,
		"first_probe_ns":  s.firstNs,
		"elapsed_seconds": elapsed.Seconds(),
	})
	o := k.orig.String()
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleHostsweep, o, "", k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      severity(elapsed, e.cfg.SweepFast),
		Category:      "hostsweep",
		Technique:     "T1018",
		OrigAddr:      o,
		Summary:       fmt.Sprintf("%s probed %s on %d distinct hosts within %.1fs", o, portName(port), len(hs), elapsed.Seconds()),
		Evidence:      ev,
		Rule:          RuleHostsweep,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(len(hs), e.cfg.SweepHosts),
	}
}
