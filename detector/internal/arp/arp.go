// Package arp is the detector's ARP spoofing rule. It reads the ARP
// bindings the agent puts in PacketBatch.arp (field 8) on PACKETS, keeps a
// table of IPv4 address → MAC address bindings per (sensor, VLAN) in packet
// time, and raises category "arp_spoof" alerts (ATT&CK T1557.002, ARP cache
// poisoning) when:
//
//   - an address is claimed by a MAC other than the one bound to it
//     (claim conflict),
//   - a MAC both claims an address and asks, from another address of its
//     own, who has it (in either order: the arpspoof / ettercap sequence
//     of poisoning and re-ARPing the real owner, which a binding table
//     alone misses when the real owner stays silent on the wire),
//   - one MAC sends a burst of gratuitous or unsolicited replies (reply
//     flood).
//
// RFC 826 (ARP), RFC 5227 (probes with sender 0.0.0.0 and announcements).
package arp

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// Rule is the alert rule and category of ARP spoofing.
const Rule = "arp_spoof"

// RuleSweep is the rule of an ARP host sweep (category hostsweep,
// ATT&CK T1018): on a LAN a scanner's probes to absent hosts never leave
// as IP packets, only as who-has requests, so the flow hostsweep rule
// cannot see them.
const RuleSweep = "arp_sweep"

// Config of the ARP rule. Start from DefaultConfig.
type Config struct {
	Window     time.Duration // alert window, packet time: one alert per (claimed address, MAC, trigger) per window
	BindingTTL time.Duration // a binding not refreshed for this long (packet time) is forgotten; a new MAC for the address is then not a conflict
	AskTTL     time.Duration // how long a who-has is remembered (asked-then-claimed, and a reply that answers it is solicited)
	Replies    int           // gratuitous or unsolicited replies from one MAC per window that make a reply flood
	SweepHosts int           // distinct addresses one sender asks for (who-has) per window that make an ARP host sweep
	MaxEntries int           // most bindings, questions and counters kept; beyond it the oldest are dropped
}

// DefaultConfig returns the documented defaults (README.md): arpspoof
// re-poisons every 2 s (30 replies a minute); a host announces itself
// with a handful of gratuitous ARPs (RFC 5227: 2 announcements).
func DefaultConfig() Config {
	return Config{Window: time.Minute, BindingTTL: 4 * time.Hour, AskTTL: 10 * time.Second, Replies: 20, SweepHosts: 32, MaxEntries: 100_000}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.Window < time.Second {
		errs = append(errs, fmt.Errorf("-arp.window %s: want at least 1s", c.Window))
	}
	if c.BindingTTL < c.Window {
		errs = append(errs, fmt.Errorf("-arp.binding-ttl %s: want at least -arp.window", c.BindingTTL))
	}
	if c.AskTTL <= 0 {
		errs = append(errs, fmt.Errorf("-arp.ask-ttl %s: want > 0", c.AskTTL))
	}
	if c.Replies < 2 {
		errs = append(errs, fmt.Errorf("-arp.replies %d: want at least 2", c.Replies))
	}
	if c.SweepHosts < 2 {
		errs = append(errs, fmt.Errorf("-arp.sweep-hosts %d: want at least 2", c.SweepHosts))
	}
	if c.MaxEntries < 1 {
		errs = append(errs, fmt.Errorf("-arp.max-entries %d: want at least 1", c.MaxEntries))
	}
	return errors.Join(errs...)
}

type mac [6]byte

func (m mac) String() string { return net.HardwareAddr(m[:]).String() }

type ipKey struct {
	sensor string
	vlan   uint32
	ip     netip.Addr
}

type binding struct {
	mac     mac
	firstNs int64
	lastNs  int64
}

type askKey struct {
	sensor string
	vlan   uint32
	mac    mac // who asked
	ip     netip.Addr
}

type alertKey struct {
	sensor  string
	trigger string
	ip      netip.Addr
	mac     mac
	win     int64
}

type floodKey struct {
	sensor string
	vlan   uint32
	mac    mac
	win    int64
}

// Engine runs the ARP rule. Not safe for concurrent use.
type Engine struct {
	cfg      Config
	bindings map[ipKey]binding
	asked    map[askKey]int64 // who-has from mac for ip, at ns
	fired    map[alertKey]bool
	floods   map[floodKey]*flood
	// ownIP remembers the last address a MAC claimed undisputed, to name
	// the attacker's own address in an alert.
	ownIP map[mac]netip.Addr
	// retry holds retracted alerts, returned again by the next Observe.
	retry []*pb.Alert
	// sweeps: distinct addresses asked per (sensor, VLAN, sender, window).
	sweeps map[sweepKey]*sweep
}

type sweepKey struct {
	sensor string
	vlan   uint32
	sender netip.Addr
	mac    mac
	win    int64
}

type sweep struct {
	targets map[netip.Addr]struct{}
	firstNs int64
	fired   bool
}

type flood struct {
	n       int
	firstNs int64
	fired   bool
	targets map[netip.Addr]struct{}
}

// New returns an engine with cfg (which must be valid).
func New(cfg Config) *Engine {
	return &Engine{cfg: cfg, bindings: map[ipKey]binding{}, asked: map[askKey]int64{}, fired: map[alertKey]bool{},
		floods: map[floodKey]*flood{}, ownIP: map[mac]netip.Addr{}, sweeps: map[sweepKey]*sweep{}}
}

// SetConfig replaces the configuration (cfg must be valid).
func (e *Engine) SetConfig(cfg Config) { e.cfg = cfg }

func windowStart(ns int64, w time.Duration) int64 {
	d := int64(w)
	s := ns - ns%d
	if ns < 0 && ns%d != 0 {
		s -= d
	}
	return s
}

// Observe feeds one ARP frame of sensor and returns the alerts it raises.
// Frames with a sender or target address that is not 4 bytes, or a MAC
// that is not 6, are ignored (counted by the caller).
func (e *Engine) Observe(sensor string, a *pb.ArpSummary) []*pb.Alert {
	if len(a.GetSenderMac()) != 6 || len(a.GetSenderIp()) != 4 || len(a.GetTargetIp()) != 4 {
		return nil
	}
	e.bound()
	var m mac
	copy(m[:], a.GetSenderMac())
	sip, _ := netip.AddrFromSlice(a.GetSenderIp())
	tip, _ := netip.AddrFromSlice(a.GetTargetIp())
	t, vlan := a.GetTsNs(), a.GetVlan()
	out := e.retry
	e.retry = nil
	if !sip.IsUnspecified() { // RFC 5227 probes (sender 0.0.0.0) claim nothing
		k := ipKey{sensor, vlan, sip}
		// Asked, then claimed.
		if at, ok := e.asked[askKey{sensor, vlan, m, sip}]; ok && sip != tip {
			if x := e.alert(sensor, "asked_then_claimed", sip, m, t, a, map[string]any{
				"asked_at_ns": at,
				"note":        "this MAC asked who has the address from another address of its own, then claimed the address itself",
			}); x != nil {
				out = append(out, x)
			}
		}
		// Claim conflict.
		if b, ok := e.bindings[k]; ok && b.mac != m && t-b.lastNs <= int64(e.cfg.BindingTTL) {
			if x := e.alert(sensor, "claim_conflict", sip, m, t, a, map[string]any{
				"previous_mac":      b.mac.String(),
				"previous_first_ns": b.firstNs,
				"previous_last_ns":  b.lastNs,
			}); x != nil {
				out = append(out, x)
			}
		}
		if b, ok := e.bindings[k]; ok && b.mac == m {
			b.lastNs = max(b.lastNs, t)
			e.bindings[k] = b
		} else {
			e.bindings[k] = binding{mac: m, firstNs: t, lastNs: t}
		}
		if _, disputed := e.asked[askKey{sensor, vlan, m, sip}]; !disputed {
			e.ownIP[m] = sip
		}
	}
	switch {
	case a.GetOp() == 1 && sip != tip:
		// A question: remember who asked for what. A MAC that asks, from
		// another address of its own, for an address it claimed itself is
		// holding an address that is not its own.
		e.asked[askKey{sensor, vlan, m, tip}] = t
		if x := e.sweep(sensor, vlan, sip, m, tip, t); x != nil {
			out = append(out, x)
		}
		if b, ok := e.bindings[ipKey{sensor, vlan, tip}]; ok && !sip.IsUnspecified() && b.mac == m && t-b.lastNs <= int64(e.cfg.BindingTTL) {
			if x := e.alert(sensor, "claimed_then_asked", tip, m, t, a, map[string]any{
				"claimed_first_ns": b.firstNs,
				"claimed_last_ns":  b.lastNs,
				"note":             "this MAC claimed the address, then asked who has it from another address of its own",
			}); x != nil {
				out = append(out, x)
			}
		}
	case a.GetOp() == 2 || a.GetGratuitous():
		// Unsolicited: no one on the target address asked for the sender
		// address recently (a gratuitous frame is unsolicited by definition).
		solicited := false
		if !a.GetGratuitous() {
			if at, ok := e.askedFor(sensor, vlan, tip, sip); ok && t >= at && t-at <= int64(e.cfg.AskTTL) {
				solicited = true
			}
		}
		if !solicited {
			fk := floodKey{sensor, vlan, m, windowStart(t, e.cfg.Window)}
			f := e.floods[fk]
			if f == nil {
				f = &flood{firstNs: t, targets: map[netip.Addr]struct{}{}}
				e.floods[fk] = f
			}
			f.n++
			if len(f.targets) < 64 {
				f.targets[tip] = struct{}{}
			}
			if f.n >= e.cfg.Replies && !f.fired {
				f.fired = true
				if x := e.alert(sensor, "reply_flood", netip.Addr{}, m, t, a, map[string]any{
					"unsolicited_replies": f.n,
					"threshold":           e.cfg.Replies,
					"first_ns":            f.firstNs,
					"targets":             sortedAddrs(f.targets),
				}); x != nil {
					out = append(out, x)
				}
			}
		}
	}
	return out
}

// askedFor returns when the MAC bound to address requester last asked
// for address ip.
func (e *Engine) askedFor(sensor string, vlan uint32, requester, ip netip.Addr) (int64, bool) {
	b, ok := e.bindings[ipKey{sensor, vlan, requester}]
	if !ok {
		return 0, false
	}
	at, ok := e.asked[askKey{sensor, vlan, b.mac, ip}]
	return at, ok
}

func sortedAddrs(m map[netip.Addr]struct{}) []string {
	out := make([]string, 0, len(m))
	for a := range m {
		out = append(out, a.String())
	}
	sort.Strings(out)
	return out
}

// alert builds the alert of trigger for (claimed address ip, MAC m) in the
// window of t, once per window.
func (e *Engine) alert(sensor, trigger string, ip netip.Addr, m mac, t int64, a *pb.ArpSummary, ev map[string]any) *pb.Alert {
	win := windowStart(t, e.cfg.Window)
	k := alertKey{sensor, trigger, ip, m, win}
	if e.fired[k] {
		return nil
	}
	e.fired[k] = true
	own := e.ownIP[m]
	orig := ""
	if own.IsValid() && own != ip {
		orig = own.String()
	}
	resp, target := "", m.String()
	if ip.IsValid() {
		resp = ip.String()
		target = ip.String() + "@" + m.String()
	}
	ev["trigger"] = trigger
	ev["mac"] = m.String()
	ev["claimed_ip"] = resp
	ev["vlan"] = a.GetVlan()
	ev["op"] = a.GetOp()
	ev["target_ip"] = netip.AddrFrom4([4]byte(a.GetTargetIp())).String()
	ev["gratuitous"] = a.GetGratuitous()
	ev["window_start_ns"] = win
	ev["window_end_ns"] = win + int64(e.cfg.Window)
	if len(a.GetEthSrc()) == 6 && string(a.GetEthSrc()) != string(m[:]) {
		ev["eth_src_differs"] = net.HardwareAddr(a.GetEthSrc()).String()
	}
	if orig != "" {
		ev["mac_own_ip"] = orig
	}
	evb, _ := json.Marshal(ev)
	var summary string
	switch trigger {
	case "claim_conflict":
		summary = fmt.Sprintf("%s now claims %s, which %s held: ARP cache poisoning (man in the middle)", m, ip, ev["previous_mac"])
	case "asked_then_claimed":
		summary = fmt.Sprintf("%s asked who has %s, then claimed %s itself: ARP cache poisoning (man in the middle)", m, ip, ip)
	case "claimed_then_asked":
		summary = fmt.Sprintf("%s claimed %s, then asked who has %s from %s: it holds an address that is not its own, ARP cache poisoning (man in the middle)", m, ip, ip, netip.AddrFrom4([4]byte(a.GetSenderIp())))
	default:
		summary = fmt.Sprintf("%s sent %v unsolicited or gratuitous ARP replies within a window: ARP reply flood", m, ev["unsolicited_replies"])
	}
	return &pb.Alert{
		Id:            schema.AlertID(sensor, Rule, orig, trigger+"|"+target, win),
		TimeNs:        t,
		Sensor:        sensor,
		Severity:      pb.Severity_SEVERITY_HIGH,
		Category:      Rule,
		Technique:     "T1557.002",
		OrigAddr:      orig,
		RespAddr:      resp,
		Summary:       summary,
		Evidence:      evb,
		Rule:          Rule,
		WindowStartNs: win,
		WindowEndNs:   win + int64(e.cfg.Window),
		Score:         1,
	}
}

// sweep counts a who-has from sender (sip, m) for tip and returns a
// hostsweep alert when the sender reaches SweepHosts distinct addresses in
// a window (once per window). RFC 5227 probes (sender 0.0.0.0) count under
// the unspecified address.
func (e *Engine) sweep(sensor string, vlan uint32, sip netip.Addr, m mac, tip netip.Addr, t int64) *pb.Alert {
	win := windowStart(t, e.cfg.Window)
	k := sweepKey{sensor, vlan, sip, m, win}
	s := e.sweeps[k]
	if s == nil {
		s = &sweep{targets: map[netip.Addr]struct{}{}, firstNs: t}
		e.sweeps[k] = s
	}
	if len(s.targets) < 4*e.cfg.SweepHosts {
		s.targets[tip] = struct{}{}
	}
	if s.fired || len(s.targets) < e.cfg.SweepHosts {
		return nil
	}
	s.fired = true
	orig := ""
	if !sip.IsUnspecified() {
		orig = sip.String()
	}
	sample := sortedAddrs(s.targets)
	if len(sample) > 20 {
		sample = sample[:20]
	}
	elapsed := time.Duration(max(t-s.firstNs, 0))
	ev, _ := json.Marshal(map[string]any{
		"service": "arp/who-has", "distinct_hosts": len(s.targets), "threshold": e.cfg.SweepHosts, "mac": m.String(),
		"vlan": vlan, "sample_hosts": sample, "window_start_ns": win, "window_end_ns": win + int64(e.cfg.Window),
		"first_probe_ns": s.firstNs, "elapsed_seconds": elapsed.Seconds(),
	})
	who := orig
	if who == "" {
		who = m.String()
	}
	return &pb.Alert{
		Id:            schema.AlertID(sensor, RuleSweep, orig, m.String(), win),
		TimeNs:        t,
		Sensor:        sensor,
		Severity:      pb.Severity_SEVERITY_MEDIUM,
		Category:      "hostsweep",
		Technique:     "T1018",
		OrigAddr:      orig,
		Summary:       fmt.Sprintf("%s (%s) asked who has %d distinct addresses within %.1fs: ARP host sweep", who, m, len(s.targets), elapsed.Seconds()),
		Evidence:      ev,
		Rule:          RuleSweep,
		WindowStartNs: win,
		WindowEndNs:   win + int64(e.cfg.Window),
		Score:         min(1, 0.5+0.5*float64(len(s.targets)-e.cfg.SweepHosts)/float64(9*e.cfg.SweepHosts)),
	}
}

// Retract takes back an alert whose publish failed: the next Observe
// returns it again (the frames that raised it changed the bindings, so
// seeing them again would not).
func (e *Engine) Retract(a *pb.Alert) {
	e.retry = append(e.retry, a)
}

// bound keeps the tables under MaxEntries: when one is full it is cleared
// (bindings are relearnt from the next frames; an attack in progress is
// seen again within seconds).
func (e *Engine) bound() {
	if len(e.bindings) >= e.cfg.MaxEntries {
		clear(e.bindings)
	}
	if len(e.asked) >= e.cfg.MaxEntries {
		clear(e.asked)
	}
	if len(e.fired) >= e.cfg.MaxEntries {
		clear(e.fired)
	}
	if len(e.floods) >= e.cfg.MaxEntries {
		clear(e.floods)
	}
	if len(e.ownIP) >= e.cfg.MaxEntries {
		clear(e.ownIP)
	}
	if len(e.sweeps) >= e.cfg.MaxEntries {
		clear(e.sweeps)
	}
}

// Extract reads the sensor (field 1) and the ARP summaries (field 8) of an
// encoded pb.PacketBatch, skipping every other field, the packet summaries
// (field 5) included, without decoding them. A batch without ARP frames
// returns none and allocates nothing beyond the sensor string. Errors:
// malformed protobuf framing, or an ArpSummary that does not decode.
func Extract(data []byte) (sensor string, arps []*pb.ArpSummary, err error) {
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return "", nil, fmt.Errorf("packet batch: tag: %w", protowire.ParseError(n))
		}
		data = data[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return "", nil, fmt.Errorf("packet batch: sensor: %w", protowire.ParseError(n))
			}
			sensor = string(v)
			data = data[n:]
		case num == 8 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(data)
			if n < 0 {
				return "", nil, fmt.Errorf("packet batch: arp: %w", protowire.ParseError(n))
			}
			a := &pb.ArpSummary{}
			if err := proto.Unmarshal(v, a); err != nil {
				return "", nil, fmt.Errorf("packet batch: arp summary: %w", err)
			}
			arps = append(arps, a)
			data = data[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, data)
			if n < 0 {
				return "", nil, fmt.Errorf("packet batch: field %d: %w", num, protowire.ParseError(n))
			}
			data = data[n:]
		}
	}
	return sensor, arps, nil
}
