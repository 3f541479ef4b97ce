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
	"hash/maphash"
	"math"
	"net/netip"
	"netwatch/schema/communityid"
	"slices"
	"sort"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// Config holds the rule thresholds. The zero value is not valid: start from
// DefaultConfig. README.md explains where each default comes from.
type Config struct {
	// CommunityIDSeed is the Community ID v1 seed (0..65535) of the example
	// Community IDs the live path computes for packets; the enricher's
	// -community-id.seed, so they match the flow records' (default 0).
	CommunityIDSeed uint16
	PortscanPorts   int           // distinct probed responder ports from one originator to one responder per window
	PortscanWindow  time.Duration // tumbling window length, packet time
	PortscanFast    time.Duration // threshold reached within this time of the first probe: severity high
	// PortscanFlagProbes: distinct (port, TCP flags) flag probes (StealthKind:
	// NULL, FIN, Xmas and other segments no TCP stack opens with) from one
	// originator to one responder per window that make a port scan on their
	// own; 0 turns the criterion off.
	PortscanFlagProbes int
	SweepHosts         int // distinct probed responders on one port (or ICMP echo) from one originator per window
	SweepWindow        time.Duration
	SweepFast          time.Duration
	MaxKeys            int // most (originator, target, window) states kept; beyond it the oldest windows are dropped

	// Floods (per target: the responder). Counts are originator packets
	// of matching flows in one window, all sources together.
	FloodWindow   time.Duration // tumbling window length of syn_flood, udp_flood and icmp_flood, packet time
	SynFloodPkts  int           // SYNs of half-open TCP flows to one responder per window
	UDPFloodPkts  int           // UDP packets to one responder per window
	ICMPFloodPkts int           // ICMP/ICMPv6 packets (errors excluded) to one responder per window

	// Brute force (per originator, responder and service port).
	BruteWindow   time.Duration // tumbling window length, packet time
	BruteSessions int           // sessions to one SSH/FTP/Telnet/RDP/SMB/database/mail/VNC port per window
	BruteHTTP     int           // sessions to one HTTP port (80, 8000, 8008, 8080, 8888) per window

	// DNS tunnelling (per originator and parent domain of the query name).
	DNSWindow time.Duration // tumbling window length, packet time
	DNSLong   int           // queries per window whose subdomain part is long and high-entropy (IsTunnelName)
	DNSUnique int           // distinct subdomains of one parent domain per window
	// DGA-like lookups (per originator): distinct parent domains whose
	// registrable label looks machine-generated (IsRandomLabel) and that
	// were answered NXDOMAIN (the flow's dns_responded and dns_rcode 3)
	// per window.
	DGAWindow  time.Duration
	DGADomains int

	// Reflection / amplification (per target, the victim the responses go
	// to): response packets from reflectors (UDP from an amplification
	// service port, TCP SYN-ACK or RST with no request seen) per
	// FloodWindow, from at least AmpSources distinct reflectors.
	AmpPkts    int
	AmpSources int

	// Beaconing (per originator, responder and service): new connections
	// at a regular period. BeaconConns connections in one window whose
	// inter-connection times have a mean of at least BeaconMinPeriod and a
	// coefficient of variation (standard deviation / mean) of at most
	// BeaconMaxCV.
	BeaconWindow    time.Duration
	BeaconConns     int
	BeaconMinPeriod time.Duration
	BeaconMaxCV     float64

	// DNSQueries is the number of query packets (originator packets of DNS
	// flows) for names under one parent domain per window. A flow carries
	// only its first query name (enricher), and a tunnel client such as
	// iodine sends every query from one socket: one flow, one name, many
	// packets; this is what catches it.
	DNSQueries int
	// DNSModel is the number of query names under one parent domain per
	// window that the query-name model (SetNameModel) classifies as
	// tunnel traffic.
	DNSModel int
	// DNSTxtNull is the number of query packets for names under one parent
	// domain per window in flows whose first question is of type TXT (16)
	// or NULL (10) (RFC 1035 3.2.2), when they are at least half of the
	// window's query packets (TXT/NULL-heavy: the record types that carry
	// the most downstream data, iodine's default NULL among them).
	DNSTxtNull int
}

// DefaultConfig returns the thresholds documented in README.md.
func DefaultConfig() Config {
	return Config{
		PortscanPorts: 50, PortscanWindow: time.Minute, PortscanFast: 10 * time.Second, PortscanFlagProbes: 5,
		SweepHosts: 32, SweepWindow: time.Minute, SweepFast: 10 * time.Second,
		MaxKeys:     1_000_000,
		FloodWindow: 10 * time.Second, SynFloodPkts: 1000, UDPFloodPkts: 10000, ICMPFloodPkts: 1000,
		BruteWindow: time.Minute, BruteSessions: 4, BruteHTTP: 30,
		DNSWindow: time.Minute, DNSLong: 20, DNSUnique: 100, DNSQueries: 150, DNSModel: 20, DNSTxtNull: 50,
		DGAWindow: time.Minute, DGADomains: 10,
		AmpPkts: 1000, AmpSources: 10,
		BeaconWindow: time.Hour, BeaconConns: 8, BeaconMinPeriod: 10 * time.Second, BeaconMaxCV: 0.2,
	}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.PortscanPorts < 2 {
		errs = append(errs, fmt.Errorf("-portscan.ports %d: want at least 2", c.PortscanPorts))
	}
	if c.PortscanFlagProbes < 0 || c.PortscanFlagProbes == 1 {
		errs = append(errs, fmt.Errorf("-portscan.flag-probes %d: want 0 (off) or at least 2", c.PortscanFlagProbes))
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
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-flood.window", c.FloodWindow}, {"-bruteforce.window", c.BruteWindow}, {"-dnstunnel.window", c.DNSWindow},
		{"-dga.window", c.DGAWindow}, {"-beacon.window", c.BeaconWindow}, {"-beacon.min-period", c.BeaconMinPeriod}} {
		if d.v < time.Second {
			errs = append(errs, fmt.Errorf("%s %s: want at least 1s", d.name, d.v))
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"-synflood.pkts", c.SynFloodPkts}, {"-udpflood.pkts", c.UDPFloodPkts}, {"-icmpflood.pkts", c.ICMPFloodPkts},
		{"-bruteforce.sessions", c.BruteSessions}, {"-bruteforce.http-sessions", c.BruteHTTP},
		{"-dnstunnel.long", c.DNSLong}, {"-dnstunnel.unique", c.DNSUnique}, {"-dnstunnel.queries", c.DNSQueries},
		{"-dnstunnel.model-names", c.DNSModel}, {"-dnstunnel.txt-null", c.DNSTxtNull},
		{"-dga.domains", c.DGADomains}, {"-amplification.pkts", c.AmpPkts}} {
		if n.v < 2 {
			errs = append(errs, fmt.Errorf("%s %d: want at least 2", n.name, n.v))
		}
	}
	if c.AmpSources < 1 {
		errs = append(errs, fmt.Errorf("-amplification.sources %d: want at least 1", c.AmpSources))
	}
	if c.BeaconConns < 3 {
		errs = append(errs, fmt.Errorf("-beacon.conns %d: want at least 3 (two intervals)", c.BeaconConns))
	}
	if !(c.BeaconMaxCV > 0 && c.BeaconMaxCV <= 1) {
		errs = append(errs, fmt.Errorf("-beacon.max-cv %v: want 0 < cv <= 1", c.BeaconMaxCV))
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
	RuleSynFlood  = "syn_flood"
	RuleUDPFlood  = "udp_flood"
	RuleICMPFlood = "icmp_flood"
	RuleBrute     = "bruteforce"
	RuleDNSTunnel = "dns_tunnel"
	RuleAmp       = "amplification"
	RuleDGA       = "dga"
	RuleBeacon    = "beaconing"
)

// TCP flag bits (RFC 9293).
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagPSH = 0x08
	flagACK = 0x10
	flagURG = 0x20
)

// IsProbe reports whether a flow looks like a scan probe rather than a
// conversation: no responder packets at all (SYN or UDP with no reply), a
// responder RST with no payload either way (closed TCP port), or a TCP
// handshake that carried no payload either way (SYN scan to an open port:
// SYN, SYN-ACK, RST). ICMP is never a port probe. Interim records
// (final=false) count too: the first record of a probe is all there is.
// A flow whose originator sent nothing (the enricher made the receiver of
// an unsolicited SYN-ACK, RST or UDP response the originator) is never a
// probe: that is backscatter or reflection (amplification), and counting
// it would name the victim as a scanner. Nor is the same one-way flow
// oriented the other way round (a flow's first packet a response: TCP
// SYN-ACK or RST with no payload, or UDP from an amplification port to a
// port that is not one, no reply; Reflected): counted as probes, the
// responses of a DNS reflection attack made each of its 20 resolvers a
// port scanner of the victim (testdata/dns-amplification.pcap.gz: 100
// distinct victim ports per resolver).
func IsProbe(f *pb.Flow) bool {
	if _, _, _, ok := Reflected(f); ok {
		return false
	}
	switch f.GetProto() {
	case 6:
		if f.GetOrigBytes() != 0 || f.GetRespBytes() != 0 || f.GetOrigPkts() == 0 {
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
		return f.GetRespPkts() == 0 && f.GetOrigPkts() > 0
	}
	return false
}

// Probe kinds of a port scan (StealthKind and the portscan evidence).
const (
	KindSYN   = iota // TCP probe that opens with SYN (nmap -sS, -sT)
	KindNull         // no flag at all (nmap -sN)
	KindFIN          // FIN alone (nmap -sF)
	KindXmas         // FIN, PSH and URG (nmap -sX)
	KindOther        // another combination no TCP stack opens with: no SYN, ACK or RST, or SYN with FIN
	KindUDP          // UDP probe
	numKinds
)

// KindNames name the probe kinds in the portscan evidence.
var KindNames = [numKinds]string{"syn", "null", "fin", "xmas", "other_flags", "udp"}

// StealthKind classifies a TCP flow by the flags its originator sent
// (OR of all its segments, ECE and CWR ignored): KindNull, KindFIN,
// KindXmas or KindOther for segments that RFC 9293 gives no role in opening
// a connection and that scanners send because closed ports answer them
// with RST and open ports stay silent (RFC 9293 3.10.7.1; nmap's -sN, -sF,
// -sX); KindSYN for every other TCP flow, KindUDP for UDP. A lone RST or
// an ACK without SYN is not stealth (a connection picked up mid-stream, or
// a reset), nor is SYN with RST (a SYN scan's half-open probe).
func StealthKind(f *pb.Flow) int {
	if f.GetProto() == 17 {
		return KindUDP
	}
	fl := f.GetOrigTcpFlags() & 0x3f
	switch {
	case fl&(flagSYN|flagACK|flagRST) == 0:
		switch fl {
		case 0:
			return KindNull
		case flagFIN:
			return KindFIN
		case flagFIN | flagPSH | flagURG:
			return KindXmas
		}
		return KindOther
	case fl&flagSYN != 0 && fl&flagFIN != 0 && fl&(flagACK|flagRST) == 0:
		return KindOther
	}
	return KindSYN
}

// isEchoRequest is an ICMP or ICMPv6 echo request flow.
func isEchoRequest(f *pb.Flow) bool {
	return (f.GetProto() == 1 && f.GetIcmpType() == 8) || (f.GetProto() == 58 && f.GetIcmpType() == 128)
}

// rule identifies a rule in a key (its name is in ruleNames).
type rule uint8

const (
	portscan rule = iota
	hostsweep
	synFlood
	udpFlood
	icmpFlood
	brute
	dnsTunnel
	amp
	dga
	beacon
)

var ruleNames = [...]string{portscan: RulePortscan, hostsweep: RuleHostsweep, synFlood: RuleSynFlood,
	udpFlood: RuleUDPFlood, icmpFlood: RuleICMPFlood, brute: RuleBrute, dnsTunnel: RuleDNSTunnel,
	amp: RuleAmp, dga: RuleDGA, beacon: RuleBeacon}

type key struct {
	rule   rule
	sensor string
	orig   netip.Addr // invalid (zero) for floods (per-target rules)
	target netip.Addr // invalid (zero) for hostsweep and dns_tunnel
	port   uint32     // bruteforce: the service port
	domain string     // dns_tunnel: the parent domain
	win    int64      // window start, Unix ns
}

// state is one (rule, sensor, originator, target, window). Most keys see a
// single probe (a SYN from a spoofed source, one host of a sweep), so the
// first port or (service, host) is held inline and the maps are made only
// for a second one: an unseen key costs no allocation beyond its map slot.
type state struct {
	firstNs  int64
	winEndNs int64
	flows    int
	fired    bool
	// portscan: distinct probed ports (proto<<16 | port).
	nports int
	port0  uint32              // the first port
	ports  map[uint32]struct{} // every port (port0 included) once there are two
	// portscan: probe flows per kind (StealthKind) and the distinct
	// (port, flags) of the flag probes (made at the first one).
	kinds   [numKinds]int32
	flagSet map[uint32]struct{}
	// hostsweep: responders per service key (proto<<16 | port or ICMP type).
	nhosts int // 0, or 1 while only (svc0, host0) was seen; then hosts is used
	svc0   uint32
	host0  netip.Addr
	hosts  map[uint32]map[netip.Addr]struct{}
	// floods, bruteforce, dns_tunnel: packets, sessions or queries.
	count int
	// icmp_flood: ICMP request packets counted from packet summaries
	// (ObserveICMPPacket) as they arrive, before any flow record.
	pcount int
	// floods: the first source, and whether another one was seen.
	src0    netip.Addr
	manySrc bool
	// dns_tunnel: long high-entropy queries, distinct subdomains (FNV-1a
	// hashes; the first inline, the set made for a second one and not grown
	// past the threshold).
	nlong  int
	nmodel int // dns_tunnel: query names the name model classifies as tunnel
	ntxt   int // dns_tunnel: query packets of flows whose first question is TXT or NULL
	nnames int
	name0  uint64
	names  map[uint64]struct{}
	sample string // dns_tunnel: the longest query name seen; dga: the first random-looking name
	// beaconing: the most recent connection starts (ns), sorted (addStart).
	starts []int64
	// every rule: up to maxCIDs distinct Community IDs of the flow records
	// counted (addCID), for the evidence's "community_ids".
	cids []string
	// cidTries: packets of the live path whose Community ID was computed
	// for cids (addPacketCID; at most maxCIDTries a state, so a flood of
	// one 5-tuple hashes a few packets, not every one).
	cidTries uint8
	// updates: the alert was re-published this many times with grown
	// counts; next is the count at which it is published again (twice
	// the count of the last publish).
	updates int
	next    int
}

// maxCIDs is the number of example Community IDs an alert's evidence
// carries ("community_ids"; issue 5: evidence with counts, window and
// example Community IDs).
const maxCIDs = 3

// addCID keeps id (a flow record's Community ID) as an example of the
// state's flows: the first maxCIDs distinct non-empty ones.
func (s *state) addCID(id string) {
	if id == "" || len(s.cids) >= maxCIDs || slices.Contains(s.cids, id) {
		return
	}
	s.cids = append(s.cids, id)
}

// maxCIDTries bounds the packets a state hashes for example Community IDs.
const maxCIDTries = 8

// addPacketCID keeps the Community ID v1 (schema/communityid, seed
// e.cfg.CommunityIDSeed) of a live packet as an example of the state's
// traffic, while it has fewer than maxCIDs and has hashed fewer than
// maxCIDTries packets. ICMP: the packet summary carries the type, not the
// code; code 0 is used (echo, the floods' usual type, has only code 0).
func (e *Engine) addPacketCID(s *state, src, dst netip.Addr, proto, sport, dport, icmpType uint32) {
	if len(s.cids) >= maxCIDs || s.cidTries >= maxCIDTries {
		return
	}
	s.cidTries++
	if proto == 1 || proto == 58 {
		s.addCID(communityid.Packet(e.cfg.CommunityIDSeed, uint8(proto), src.AsSlice(), dst.AsSlice(), 0, 0, uint8(icmpType), 0))
		return
	}
	s.addCID(communityid.Packet(e.cfg.CommunityIDSeed, uint8(proto), src.AsSlice(), dst.AsSlice(), uint16(sport), uint16(dport), 0, 0))
}

// exampleCIDs is the evidence's "community_ids": a copy of the examples
// (the state's slice is reused), [] when there are none.
func (s *state) exampleCIDs() []string {
	return append([]string{}, s.cids...)
}

// addPort records a probed port and returns the number of distinct ports.
func (s *state) addPort(p uint32) int {
	switch {
	case s.nports == 0:
		s.port0, s.nports = p, 1
	case s.ports == nil:
		if p != s.port0 {
			s.ports = map[uint32]struct{}{s.port0: {}, p: {}}
			s.nports = 2
		}
	default:
		s.ports[p] = struct{}{}
		s.nports = len(s.ports)
	}
	return s.nports
}

// forPorts calls fn for every distinct port.
func (s *state) forPorts(fn func(uint32)) {
	if s.ports == nil {
		if s.nports > 0 {
			fn(s.port0)
		}
		return
	}
	for p := range s.ports {
		fn(p)
	}
}

// addHost records a probed responder of service svc and returns the number
// of distinct responders of svc.
func (s *state) addHost(svc uint32, h netip.Addr) int {
	if s.hosts == nil {
		if s.nhosts == 0 {
			s.svc0, s.host0, s.nhosts = svc, h, 1
			return 1
		}
		if svc == s.svc0 && h == s.host0 {
			return 1
		}
		s.hosts = map[uint32]map[netip.Addr]struct{}{s.svc0: {s.host0: {}}}
	}
	hs := s.hosts[svc]
	if hs == nil {
		hs = map[netip.Addr]struct{}{}
		s.hosts[svc] = hs
	}
	hs[h] = struct{}{}
	return len(hs)
}

// hostsOf returns the distinct responders of service svc.
func (s *state) hostsOf(svc uint32) []netip.Addr {
	if s.hosts == nil {
		if s.nhosts > 0 && svc == s.svc0 {
			return []netip.Addr{s.host0}
		}
		return nil
	}
	out := make([]netip.Addr, 0, len(s.hosts[svc]))
	for h := range s.hosts[svc] {
		out = append(out, h)
	}
	return out
}

// Engine evaluates the rules on a stream of flows. It is not safe for
// concurrent use: one goroutine per partition.
type Engine struct {
	cfg   Config
	state map[mkey]*state
	// seed hashes DNS parent domains into mkey; sensorIDs interns sensor
	// names (the last one cached).
	seed       maphash.Seed
	sensorIDs  map[string]uint32
	lastSensor string
	lastID     uint32
	// watermark is the latest flow end time seen (packet time); windows
	// that ended more than one window length before it are dropped.
	watermark int64
	// nextExpiry is a lower bound of the watermark at which some state
	// expires: expire scans the states only once the watermark passes it
	// (once per window boundary, not per flow).
	nextExpiry int64
	// lastScan is the watermark of the last expire scan; scans are at
	// least scanGap (the longest window) apart, so the 10 s flood windows
	// do not make every state be scanned every 10 s: a window's state
	// may outlive its expiry by up to scanGap.
	lastScan, scanGap int64
	free              []*state // states of expired windows, for reuse
	// singles: originators' first probes per window (singles.go), and
	// their number; spareSingles are cleared maps for reuse.
	singles, spareSingles []*singleWin
	nsingles              int
	noSingles             bool // tests: every probe opens its states (the engine before singles)
	// half: connections whose SYN waits for the originator's ACK (live
	// syn_flood, live.go), swept at each new flood window (halfWin).
	half    map[hkey]hval
	halfWin int64
	pf      pb.Flow // scratch one-packet flow of ObservePacket
	// names classifies query names for dns_tunnel (nil: no model).
	names     NameModel
	namesName string
	// scope: which rules run (SetScope); ScopeAll for one instance.
	scope Scope
}

// Scope selects the rules an engine runs when detector instances share
// the work as a consumer group (stage "Scaling"): flows are partitioned by
// the originator's address bucket for the per-originator rules and by the
// responder's for the per-target ones, and each partitioning feeds its own
// engine.
type Scope uint8

const (
	// ScopeAll runs every rule (one detector instance).
	ScopeAll Scope = iota
	// ScopeOriginator runs the rules keyed by the originator: portscan,
	// hostsweep, bruteforce, dns_tunnel, dga, beaconing, and amplification
	// for flows whose victim is the originator (rules.Reflected).
	ScopeOriginator
	// ScopeTarget runs the rules keyed by the target, the responder:
	// syn_flood, udp_flood, icmp_flood, and amplification for flows whose
	// victim is the responder.
	ScopeTarget
)

// SetScope restricts the engine to the rules of sc (before the first
// Observe).
func (e *Engine) SetScope(sc Scope) { e.scope = sc }

// Scope is the engine's scope.
func (e *Engine) Scope() Scope { return e.scope }

// origRules and targetRules report whether the engine runs the
// per-originator and the per-target rules.
func (e *Engine) origRules() bool   { return e.scope != ScopeTarget }
func (e *Engine) targetRules() bool { return e.scope != ScopeOriginator }

// NameModel classifies a DNS query name as tunnel traffic; qname.Model
// implements it. IsTunnel is called for each DNS flow with labels below
// its parent domain and must not allocate.
type NameModel interface {
	IsTunnel(q string) bool
}

// SetNameModel makes dns_tunnel count the query names m classifies as
// tunnel traffic (Config.DNSModel); name is the model's name for the
// evidence. A nil m turns the model signal off.
func (e *Engine) SetNameModel(m NameModel, name string) {
	e.names, e.namesName = m, name
}

// NameModelName is the name given with the query-name model ("" without one).
func (e *Engine) NameModelName() string { return e.namesName }

// New returns an engine with cfg (which must be valid).
func New(cfg Config) *Engine {
	gap := max(cfg.PortscanWindow, cfg.SweepWindow, cfg.FloodWindow, cfg.BruteWindow, cfg.DNSWindow, cfg.DGAWindow, cfg.BeaconWindow)
	return &Engine{cfg: cfg, state: map[mkey]*state{}, nextExpiry: math.MaxInt64, lastScan: math.MinInt64, scanGap: int64(gap),
		seed: maphash.MakeSeed(), sensorIDs: map[string]uint32{}, lastID: ^uint32(0)}
}

// mkey is the map key of a key: fixed size (64 bytes) and free of
// pointers, so the state map hashes one block of memory, is smaller, and
// its keys are not scanned by the garbage collector. Addresses are their
// 16-byte form (the zero address where the rule keys none), the sensor an
// interned index, the DNS parent domain a 64-bit maphash (the alert
// builders get the domain from the key of the flow being observed).
type mkey struct {
	orig, target [16]byte
	domain       uint64
	win          int64
	port         uint32
	sensor       uint32
	rule         rule
}

// mk returns the map key of k.
func (e *Engine) mk(k key) mkey {
	m := mkey{orig: k.orig.As16(), target: k.target.As16(), win: k.win, port: k.port, rule: k.rule}
	if k.domain != "" {
		m.domain = maphash.String(e.seed, k.domain)
	}
	m.sensor = e.sensorID(k.sensor)
	return m
}

// SetConfig replaces the thresholds (cfg must be valid). Open windows keep
// the length they were opened with; new windows use cfg's.
func (e *Engine) SetConfig(cfg Config) {
	e.cfg = cfg
	e.scanGap = int64(max(cfg.PortscanWindow, cfg.SweepWindow, cfg.FloodWindow, cfg.BruteWindow, cfg.DNSWindow, cfg.DGAWindow, cfg.BeaconWindow))
}

// Keys is the number of (rule, originator, target, window) states held.
func (e *Engine) Keys() int { return len(e.state) + e.nsingles }

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
// alerts it triggers (usually none: then it does not allocate, except for
// a key not seen before). An alert fires once per key; if its publish
// fails, call Retract so that the redelivered flow fires it again.
func (e *Engine) Observe(sensor string, f *pb.Flow) []*pb.Alert {
	orig, ok1 := addr(f.GetOrigAddr())
	resp, ok2 := addr(f.GetRespAddr())
	if !ok1 || !ok2 {
		return nil
	}
	t := f.GetStartNs()
	if f.GetEndNs() > e.watermark {
		e.watermark = f.GetEndNs()
		if e.watermark > e.nextExpiry && e.watermark-e.scanGap >= e.lastScan {
			e.lastScan = e.watermark
			e.expire()
		}
		if len(e.singles) > 0 && e.singles[0].win+2*int64(e.cfg.PortscanWindow) < e.watermark {
			e.expireSingles()
		}
	}
	var out []*pb.Alert
	out = e.observeMore(out, sensor, f, orig, resp)
	if !e.origRules() {
		return out
	}
	return e.observeProbe(out, sensor, f, orig, resp, t, IsProbe(f), false)
}

// observeProbe runs portscan and hostsweep on a probe (probe) or ICMP echo
// request flow starting at t: a flow record, or one packet made into a
// one-packet flow by ObservePacket (live).
func (e *Engine) observeProbe(out []*pb.Alert, sensor string, f *pb.Flow, orig, resp netip.Addr, t int64, probe, live bool) []*pb.Alert {
	if !probe && !isEchoRequest(f) {
		return out
	}
	proto := f.GetProto()
	port := proto<<16 | f.GetRespPort()
	if proto == 1 || proto == 58 {
		port = proto<<16 | f.GetIcmpType()
	}
	kind := KindSYN
	if probe {
		kind = StealthKind(f)
	}
	if e.firstProbe(sensor, orig, resp, t, probe, proto<<16|f.GetRespPort(), port, f.GetRespPort()<<8|f.GetOrigTcpFlags()&0x3f, kind, live) {
		return out
	}
	if probe {
		k := key{rule: portscan, sensor: sensor, orig: orig, target: resp, win: windowStart(t, e.cfg.PortscanWindow)}
		s := e.get(k, t, e.cfg.PortscanWindow)
		s.addCID(f.GetCommunityId())
		if live && f.GetCommunityId() == "" {
			e.addPacketCID(s, orig, resp, proto, f.GetOrigPort(), f.GetRespPort(), f.GetIcmpType())
		}
		s.flows++
		n := s.addPort(proto<<16 | f.GetRespPort())
		s.kinds[kind]++
		if kind >= KindNull && kind <= KindOther {
			if s.flagSet == nil {
				s.flagSet = map[uint32]struct{}{}
			}
			s.flagSet[f.GetRespPort()<<8|f.GetOrigTcpFlags()&0x3f] = struct{}{}
			n = e.portscanCount(s)
		}
		if e.due(s, e.cfg.PortscanPorts, n) {
			out = append(out, e.portscanAlert(k, s, f))
		}
	}
	k := key{rule: hostsweep, sensor: sensor, orig: orig, win: windowStart(t, e.cfg.SweepWindow)}
	s := e.get(k, t, e.cfg.SweepWindow)
	s.addCID(f.GetCommunityId())
	if live && f.GetCommunityId() == "" {
		e.addPacketCID(s, orig, resp, proto, f.GetOrigPort(), f.GetRespPort(), f.GetIcmpType())
	}
	s.flows++
	if n := s.addHost(port, resp); e.due(s, e.cfg.SweepHosts, n) {
		out = append(out, e.sweepAlert(k, s, f, port))
	}
	return out
}

// Retract forgets that the alert with this rule, originator, target and
// window fired, so the next matching flow fires it again (after a failed
// publish). Unknown alerts are ignored.
func (e *Engine) Retract(a *pb.Alert) {
	r := portscan
	switch a.GetRule() {
	case RulePortscan:
	case RuleHostsweep:
		r = hostsweep
	default:
		e.retractMore(a)
		return
	}
	orig, _ := netip.ParseAddr(a.GetOrigAddr())
	target, _ := netip.ParseAddr(a.GetRespAddr())
	if s, ok := e.state[e.mk(key{rule: r, sensor: a.GetSensor(), orig: orig, target: target, win: a.GetWindowStartNs()})]; ok {
		retractState(s, a)
	}
}

func (e *Engine) get(lk key, t int64, w time.Duration) *state {
	k := e.mk(lk)
	s, ok := e.state[k]
	if !ok {
		if len(e.state) >= e.cfg.MaxKeys {
			e.evictOldest()
		}
		if n := len(e.free); n > 0 {
			s, e.free = e.free[n-1], e.free[:n-1]
		} else {
			s = &state{}
		}
		*s = state{firstNs: t, winEndNs: k.win + int64(w), starts: s.starts[:0], cids: s.cids[:0]}
		e.state[k] = s
		if x := expiry(k, s); x < e.nextExpiry {
			e.nextExpiry = x
		}
	}
	if t < s.firstNs {
		s.firstNs = t
	}
	return s
}

// expiry is the watermark beyond which the state of k is dropped: one
// window length after the window's end.
func expiry(k mkey, s *state) int64 { return s.winEndNs + (s.winEndNs - k.win) }

// expire drops windows that ended more than one window length before the
// watermark (one window of lateness for flows that arrive out of order).
func (e *Engine) expire() {
	e.nextExpiry = math.MaxInt64
	for k, s := range e.state {
		x := expiry(k, s)
		if x < e.watermark {
			delete(e.state, k)
			if len(e.free) < 4096 {
				*s = state{}
				e.free = append(e.free, s)
			}
		} else if x < e.nextExpiry {
			e.nextExpiry = x
		}
	}
}

func (e *Engine) evictOldest() {
	var oldest mkey
	first := true
	for k := range e.state {
		if first || k.win < oldest.win {
			oldest, first = k, false
		}
	}
	delete(e.state, oldest)
}

func samplePorts(s *state, n int) (tcp, udp []uint32) {
	s.forPorts(func(p uint32) {
		switch p >> 16 {
		case 6:
			tcp = append(tcp, p&0xffff)
		case 17:
			udp = append(udp, p&0xffff)
		}
	})
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
	tcp, udp := samplePorts(s, 20)
	elapsed := time.Duration(f.GetEndNs() - s.firstNs)
	if elapsed < 0 {
		elapsed = 0
	}
	kinds := map[string]int32{}
	scanType, most := "", int32(0)
	for i, n := range s.kinds {
		if n > 0 {
			kinds[KindNames[i]] = n
			if n > most {
				scanType, most = KindNames[i], n
			}
		}
	}
	ev, _ := json.Marshal(map[string]any{
		"community_ids":         s.exampleCIDs(),
		"distinct_ports":        s.nports,
		"probe_flows":           s.flows,
		"threshold":             e.cfg.PortscanPorts,
		"scan_type":             scanType, // the most frequent probe kind
		"probe_kinds":           kinds,
		"flag_probes":           len(s.flagSet), // distinct (port, flags) NULL/FIN/Xmas/other-flag probes
		"flag_probes_threshold": e.cfg.PortscanFlagProbes,
		"sample_tcp_ports":      tcp,
		"sample_udp_ports":      udp,
		"window_start_ns":       k.win,
		"window_end_ns":         s.winEndNs,
		"first_probe_ns":        s.firstNs,
		"elapsed_seconds":       elapsed.Seconds(),
		"update":                s.updates,
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
		Summary:       fmt.Sprintf("%s probed %d distinct ports on %s within %.1fs (%s scan, %d probes)", o, s.nports, t, elapsed.Seconds(), scanType, s.flows),
		Evidence:      ev,
		Rule:          RulePortscan,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(e.portscanCount(s), e.cfg.PortscanPorts),
	}
}

// portscanCount is the count the portscan threshold and updates apply to:
// the distinct ports, or, once the flag probes reach their own threshold,
// the flag probes scaled onto the port threshold if that is more (10 flag
// probes count as 50 ports with the defaults, so updates come at their
// doublings).
func (e *Engine) portscanCount(s *state) int {
	n := s.nports
	if fp := e.cfg.PortscanFlagProbes; fp > 0 && len(s.flagSet) >= fp {
		n = max(n, len(s.flagSet)*e.cfg.PortscanPorts/fp)
	}
	return n
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
	hs := s.hostsOf(port)
	sample := make([]string, 0, len(hs))
	for _, h := range hs {
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
		"community_ids":   s.exampleCIDs(),
		"service":         portName(port),
		"distinct_hosts":  len(hs),
		"probe_flows":     s.flows,
		"threshold":       e.cfg.SweepHosts,
		"sample_hosts":    sample,
		"window_start_ns": k.win,
		"window_end_ns":   s.winEndNs,
		"first_probe_ns":  s.firstNs,
		"elapsed_seconds": elapsed.Seconds(),
		"update":          s.updates,
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
