package rules

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// halfOpen is a SYN from src answered by SYN-ACK and reset by the
// originator's kernel (hping3 -S): no ACK from the originator.
func halfOpen(src []byte, at int64) *pb.Flow {
	return &pb.Flow{Proto: 6, OrigAddr: src, OrigPort: 1024, RespAddr: victim, RespPort: 80,
		StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1,
		OrigTcpFlags: flagSYN | flagRST, RespTcpFlags: flagSYN | flagACK, Final: true}
}

func spoofed(i int) []byte { return []byte{byte(1 + i>>16), byte(i >> 8), byte(i), 7} }

func icmpEcho(pkts uint64, at int64) *pb.Flow {
	return &pb.Flow{Proto: 1, OrigAddr: scanner, RespAddr: victim, IcmpType: 8, StartNs: at, EndNs: at + 1e6,
		OrigPkts: pkts, RespPkts: pkts, Final: true}
}

func udpPkts(pkts uint64, at int64) *pb.Flow {
	return &pb.Flow{Proto: 17, OrigAddr: scanner, OrigPort: 5000, RespAddr: victim, RespPort: 9, StartNs: at, EndNs: at + 1e6,
		OrigPkts: pkts, OrigBytes: pkts * 100, Final: true}
}

// session is one login attempt: handshake, payload both ways, respBytes back.
func session(port uint32, respBytes uint64, at int64) *pb.Flow {
	return &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
		StartNs: at, EndNs: at + 5e8, OrigPkts: 10, OrigBytes: 600, RespPkts: 8, RespBytes: respBytes,
		OrigTcpFlags: flagSYN | flagACK | flagFIN, RespTcpFlags: flagSYN | flagACK | flagFIN, Final: true}
}

func dnsQuery(name string, at int64) *pb.Flow {
	return &pb.Flow{Proto: 17, OrigAddr: scanner, OrigPort: 33333, RespAddr: victim, RespPort: 53, App: "dns",
		StartNs: at, EndNs: at + 1e6, OrigPkts: 1, OrigBytes: uint64(len(name) + 20), RespPkts: 1, RespBytes: 100,
		ServerName: name, Final: true}
}

func TestMoreRules(t *testing.T) {
	ms := int64(time.Millisecond)
	n := func(count int, mk func(i int) *pb.Flow) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < count; i++ {
			fs = append(fs, mk(i))
		}
		return fs
	}
	// 40 hand-made high-entropy labels (base32-like, 32 characters).
	tunnel := func(i int) string {
		const a = "abcdefghijklmnopqrstuvwxyz234567"
		b := make([]byte, 32)
		for j := range b {
			b[j] = a[(i*7+j*13+j*j)%32]
		}
		return string(b) + ".t.example.org."
	}
	win := windowStart(t0, time.Minute)
	cases := []struct {
		name     string
		flows    []*pb.Flow
		category string // "" for none
		orig     string
		target   string // the alert id's target
		severity pb.Severity
	}{
		{"999 spoofed half-open SYNs", n(999, func(i int) *pb.Flow { return halfOpen(spoofed(i), t0+int64(i)*ms/10) }), "", "", "", 0},
		{"1000 spoofed half-open SYNs", n(1000, func(i int) *pb.Flow { return halfOpen(spoofed(i), t0+int64(i)*ms/10) }), "syn_flood", "", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"1500 half-open SYNs from one source", n(1500, func(i int) *pb.Flow { return halfOpen(scanner, t0+int64(i)*ms/10) }), "syn_flood", "10.0.0.66", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"1500 SYN probes to 1500 ports (a scan, not a flood)", n(1500, func(i int) *pb.Flow {
			f := halfOpen(scanner, t0+int64(i)*ms/10)
			f.RespPort = uint32(1 + i)
			return f
		}), "portscan", "10.0.0.66", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"1500 completed connections", n(1500, func(i int) *pb.Flow { return conversation(443, t0+int64(i)*ms/10) }), "", "", "", 0},
		{"ICMP echo 999 packets", []*pb.Flow{icmpEcho(999, t0)}, "", "", "", 0},
		{"ICMP echo 1000 packets", []*pb.Flow{icmpEcho(1000, t0)}, "icmp_flood", "10.0.0.66", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"ICMP echo 500+600 packets (interim records)", []*pb.Flow{icmpEcho(500, t0), icmpEcho(600, t0+ms)}, "icmp_flood", "10.0.0.66", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"UDP 9999 packets", []*pb.Flow{udpPkts(9999, t0)}, "", "", "", 0},
		{"UDP 10000 packets", []*pb.Flow{udpPkts(10000, t0)}, "udp_flood", "10.0.0.66", "10.0.0.20", pb.Severity_SEVERITY_HIGH},
		{"3 SSH sessions", n(3, func(i int) *pb.Flow { return session(22, 2700, t0+int64(i)*ms) }), "", "", "", 0},
		{"4 SSH sessions", n(4, func(i int) *pb.Flow { return session(22, 2700, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:22", pb.Severity_SEVERITY_MEDIUM},
		{"9 FTP sessions", n(9, func(i int) *pb.Flow { return session(21, 900, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:21", pb.Severity_SEVERITY_MEDIUM},
		// Every other login port of the list (Telnet, RDP, SMB,
		// MySQL) and of AuthPort, at the threshold of 4 sessions:
		{"4 Telnet sessions", n(4, func(i int) *pb.Flow { return session(23, 300, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:23", pb.Severity_SEVERITY_MEDIUM},
		{"3 RDP sessions", n(3, func(i int) *pb.Flow { return session(3389, 4000, t0+int64(i)*ms) }), "", "", "", 0},
		{"4 RDP sessions", n(4, func(i int) *pb.Flow { return session(3389, 4000, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:3389", pb.Severity_SEVERITY_MEDIUM},
		{"4 SMB sessions (445)", n(4, func(i int) *pb.Flow { return session(445, 700, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:445", pb.Severity_SEVERITY_MEDIUM},
		{"4 SMB sessions (139)", n(4, func(i int) *pb.Flow { return session(139, 700, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:139", pb.Severity_SEVERITY_MEDIUM},
		{"4 MySQL sessions", n(4, func(i int) *pb.Flow { return session(3306, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:3306", pb.Severity_SEVERITY_MEDIUM},
		{"4 MSSQL sessions", n(4, func(i int) *pb.Flow { return session(1433, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:1433", pb.Severity_SEVERITY_MEDIUM},
		{"4 PostgreSQL sessions", n(4, func(i int) *pb.Flow { return session(5432, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:5432", pb.Severity_SEVERITY_MEDIUM},
		{"4 POP3 sessions", n(4, func(i int) *pb.Flow { return session(110, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:110", pb.Severity_SEVERITY_MEDIUM},
		{"4 IMAP sessions", n(4, func(i int) *pb.Flow { return session(143, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:143", pb.Severity_SEVERITY_MEDIUM},
		{"4 VNC sessions", n(4, func(i int) *pb.Flow { return session(5900, 150, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:5900", pb.Severity_SEVERITY_MEDIUM},
		{"9 SSH port probes (no payload)", n(9, func(i int) *pb.Flow { return synProbe(22, t0+int64(i)*ms) }), "", "", "", 0},
		{"20 HTTPS sessions (not a login port)", n(20, func(i int) *pb.Flow { return session(443, 2700, t0+int64(i)*ms) }), "", "", "", 0},
		{"29 HTTP 401s", n(29, func(i int) *pb.Flow { return session(8080, 230, t0+int64(i)*ms) }), "", "", "", 0},
		{"30 HTTP 401s", n(30, func(i int) *pb.Flow { return session(8080, 230, t0+int64(i)*ms) }), "bruteforce", "10.0.0.66", "10.0.0.20:8080", pb.Severity_SEVERITY_MEDIUM},
		{"60 HTTP pages of different sizes", n(60, func(i int) *pb.Flow { return session(80, uint64(1000+100*i), t0+int64(i)*ms) }), "", "", "", 0},
		{"19 tunnel names", n(19, func(i int) *pb.Flow { return dnsQuery(tunnel(i), t0+int64(i)*ms) }), "", "", "", 0},
		{"20 tunnel names", n(20, func(i int) *pb.Flow { return dnsQuery(tunnel(i), t0+int64(i)*ms) }), "dns_tunnel", "10.0.0.66", "example.org", pb.Severity_SEVERITY_HIGH},
		{"99 distinct short subdomains", n(99, func(i int) *pb.Flow { return dnsQuery(fmt.Sprintf("h%d.example.org.", i), t0+int64(i)*ms) }), "", "", "", 0},
		{"100 distinct short subdomains", n(100, func(i int) *pb.Flow { return dnsQuery(fmt.Sprintf("h%d.example.org.", i), t0+int64(i)*ms) }), "dns_tunnel", "10.0.0.66", "example.org", pb.Severity_SEVERITY_MEDIUM},
		{"149 queries for one name", n(149, func(i int) *pb.Flow { return dnsQuery("www.example.org.", t0+int64(i)*ms) }), "", "", "", 0},
		{"150 queries for one name", n(150, func(i int) *pb.Flow { return dnsQuery("www.example.org.", t0+int64(i)*ms) }), "dns_tunnel", "10.0.0.66", "example.org", pb.Severity_SEVERITY_MEDIUM},
		{"200 reverse lookups", n(200, func(i int) *pb.Flow { return dnsQuery(fmt.Sprintf("%d.1.0.10.in-addr.arpa.", i), t0+int64(i)*ms) }), "", "", "", 0},
		{"60 bare names under co.uk", n(60, func(i int) *pb.Flow { return dnsQuery(fmt.Sprintf("site%d.co.uk.", i), t0+int64(i)*ms) }), "", "", "", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := run(New(DefaultConfig()), c.flows)
			if c.category == "" {
				if len(got) != 0 {
					t.Fatalf("alerts = %d (%s), want 0", len(got), got[0].Summary)
				}
				return
			}
			var a *pb.Alert
			for _, x := range got {
				if x.Category == c.category {
					if a != nil {
						t.Fatalf("two %s alerts in one window", c.category)
					}
					a = x
				} else if x.Category != "portscan" && x.Category != "hostsweep" {
					t.Errorf("unexpected %s alert: %s", x.Category, x.Summary)
				}
			}
			if a == nil {
				t.Fatalf("no %s alert among %d", c.category, len(got))
			}
			win := win
			if strings.HasSuffix(c.category, "_flood") {
				win = windowStart(t0, DefaultConfig().FloodWindow) // 10 s windows
			}
			wantID := schema.AlertID("s1", a.Rule, c.orig, c.target, win)
			if a.Id != wantID || a.OrigAddr != c.orig || a.Severity != c.severity || a.WindowStartNs != win || a.Technique == "" {
				t.Errorf("alert %+v, want id %s orig %q severity %v", a, wantID, c.orig, c.severity)
			}
			var ev map[string]any
			if err := json.Unmarshal(a.Evidence, &ev); err != nil {
				t.Fatalf("evidence: %v", err)
			}
			// Replay on a fresh engine: same alert; redelivery on the same engine: none.
			e := New(DefaultConfig())
			again := run(e, c.flows)
			if len(again) != len(got) || again[len(again)-1].Id != got[len(got)-1].Id || string(again[len(again)-1].Evidence) != string(got[len(got)-1].Evidence) {
				t.Errorf("replay differs")
			}
			if n := len(run(e, c.flows)); n != 0 {
				t.Errorf("redelivery: %d alerts, want 0", n)
			}
			// Retract (failed publish): the next matching flow fires it again.
			e.Retract(a)
			refire := run(e, c.flows[len(c.flows)-1:])
			if len(refire) != 1 || refire[0].Id != a.Id {
				t.Errorf("after retract: %d alerts", len(refire))
			}
		})
	}
}

func TestSplitQName(t *testing.T) {
	for q, want := range map[string][2]string{
		"www.example.org.":       {"www", "example.org"},
		"a.b.t.lab.test":         {"a.b.t", "lab.test"},
		"example.org.":           {"", "example.org"},
		"huffingtonpost.co.uk.":  {"", "huffingtonpost.co.uk"},
		"news.bbc.co.uk":         {"news", "bbc.co.uk"},
		"localhost":              {"", "localhost"},
		"x.mercadolivre.com.br.": {"x", "mercadolivre.com.br"},
		"":                       {"", ""},
	} {
		sub, parent := SplitQName(q)
		if sub != want[0] || parent != want[1] {
			t.Errorf("SplitQName(%q) = %q, %q, want %q, %q", q, sub, parent, want[0], want[1])
		}
	}
	// Hand-checked: "aabb" has 1 bit per character; 16 distinct characters 4.
	if h, n := Entropy("aa.bb"); h != 1 || n != 4 {
		t.Errorf("Entropy(aa.bb) = %v, %d", h, n)
	}
	if h, _ := Entropy("0123456789abcdef"); h != 4 {
		t.Errorf("Entropy(hex) = %v", h)
	}
}

// TestMoreAllocs guards the per-flow path of the new rules on keys
// already held: a SYN flood flow, a login session, a DNS query.
func TestMoreAllocs(t *testing.T) {
	e := New(DefaultConfig())
	fs := map[string]*pb.Flow{
		"half-open SYN":    halfOpen(netip.MustParseAddr("1.2.3.4").AsSlice(), t0),
		"ICMP echo":        icmpEcho(1, t0),
		"ssh session":      session(22, 2700, t0),
		"dns tunnel query": dnsQuery("gezdgnbvgy3tqojqgezdgnbvgy3tqojq.t.example.org.", t0),
	}
	for _, f := range fs {
		e.Observe("s1", f)
		e.Observe("s1", f)
	}
	for name, f := range fs {
		if n := testing.AllocsPerRun(1000, func() { e.Observe("s1", f) }); n != 0 {
			t.Errorf("%s: %v allocations per flow, want 0", name, n)
		}
	}
}

// TestTunnelNamesDataset checks IsTunnelName on the labelled query names
// (shared/data/labeled/dns-tunnel-qnames). The expected counts were
// computed independently (a Python script: last two labels as parent,
// Shannon entropy of the rest without dots, length ≥ 24 and ≥ 3.5 bits).
func TestTunnelNamesDataset(t *testing.T) {
	dir := filepath.Join(testkit.Shared(t), "data", "labeled", "dns-tunnel-qnames")
	for _, c := range []struct {
		file           string
		tunnel, benign int // rows
		tp, fp         int
	}{
		{"train.csv", 12000, 3000, 8872, 0},
		{"validate.csv", 4000, 1000, 2972, 0},
	} {
		b, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			testkit.Unavailable(t, "labelled query names: %v", err)
		}
		var tunnel, benign, tp, fp int
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			label, q, ok := strings.Cut(strings.TrimSpace(line), ",")
			if !ok {
				t.Fatalf("%s: bad line %q", c.file, line)
			}
			hit := IsTunnelName(q)
			if label == "1" {
				tunnel++
				if hit {
					tp++
				}
			} else {
				benign++
				if hit {
					fp++
				}
			}
		}
		t.Logf("%s: %d of %d tunnel names, %d of %d benign", c.file, tp, tunnel, fp, benign)
		if tunnel != c.tunnel || benign != c.benign || tp != c.tp || fp != c.fp {
			t.Errorf("%s: tunnel %d benign %d tp %d fp %d, want %d %d %d %d", c.file, tunnel, benign, tp, fp, c.tunnel, c.benign, c.tp, c.fp)
		}
	}
}

// TestDNSTunnelSignals: the TXT/NULL criterion at 49/50 query packets and
// at less than half of the window's queries, and the query-name model
// wired in: the rule counts exactly the names the shipped model flags,
// and its evidence names the signals that fired.
func TestDNSTunnelSignals(t *testing.T) {
	ms := int64(time.Millisecond)
	typed := func(count int, qtype uint32, name func(i int) string, from int) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < count; i++ {
			f := dnsQuery(name(i), t0+int64(from+i)*ms)
			f.DnsQtype = qtype
			fs = append(fs, f)
		}
		return fs
	}
	same := func(int) string { return "www.example.org." }
	type evidence struct {
		Signals []string `json:"signals"`
		TxtNull int      `json:"txt_null_queries"`
		Model   int      `json:"model_tunnel_names"`
		Queries int      `json:"queries"`
	}
	for _, c := range []struct {
		name     string
		flows    []*pb.Flow
		signals  []string // nil: no alert
		txtNull  int
		severity pb.Severity
	}{
		{"49 TXT queries", typed(49, QtypeTXT, same, 0), nil, 0, 0},
		{"50 TXT queries", typed(50, QtypeTXT, same, 0), []string{"txt_null"}, 50, pb.Severity_SEVERITY_HIGH},
		{"50 NULL queries", typed(50, QtypeNULL, same, 0), []string{"txt_null"}, 50, pb.Severity_SEVERITY_HIGH},
		{"50 NULL after 51 A queries (under half)", append(typed(51, 1, same, 0), typed(50, QtypeNULL, same, 51)...), nil, 0, 0},
		{"50 NULL after 50 A queries (half)", append(typed(50, 1, same, 0), typed(50, QtypeNULL, same, 50)...), []string{"txt_null"}, 50, pb.Severity_SEVERITY_HIGH},
		{"100 MX queries", typed(100, 15, same, 0), nil, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := run(New(DefaultConfig()), c.flows)
			if c.signals == nil {
				if len(got) != 0 {
					t.Fatalf("alert: %s", got[0].Summary)
				}
				return
			}
			if len(got) != 1 || got[0].Category != "dns_tunnel" || got[0].Severity != c.severity || got[0].OrigAddr != "10.0.0.66" {
				t.Fatalf("alerts %v", got)
			}
			var ev evidence
			if err := json.Unmarshal(got[0].Evidence, &ev); err != nil {
				t.Fatal(err)
			}
			if strings.Join(ev.Signals, ",") != strings.Join(c.signals, ",") || ev.TxtNull != c.txtNull {
				t.Errorf("evidence %s, want signals %v, %d TXT/NULL", got[0].Evidence, c.signals, c.txtNull)
			}
		})
	}

	// The model: dnscat2-style hex names (not long enough for IsTunnelName's
	// 24 characters below the parent) under one domain. The expected count
	// is the model's own verdict on each name (qname tests its accuracy);
	// here the rule must count exactly those and fire at the 20th.
	m := shippedNameModel(t)
	var flagged []string
	for i := 0; len(flagged) < 25 && i < 10000; i++ {
		q := fmt.Sprintf("%016x.c2.example.net.", uint64(i)*0x9e3779b97f4a7c15)
		if m.IsTunnel(q) && !IsTunnelName(q) {
			flagged = append(flagged, q)
		}
	}
	if len(flagged) < 20 {
		t.Fatalf("only %d generated names flagged by the model", len(flagged))
	}
	for _, n := range []int{19, 20} {
		e := New(DefaultConfig())
		e.SetNameModel(m, "qname-id3")
		got := run(e, typed(n, 1, func(i int) string { return flagged[i] }, 0))
		if n == 19 {
			if len(got) != 0 {
				t.Errorf("19 flagged names: %s", got[0].Summary)
			}
			continue
		}
		if len(got) != 1 {
			t.Fatalf("20 flagged names: %d alerts", len(got))
		}
		var ev evidence
		_ = json.Unmarshal(got[0].Evidence, &ev)
		if strings.Join(ev.Signals, ",") != "model" || ev.Model != 20 || got[0].Severity != pb.Severity_SEVERITY_HIGH ||
			!strings.Contains(string(got[0].Evidence), `"name_model":"qname-id3"`) {
			t.Errorf("evidence %s severity %v", got[0].Evidence, got[0].Severity)
		}
	}
	// Without the model the same names raise nothing.
	if got := run(New(DefaultConfig()), typed(20, 1, func(i int) string { return flagged[i] }, 0)); len(got) != 0 {
		t.Errorf("no model: %s", got[0].Summary)
	}
}
