package rules

// Reflection/amplification, DGA-like lookups and beaconing. Like the other
// flow rules they count in packet-time tumbling windows and fire once per
// (sensor, rule, originator, target, window); README.md gives the
// thresholds and the data behind them.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// AmpPort reports whether a UDP port is a service abused for reflection
// and amplification: QOTD 17, chargen 19, DNS 53, portmap 111, NTP 123,
// NetBIOS 137, SNMP 161, CLDAP 389, RIPv1 520, MSSQL browser 1434, SSDP
// 1900, ARD 3283, WS-Discovery 3702, mDNS 5353, Ubiquiti discovery 10001,
// memcached 11211 (US-CERT TA14-017A "UDP-Based Amplification Attacks"
// and its updates).
func AmpPort(p uint32) bool {
	switch p {
	case 17, 19, 53, 111, 123, 137, 161, 389, 520, 1434, 1900, 3283, 3702, 5353, 10001, 11211:
		return true
	}
	return false
}

// Reflected classifies a flow as responses from a reflector that nobody
// in the flow asked for, and returns the victim (who receives them), the
// reflector and the number of response packets. Two orientations occur:
// the enricher makes the receiver of an unsolicited SYN-ACK or service-port
// reply the originator (orig_pkts 0, the responses are resp_pkts); a
// first-packet orientation makes the reflector the originator (resp_pkts 0).
// TCP responses are SYN-ACK or RST with no payload; UDP responses come from
// an AmpPort to a port that is not one.
func Reflected(f *pb.Flow) (victim, reflector []byte, pkts uint64, ok bool) {
	switch {
	case f.GetOrigPkts() == 0 && f.GetRespPkts() > 0:
		if reflectedFrom(f.GetProto(), f.GetRespPort(), f.GetOrigPort(), f.GetRespTcpFlags(), f.GetRespBytes()) {
			return f.GetOrigAddr(), f.GetRespAddr(), f.GetRespPkts(), true
		}
	case f.GetRespPkts() == 0 && f.GetOrigPkts() > 0:
		if reflectedFrom(f.GetProto(), f.GetOrigPort(), f.GetRespPort(), f.GetOrigTcpFlags(), f.GetOrigBytes()) {
			return f.GetRespAddr(), f.GetOrigAddr(), f.GetOrigPkts(), true
		}
	}
	return nil, nil, 0, false
}

// reflectedFrom: packets from port sport to dport with these TCP flags
// and payload are responses of a reflector.
func reflectedFrom(proto, sport, dport, flags uint32, payload uint64) bool {
	switch proto {
	case 6:
		if payload != 0 || flags&flagSYN != 0 && flags&flagACK == 0 {
			return false // a SYN is a request
		}
		return flags&(flagSYN|flagACK) == flagSYN|flagACK || flags&flagRST != 0
	case 17:
		return AmpPort(sport) && !AmpPort(dport)
	}
	return false
}

// IsRandomLabel reports whether a DNS label looks machine-generated (a
// DGA domain such as "kqxbdzfmgrpwlnv"): at least 8 characters, letters and
// digits only, and either few vowels with a long consonant run (at most
// 25 % vowels counting y among at least 8 letters, a run of at least 4
// consonants; English-like names have 35-45 % vowels, uniform random
// letters 23 %) or letters and digits interleaved (at least 3 switches
// between a letter and a digit). On the 4,000 benign names of
// shared/data/labeled/dns-tunnel-qnames (popular sites, ad and tracking
// domains among them) it matches 198 registrable labels (5 %; see
// TestRandomLabelDataset), and 61 % of uniformly random 12-15-letter
// labels (CryptoLocker-style): one name proves nothing, the rule counts
// distinct domains per host and window. It does not allocate.
func IsRandomLabel(l string) bool {
	if len(l) < 8 {
		return false
	}
	vowels, letters, run, maxRun, switches := 0, 0, 0, 0, 0
	prevDigit := false
	for i := 0; i < len(l); i++ {
		c := l[i] | 0x20
		digit := l[i] >= '0' && l[i] <= '9'
		switch {
		case digit:
			run = 0
		case c >= 'a' && c <= 'z':
			letters++
			if strings.IndexByte("aeiouy", c) >= 0 {
				vowels++
				run = 0
			} else {
				run++
				maxRun = max(maxRun, run)
			}
		default:
			return false // '-', '_': compound names, not generated
		}
		if i > 0 && digit != prevDigit {
			switches++
		}
		prevDigit = digit
	}
	if switches >= 3 && letters >= 3 {
		return true
	}
	return letters >= 8 && vowels*4 <= letters && maxRun >= 4
}

// RcodeNXDomain is the DNS RCODE "Name Error" (RFC 1035 4.1.1; NXDOMAIN,
// RFC 8499): the queried name does not exist.
const RcodeNXDomain = 3

// registrable returns the first label of the parent domain of a query name
// (SplitQName): "kqxbdzfmgr" for "www.kqxbdzfmgr.net".
func registrable(q string) string {
	_, parent := SplitQName(q)
	if i := strings.IndexByte(parent, '.'); i >= 0 {
		return parent[:i]
	}
	return parent
}

// isConnection is the first record of a flow in which both sides spoke:
// a completed TCP handshake, a UDP exchange with a reply, or an answered
// ICMP echo. Scans, floods and backscatter are not connections, so they
// open no beaconing state.
func isConnection(f *pb.Flow) bool {
	if f.GetRecordIndex() != 0 || f.GetOrigPkts() == 0 || f.GetRespPkts() == 0 {
		return false
	}
	switch f.GetProto() {
	case 6:
		return f.GetOrigTcpFlags()&flagACK != 0 && f.GetRespTcpFlags()&(flagSYN|flagACK) == flagSYN|flagACK
	case 17:
		return true
	}
	return isEchoRequest(f)
}

// maxBeaconStarts bounds the connection starts a beaconing state keeps
// (the most recent ones; 64 starts are 63 intervals, eight times the
// default -beacon.conns).
const maxBeaconStarts = 64

// addStart records a connection start t in the state's starts, kept
// sorted: flows arrive in end order, and a batch from the enricher or a
// replay holds them in any start order, so a start earlier than the last
// one is put in its place rather than dropped. A start equal to one kept
// is the same beat and is not counted; once maxBeaconStarts are kept the
// oldest is dropped, and a start older than every start kept is ignored.
// count is the number of starts recorded.
func (s *state) addStart(t int64) {
	i, found := slices.BinarySearch(s.starts, t)
	if found {
		return
	}
	if len(s.starts) < maxBeaconStarts {
		s.starts = slices.Insert(s.starts, i, t)
	} else {
		if i == 0 {
			return
		}
		copy(s.starts[:i-1], s.starts[1:i])
		s.starts[i-1] = t
	}
	s.count++
}

// intervals returns the mean time between consecutive connection starts
// kept (ns) and their coefficient of variation (population standard
// deviation / mean; +Inf with fewer than two intervals or a zero mean).
func (s *state) intervals() (mean, cv float64) {
	n := len(s.starts) - 1
	if n < 1 {
		return 0, math.Inf(1)
	}
	mean = float64(s.starts[n]-s.starts[0]) / float64(n)
	if n < 2 || mean <= 0 {
		return mean, math.Inf(1)
	}
	var ss float64
	for i := 1; i <= n; i++ {
		d := float64(s.starts[i]-s.starts[i-1]) - mean
		ss += d * d
	}
	return mean, math.Sqrt(ss/float64(n)) / mean
}

// observeExtra runs amplification, DGA and beaconing on f.
func (e *Engine) observeExtra(out []*pb.Alert, sensor string, f *pb.Flow, orig, resp netip.Addr) []*pb.Alert {
	t := f.GetStartNs()
	if v, r, pkts, ok := Reflected(f); ok && e.ampScope(f, v) {
		victim, _ := addr(v)
		refl, _ := addr(r)
		k := key{rule: amp, sensor: sensor, target: victim, win: windowStart(t, e.cfg.FloodWindow)}
		s := e.get(k, t, e.cfg.FloodWindow)
		s.addCID(f.GetCommunityId())
		s.flows++
		s.count += int(pkts)
		s.addSource(refl)
		b := refl.As16()
		s.addName(fnv64(string(b[:])), 1<<16)
		port := f.GetRespPort() // the reflector's port
		if f.GetOrigPkts() > 0 {
			port = f.GetOrigPort()
		}
		s.addPort(f.GetProto()<<16 | port)
		if s.count >= e.cfg.AmpPkts && s.nnames >= e.cfg.AmpSources && e.due(s, e.cfg.AmpPkts, s.count) {
			out = append(out, e.ampAlert(k, s, f))
		}
	}
	if !e.origRules() {
		return out
	}
	if isDNS(f) && f.GetDnsResponded() && f.GetDnsRcode() == RcodeNXDomain {
		// Every NXDOMAIN answer is counted (evidence); the threshold is on
		// the distinct random-looking parent domains among them.
		k := key{rule: dga, sensor: sensor, orig: orig, win: windowStart(t, e.cfg.DGAWindow)}
		s := e.get(k, t, e.cfg.DGAWindow)
		s.addCID(f.GetCommunityId())
		s.count++
		q := f.GetServerName()
		if l := registrable(q); IsRandomLabel(l) {
			_, parent := SplitQName(q)
			s.flows++
			s.addName(fnv64(parent), 1<<16)
			if s.sample == "" {
				s.sample = strings.Clone(q)
			}
			if e.due(s, e.cfg.DGADomains, s.nnames) {
				out = append(out, e.dgaAlert(k, s, f, resp))
			}
		}
	}
	if isConnection(f) {
		port := f.GetProto()<<16 | f.GetRespPort()
		if f.GetProto() == 1 || f.GetProto() == 58 {
			port = f.GetProto() << 16
		}
		k := key{rule: beacon, sensor: sensor, orig: orig, target: resp, port: port, win: windowStart(t, e.cfg.BeaconWindow)}
		s := e.get(k, t, e.cfg.BeaconWindow)
		s.addCID(f.GetCommunityId())
		s.flows++
		s.addStart(t)
		if s.count >= e.cfg.BeaconConns {
			if mean, cv := s.intervals(); mean >= float64(e.cfg.BeaconMinPeriod) && cv <= e.cfg.BeaconMaxCV &&
				e.due(s, e.cfg.BeaconConns, s.count) {
				out = append(out, e.beaconAlert(k, s, f, mean, cv))
			}
		}
	}
	return out
}

// ampScope reports whether the engine counts the reflected flow f whose
// victim is v: ScopeAll always, ScopeOriginator when v is the originator
// (the flow reached it partitioned by the victim's bucket),
// ScopeTarget when v is the responder.
func (e *Engine) ampScope(f *pb.Flow, v []byte) bool {
	switch e.scope {
	case ScopeOriginator:
		return bytes.Equal(v, f.GetOrigAddr())
	case ScopeTarget:
		return bytes.Equal(v, f.GetRespAddr())
	}
	return true
}

// due reports whether a rule state whose count is n should publish now:
// the first time n reaches threshold, and again (an update of the same
// alert id with grown counts) each time n doubles since the last publish,
// so an attack that goes on gives a handful of updates, not thousands.
func (e *Engine) due(s *state, threshold, n int) bool {
	if n < threshold {
		return false
	}
	if !s.fired {
		s.fired = true
		s.next = 2 * n
		return true
	}
	if n >= s.next {
		s.updates++
		s.next = 2 * n
		return true
	}
	return false
}

// retractExtra is Retract for the rules of this file.
func (e *Engine) retractExtra(a *pb.Alert, k key) {
	orig, _ := netip.ParseAddr(a.GetOrigAddr())
	target, _ := netip.ParseAddr(a.GetRespAddr())
	switch a.GetRule() {
	case RuleAmp:
		k.rule, k.target = amp, target
	case RuleDGA:
		k.rule, k.orig = dga, orig
	case RuleBeacon:
		var ev struct {
			Proto uint32 `json:"proto"`
			Port  uint32 `json:"service_port"`
		}
		_ = json.Unmarshal(a.GetEvidence(), &ev)
		k.rule, k.orig, k.target, k.port = beacon, orig, target, ev.Proto<<16|ev.Port
	default:
		return
	}
	if s, ok := e.state[e.mk(k)]; ok {
		retractState(s, a)
	}
}

// retractState undoes the publish of a: the first alert fires again on the
// next matching flow, an update is published again.
func retractState(s *state, a *pb.Alert) {
	if u := UpdateOf(a); u > 0 {
		s.updates = u - 1
		s.next = 0
		return
	}
	s.fired, s.updates = false, 0
}

// UpdateOf returns the update number of an alert (0 for the first publish),
// read from its evidence "update" field.
func UpdateOf(a *pb.Alert) int {
	var ev struct {
		Update int `json:"update"`
	}
	_ = json.Unmarshal(a.GetEvidence(), &ev)
	return ev.Update
}

func (e *Engine) ampAlert(k key, s *state, f *pb.Flow) *pb.Alert {
	t := k.target.String()
	elapsed := elapsedSince(f, s)
	var services []string
	s.forPorts(func(p uint32) {
		if len(services) < 10 {
			services = append(services, portName(p))
		}
	})
	ev, _ := json.Marshal(map[string]any{
		"packets":          s.count,
		"flows":            s.flows,
		"reflectors":       s.nnames,
		"first_reflector":  s.src0.String(),
		"reflector_ports":  services,
		"threshold":        e.cfg.AmpPkts,
		"threshold_source": e.cfg.AmpSources,
		"window_start_ns":  k.win,
		"window_end_ns":    s.winEndNs,
		"first_packet_ns":  s.firstNs,
		"elapsed_seconds":  elapsed.Seconds(),
		"community_id":     f.GetCommunityId(),
		"community_ids":    s.exampleCIDs(),
		"update":           s.updates,
	})
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleAmp, "", t, k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      pb.Severity_SEVERITY_HIGH,
		Category:      RuleAmp,
		Technique:     "T1498.002",
		RespAddr:      t,
		Summary:       fmt.Sprintf("%s received %d unsolicited responses (%v) from %d reflectors within %.1fs: reflection/amplification with its address spoofed as the source", t, s.count, services, s.nnames, elapsed.Seconds()),
		Evidence:      ev,
		Rule:          RuleAmp,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(s.count, e.cfg.AmpPkts),
	}
}

func (e *Engine) dgaAlert(k key, s *state, f *pb.Flow, resolver netip.Addr) *pb.Alert {
	o := k.orig.String()
	elapsed := elapsedSince(f, s)
	ev, _ := json.Marshal(map[string]any{
		"community_ids":           s.exampleCIDs(),
		"nxdomain_random_domains": s.nnames,
		"nxdomain_random_answers": s.flows,
		"nxdomain_answers":        s.count,
		"threshold":               e.cfg.DGADomains,
		"first_name":              s.sample,
		"last_name":               f.GetServerName(),
		"resolver":                resolver.String(),
		"window_start_ns":         k.win,
		"window_end_ns":           s.winEndNs,
		"elapsed_seconds":         elapsed.Seconds(),
		"update":                  s.updates,
	})
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleDGA, o, "", k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      pb.Severity_SEVERITY_MEDIUM,
		Category:      RuleDGA,
		Technique:     "T1568.002",
		OrigAddr:      o,
		Summary:       fmt.Sprintf("%s got NXDOMAIN for %d distinct random-looking domains within %.1fs (e.g. %s, %s; %d NXDOMAIN answers in all): domain generation algorithm", o, s.nnames, elapsed.Seconds(), s.sample, f.GetServerName(), s.count),
		Evidence:      ev,
		Rule:          RuleDGA,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(s.nnames, e.cfg.DGADomains),
	}
}

func (e *Engine) beaconAlert(k key, s *state, f *pb.Flow, mean, cv float64) *pb.Alert {
	o, t := k.orig.String(), k.target.String()
	period := time.Duration(mean)
	svc := portName(k.port)
	if k.port&0xffff == 0 && (k.port>>16 == 1 || k.port>>16 == 58) {
		svc = portName(k.port | 8)
	}
	ev, _ := json.Marshal(map[string]any{
		"connections":     s.count,
		"period_seconds":  period.Seconds(),
		"jitter_cv":       cv,
		"proto":           k.port >> 16,
		"service_port":    k.port & 0xffff,
		"threshold_conns": e.cfg.BeaconConns,
		"max_cv":          e.cfg.BeaconMaxCV,
		"window_start_ns": k.win,
		"window_end_ns":   s.winEndNs,
		"first_conn_ns":   s.starts[0],
		"last_conn_ns":    s.starts[len(s.starts)-1],
		"community_id":    f.GetCommunityId(),
		"community_ids":   s.exampleCIDs(),
		"update":          s.updates,
	})
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleBeacon, o, fmt.Sprintf("%s/%s", t, svc), k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      pb.Severity_SEVERITY_MEDIUM,
		Category:      RuleBeacon,
		Technique:     "T1071",
		OrigAddr:      o,
		RespAddr:      t,
		Summary:       fmt.Sprintf("%s connected to %s %s %d times every %.1fs (jitter: coefficient of variation %.3f): command-and-control beaconing", o, t, svc, s.count, period.Seconds(), cv),
		Evidence:      ev,
		Rule:          RuleBeacon,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         min(1, 0.5+0.5*(1-cv/e.cfg.BeaconMaxCV)),
	}
}
