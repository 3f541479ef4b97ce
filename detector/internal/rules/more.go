package rules

// Flood, brute-force and DNS-tunnel rules. Like portscan they count in
// packet-time tumbling windows aligned to the window length and fire once
// per (sensor, rule, originator, target, window); README.md gives the
// thresholds and the data behind them.

import (
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// synPerPort: a SYN flood sends at least this many SYNs per distinct port
// it hits (hping3 -S -p 80: thousands on one port); a SYN scan sends 1-3
// per port (nmap -sS with retries: 2,005 frames for 1,000 ports), so a scan
// of one host is never counted as a flood.
const synPerPort = 10

// httpMaxResp caps the response size of an HTTP session for the brute-force
// bucket (a 401 page is well under it; larger responses share the last bucket).
const httpMaxResp = 1<<20 - 1

// IsHalfOpen reports whether a TCP flow is a connection attempt that never
// completed: the originator sent SYN but never ACK, and no payload went
// either way (a SYN flood's flows: SYN, maybe SYN-ACK, maybe the
// originator kernel's RST).
func IsHalfOpen(f *pb.Flow) bool {
	return f.GetProto() == 6 && f.GetOrigTcpFlags()&flagSYN != 0 && f.GetOrigTcpFlags()&flagACK == 0 &&
		f.GetOrigBytes() == 0 && f.GetRespBytes() == 0
}

// isICMPRequest is an ICMP message that is neither an error nor a reply
// (ICMPv4 types 0, 3, 4, 5, 11, 12, 14, 16, 18 excluded, RFC 792/950), or an
// ICMPv6 echo request (RFC 4443): a reply flood is the victim answering.
func isICMPRequest(f *pb.Flow) bool { return IsICMPRequest(f.GetProto(), f.GetIcmpType()) }

// IsICMPRequest reports whether an IP packet or flow of protocol proto
// (1 ICMP, 58 ICMPv6) with ICMP type typ counts for icmp_flood: ICMPv4
// other than replies and errors (echo reply 0, unreachable 3, source
// quench 4, redirect 5, time exceeded 11, parameter problem 12, timestamp
// reply 14, information reply 16, mask reply 18; RFC 792, RFC 950), or an
// ICMPv6 echo request (128, RFC 4443).
func IsICMPRequest(proto, typ uint32) bool {
	switch proto {
	case 1:
		switch typ {
		case 0, 3, 4, 5, 11, 12, 14, 16, 18:
			return false
		}
		return true
	case 58:
		return typ == 128
	}
	return false
}

// AuthPort classifies a TCP responder port as an authentication service:
// 1 for login services (FTP 21, SSH 22, Telnet 23, POP3 110, IMAP 143,
// SMB 139/445, MSSQL 1433, MySQL 3306, RDP 3389, PostgreSQL 5432, VNC
// 5900), 2 for HTTP (80, 8000, 8008, 8080, 8888: basic or form login), 0
// otherwise.
func AuthPort(p uint32) int {
	switch p {
	case 21, 22, 23, 110, 139, 143, 445, 1433, 3306, 3389, 5432, 5900:
		return 1
	case 80, 8000, 8008, 8080, 8888:
		return 2
	}
	return 0
}

// isSession is the first record of a TCP flow in which the responder
// accepted the connection and the originator sent payload: an attempt at
// the service, not a port probe. Interim records of the same flow do not
// count again.
func isSession(f *pb.Flow) bool {
	return f.GetProto() == 6 && f.GetRecordIndex() == 0 && f.GetOrigBytes() > 0 &&
		(f.GetRespTcpFlags()&(flagSYN|flagACK) == flagSYN|flagACK || f.GetRespBytes() > 0)
}

// isDNS is a flow whose server_name is a DNS query name.
func isDNS(f *pb.Flow) bool {
	if f.GetServerName() == "" {
		return false
	}
	return f.GetApp() == "dns" || f.GetRespPort() == 53
}

// SplitQName splits a query name (trailing dot optional) into its parent
// domain (the last two labels, or three when the second-level label has at
// most 3 characters under a two-letter TLD: co.uk, com.br) and the labels
// below it (sub, without its trailing dot). It does not allocate. A name
// with no labels below the parent has sub "".
func SplitQName(q string) (sub, parent string) {
	q = strings.TrimSuffix(q, ".")
	i := strings.LastIndexByte(q, '.')
	if i < 0 {
		return "", q
	}
	j := strings.LastIndexByte(q[:i], '.')
	if j < 0 {
		return "", q
	}
	if len(q)-i-1 == 2 && i-j-1 <= 3 {
		if k := strings.LastIndexByte(q[:j], '.'); k >= 0 {
			j = k
		} else {
			return "", q
		}
	}
	return q[:j], q[j+1:]
}

// Entropy is the Shannon entropy of the bytes of s other than '.', in bits
// per byte (0 for ""). It does not allocate.
func Entropy(s string) (bits float64, n int) {
	var c [256]int
	for i := 0; i < len(s); i++ {
		if s[i] != '.' {
			c[s[i]]++
			n++
		}
	}
	if n == 0 {
		return 0, 0
	}
	for _, v := range c {
		if v > 0 {
			p := float64(v) / float64(n)
			bits -= p * math.Log2(p)
		}
	}
	return bits, n
}

// Tunnel-name thresholds, from shared/data/labeled/dns-tunnel-qnames
// (train.csv: 12,000 tunnel names from dns2tcp, iodine, dnscapy and TUNS,
// 3,000 benign): a subdomain part of at least 24 characters with at least
// 3.5 bits of entropy per character matches 8,872 tunnel names (74 %) and
// no benign one; validate.csv: 2,972 of 4,000 and 0 of 1,000. Benign
// names have at most 20 characters below the parent (p99 7).
const (
	tunnelMinLen     = 24
	tunnelMinEntropy = 3.5
)

// IsTunnelName reports whether the labels below the parent domain of a
// query name are long and high-entropy (encoded data).
func IsTunnelName(q string) bool {
	sub, _ := SplitQName(q)
	h, n := Entropy(sub)
	return n >= tunnelMinLen && h >= tunnelMinEntropy
}

func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

// addSource records a flood source.
func (s *state) addSource(a netip.Addr) {
	if !s.src0.IsValid() {
		s.src0 = a
	} else if a != s.src0 {
		s.manySrc = true
	}
}

// addName records a distinct subdomain (by hash), holding at most max.
func (s *state) addName(h uint64, max int) {
	switch {
	case s.nnames == 0:
		s.name0, s.nnames = h, 1
	case s.names == nil:
		if h != s.name0 {
			s.names = map[uint64]struct{}{s.name0: {}, h: {}}
			s.nnames = 2
		}
	case s.nnames < max:
		s.names[h] = struct{}{}
		s.nnames = len(s.names)
	}
}

// observeMore runs the flood, brute-force and DNS-tunnel rules on f.
func (e *Engine) observeMore(out []*pb.Alert, sensor string, f *pb.Flow, orig, resp netip.Addr) []*pb.Alert {
	t := f.GetStartNs()
	pkts := int(f.GetOrigPkts())
	flood := func(r rule, threshold int, ok func(*state) bool) {
		k := key{rule: r, sensor: sensor, target: resp, win: windowStart(t, e.cfg.FloodWindow)}
		s := e.get(k, t, e.cfg.FloodWindow)
		s.addCID(f.GetCommunityId())
		s.flows++
		s.count += pkts
		s.addSource(orig)
		if r == synFlood {
			s.addPort(f.GetRespPort())
		}
		if n := s.floodCount(); n >= threshold && (ok == nil || ok(s)) && e.due(s, threshold, n) {
			out = append(out, e.floodAlert(k, s, f, threshold))
		}
	}
	switch {
	case !e.targetRules():
	case IsHalfOpen(f):
		flood(synFlood, e.cfg.SynFloodPkts, func(s *state) bool { return s.floodCount() >= synPerPort*s.nports })
	case f.GetProto() == 17:
		flood(udpFlood, e.cfg.UDPFloodPkts, nil)
	case isICMPRequest(f):
		flood(icmpFlood, e.cfg.ICMPFloodPkts, nil)
	}
	if isSession(f) && e.origRules() {
		if c := AuthPort(f.GetRespPort()); c != 0 {
			threshold, kp := e.cfg.BruteSessions, f.GetRespPort()
			if c == 2 {
				// HTTP: only sessions whose response has the same size (16-byte
				// bucket) count together: failed logins all get the same 401
				// page, browsing gets pages of every size.
				threshold = e.cfg.BruteHTTP
				kp |= uint32(min(f.GetRespBytes(), httpMaxResp)>>4) << 16
			}
			k := key{rule: brute, sensor: sensor, orig: orig, target: resp, port: kp, win: windowStart(t, e.cfg.BruteWindow)}
			s := e.get(k, t, e.cfg.BruteWindow)
			s.addCID(f.GetCommunityId())
			s.flows++
			s.count++
			if e.due(s, threshold, s.count) {
				out = append(out, e.bruteAlert(k, s, f, threshold))
			}
		}
	}
	out = e.observeExtra(out, sensor, f, orig, resp)
	if isDNS(f) && e.origRules() {
		q := f.GetServerName()
		sub, parent := SplitQName(q)
		if sub != "" && !strings.HasSuffix(parent, ".arpa") && !strings.HasSuffix(parent, ".local") {
			// The state map holds a hash of the domain, not the string
			// (mkey): nothing pins the flow's memory.
			k := key{rule: dnsTunnel, sensor: sensor, orig: orig, domain: parent, win: windowStart(t, e.cfg.DNSWindow)}
			s := e.get(k, t, e.cfg.DNSWindow)
			s.addCID(f.GetCommunityId())
			s.flows++
			s.count += pkts
			if h, n := Entropy(sub); n >= tunnelMinLen && h >= tunnelMinEntropy {
				s.nlong++
			}
			if e.names != nil && e.names.IsTunnel(q) {
				s.nmodel++
			}
			if qt := f.GetDnsQtype(); qt == QtypeTXT || qt == QtypeNULL {
				s.ntxt += pkts
			}
			s.addName(fnv64(sub), e.cfg.DNSUnique)
			if len(q) > len(s.sample) && !s.fired {
				s.sample = q // evidence only; the flow's string, not copied
			}
			if e.dueDNS(s) {
				out = append(out, e.dnsAlert(k, s, f, resp))
			}
		}
	}
	return out
}

// retractMore is Retract for the rules of this file.
func (e *Engine) retractMore(a *pb.Alert) {
	var ev struct {
		Port   uint32 `json:"service_port"`
		Bucket uint32 `json:"response_bytes_bucket"`
		Domain string `json:"domain"`
	}
	_ = json.Unmarshal(a.GetEvidence(), &ev)
	orig, _ := netip.ParseAddr(a.GetOrigAddr())
	target, _ := netip.ParseAddr(a.GetRespAddr())
	k := key{sensor: a.GetSensor(), win: a.GetWindowStartNs()}
	switch a.GetRule() {
	case RuleSynFlood, RuleUDPFlood, RuleICMPFlood:
		k.rule = map[string]rule{RuleSynFlood: synFlood, RuleUDPFlood: udpFlood, RuleICMPFlood: icmpFlood}[a.GetRule()]
		k.target = target
	case RuleBrute:
		k.rule, k.orig, k.target, k.port = brute, orig, target, ev.Port|ev.Bucket<<16
	case RuleDNSTunnel:
		k.rule, k.orig, k.domain = dnsTunnel, orig, ev.Domain
	default:
		e.retractExtra(a, k)
		return
	}
	if s, ok := e.state[e.mk(k)]; ok {
		retractState(s, a)
	}
}

func elapsedSince(f *pb.Flow, s *state) time.Duration {
	return max(time.Duration(f.GetEndNs()-s.firstNs), 0)
}

func (e *Engine) floodAlert(k key, s *state, f *pb.Flow, threshold int) *pb.Alert {
	name := ruleNames[k.rule]
	o := "" // spoofed or many sources: orig_addr empty
	if !s.manySrc {
		o = s.src0.String()
	}
	t := k.target.String()
	elapsed := elapsedSince(f, s)
	what, technique := "ICMP request packets", "T1498.001"
	switch k.rule {
	case synFlood:
		what, technique = "half-open TCP SYNs", "T1499.001"
	case udpFlood:
		what = "UDP packets"
	}
	ev := map[string]any{
		"packets":         s.floodCount(),
		"flow_packets":    s.count,  // from flow records (FLOWS)
		"live_packets":    s.pcount, // from packet summaries as they arrive (PACKETS; icmp_flood)
		"flows":           s.flows,
		"threshold":       threshold,
		"many_sources":    s.manySrc,
		"first_source":    s.src0.String(),
		"window_start_ns": k.win,
		"window_end_ns":   s.winEndNs,
		"first_packet_ns": s.firstNs,
		"elapsed_seconds": elapsed.Seconds(),
		"community_id":    f.GetCommunityId(),
		"community_ids":   s.exampleCIDs(),
		"update":          s.updates,
	}
	if k.rule == synFlood {
		ev["distinct_ports"] = s.nports
		if s.nports == 1 {
			ev["port"] = s.port0
		}
	}
	evb, _ := json.Marshal(ev)
	from := "many (spoofed) sources"
	if o != "" {
		from = o
	}
	rate := float64(s.floodCount()) / max(elapsed.Seconds(), 0.001)
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, name, o, t, k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      pb.Severity_SEVERITY_HIGH,
		Category:      name,
		Technique:     technique,
		OrigAddr:      o,
		RespAddr:      t,
		Summary:       fmt.Sprintf("%s sent %d %s to %s within %.1fs (%.0f/s)", from, s.floodCount(), what, t, elapsed.Seconds(), rate),
		Evidence:      evb,
		Rule:          name,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(s.count, threshold),
	}
}

func (e *Engine) bruteAlert(k key, s *state, f *pb.Flow, threshold int) *pb.Alert {
	o, t := k.orig.String(), k.target.String()
	target := netip.AddrPortFrom(k.target, uint16(k.port)).String()
	extra := ""
	if k.port>>16 != 0 || AuthPort(k.port&0xffff) == 2 {
		extra = fmt.Sprintf(", each answered with %d-%d bytes", (k.port>>16)<<4, (k.port>>16)<<4+15)
	}
	elapsed := elapsedSince(f, s)
	ev, _ := json.Marshal(map[string]any{
		"service_port":          k.port & 0xffff,
		"response_bytes_bucket": k.port >> 16,
		"sessions":              s.count,
		"threshold":             threshold,
		"window_start_ns":       k.win,
		"window_end_ns":         s.winEndNs,
		"first_session_ns":      s.firstNs,
		"elapsed_seconds":       elapsed.Seconds(),
		"community_id":          f.GetCommunityId(),
		"community_ids":         s.exampleCIDs(),
		"update":                s.updates,
	})
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleBrute, o, target, k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      pb.Severity_SEVERITY_MEDIUM,
		Category:      RuleBrute,
		Technique:     "T1110",
		OrigAddr:      o,
		RespAddr:      t,
		Summary:       fmt.Sprintf("%s opened %d sessions to the login service %s within %.1fs%s", o, s.count, target, elapsed.Seconds(), extra),
		Evidence:      ev,
		Rule:          RuleBrute,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         strength(s.count, threshold),
	}
}

// QTYPE values (RFC 1035 3.2.2) that dns_tunnel counts as TXT/NULL-heavy.
const (
	QtypeNULL = 10
	QtypeTXT  = 16
)

// dnsSignals returns the dns_tunnel criteria a state meets, in a fixed
// order: "long" (DNSLong long high-entropy names), "model" (DNSModel names
// the query-name model classifies as tunnel), "txt_null" (DNSTxtNull
// TXT/NULL query packets, at least half of them), "unique" (DNSUnique
// distinct subdomains), "queries" (DNSQueries query packets); and, for
// each, its count and threshold.
func (e *Engine) dnsSignals(s *state) (names []string, n, threshold []int) {
	for _, c := range []struct {
		name    string
		n, thr  int
		extraOK bool
	}{
		{"long", s.nlong, e.cfg.DNSLong, true},
		{"model", s.nmodel, e.cfg.DNSModel, e.names != nil},
		{"txt_null", s.ntxt, e.cfg.DNSTxtNull, 2*s.ntxt >= s.count},
		{"unique", s.nnames, e.cfg.DNSUnique, true},
		{"queries", s.count, e.cfg.DNSQueries, true},
	} {
		if c.extraOK && c.n >= c.thr {
			names, n, threshold = append(names, c.name), append(n, c.n), append(threshold, c.thr)
		}
	}
	return names, n, threshold
}

// dnsMet reports whether any dns_tunnel criterion is met (dnsSignals
// without allocating).
func (e *Engine) dnsMet(s *state) bool {
	return s.nlong >= e.cfg.DNSLong || (e.names != nil && s.nmodel >= e.cfg.DNSModel) ||
		(s.ntxt >= e.cfg.DNSTxtNull && 2*s.ntxt >= s.count) || s.nnames >= e.cfg.DNSUnique || s.count >= e.cfg.DNSQueries
}

func (e *Engine) dnsAlert(k key, s *state, f *pb.Flow, resolver netip.Addr) *pb.Alert {
	o := k.orig.String()
	elapsed := elapsedSince(f, s)
	signals, counts, thresholds := e.dnsSignals(s)
	// Severity high when the names or record types look like encoded data
	// (long, model, txt_null), medium on volume alone (unique, queries).
	// Score: the strongest signal's strength (0.5 at its threshold, 1 at
	// 10x), plus 0.1 for each other signal met, at most 1.
	sev, score := pb.Severity_SEVERITY_MEDIUM, 0.0
	var why []string
	for i, sig := range signals {
		switch sig {
		case "long", "model", "txt_null":
			sev = pb.Severity_SEVERITY_HIGH
		}
		score = max(score, strength(counts[i], thresholds[i]))
		why = append(why, fmt.Sprintf(map[string]string{
			"long":     "%d long high-entropy names",
			"model":    "%d names the query-name model classifies as tunnel",
			"txt_null": "%d TXT/NULL query packets",
			"unique":   "%d distinct subdomains",
			"queries":  "%d query packets",
		}[sig], counts[i]))
	}
	score = min(1, score+0.1*float64(max(len(signals)-1, 0)))
	share := 0.0
	if s.count > 0 {
		share = float64(s.ntxt) / float64(s.count)
	}
	ev, _ := json.Marshal(map[string]any{
		"community_ids":       s.exampleCIDs(),
		"domain":              k.domain,
		"signals":             signals,
		"queries":             s.count,
		"long_high_entropy":   s.nlong,
		"model_tunnel_names":  s.nmodel,
		"name_model":          e.namesName,
		"txt_null_queries":    s.ntxt,
		"txt_null_share":      share,
		"distinct_subdomains": s.nnames,
		"threshold_long":      e.cfg.DNSLong,
		"threshold_model":     e.cfg.DNSModel,
		"threshold_txt_null":  e.cfg.DNSTxtNull,
		"threshold_unique":    e.cfg.DNSUnique,
		"threshold_queries":   e.cfg.DNSQueries,
		"sample_query":        s.sample,
		"resolver":            resolver.String(),
		"window_start_ns":     k.win,
		"window_end_ns":       s.winEndNs,
		"elapsed_seconds":     elapsed.Seconds(),
		"update":              s.updates,
	})
	return &pb.Alert{
		Id:            schema.AlertID(k.sensor, RuleDNSTunnel, o, k.domain, k.win),
		TimeNs:        f.GetEndNs(),
		Sensor:        k.sensor,
		Severity:      sev,
		Category:      RuleDNSTunnel,
		Technique:     "T1071.004",
		OrigAddr:      o,
		RespAddr:      resolver.String(),
		Summary:       fmt.Sprintf("%s sent %d DNS query packets for names under %s within %.1fs: %s", o, s.count, k.domain, elapsed.Seconds(), strings.Join(why, ", ")),
		Evidence:      ev,
		Rule:          RuleDNSTunnel,
		WindowStartNs: k.win,
		WindowEndNs:   s.winEndNs,
		Score:         score,
	}
}

// dueDNS is due for dns_tunnel, whose five criteria (dnsSignals) each
// have their own threshold: the first publish when any one is reached, an update when the
// query count doubles.
func (e *Engine) dueDNS(s *state) bool {
	if !s.fired {
		if e.dnsMet(s) {
			s.fired = true
			s.next = 2 * max(s.count, 1)
			return true
		}
		return false
	}
	return e.due(s, 1, s.count)
}
