package names

import (
	"net/netip"
	"testing"
	"time"

	"netwatch/schema/pb"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

// response is a DNS response as the agent summarizes it: en.wikipedia.org
// CNAME dyna.wikimedia.org, which has an A and an AAAA record (TTL 600 s),
// plus an unrelated A record of its own owner name.
func response(ts int64) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: ts, Proto: 17, SrcPort: 53, DnsResponse: true, DnsQuery: "en.wikipedia.org",
		DnsAnswers: []*pb.DNSAnswer{
			{Name: "en.wikipedia.org", Type: 5, Target: "dyna.wikimedia.org", Ttl: 86400},
			{Name: "dyna.wikimedia.org", Type: 1, Addr: ip("91.198.174.192"), Ttl: 600},
			{Name: "dyna.wikimedia.org", Type: 28, Addr: ip("2620:0:862:ed1a::1"), Ttl: 600},
			{Name: "upload.wikimedia.org", Type: 1, Addr: ip("91.198.174.208"), Ttl: 30},
		}}
}

func TestLearn(t *testing.T) {
	c := New(Config{})
	c.Learn(response(t0))
	sec := func(s float64) int64 { return t0 + int64(s*1e9) }
	for _, tc := range []struct {
		addr       string
		start, end int64
		want       string
	}{
		{"91.198.174.192", sec(1), sec(2), "en.wikipedia.org"},         // A at the end of the CNAME chain
		{"2620:0:862:ed1a::1", sec(1), sec(2), "en.wikipedia.org"},     // AAAA
		{"91.198.174.208", sec(1), sec(2), "upload.wikimedia.org"},     // no chain: its owner name
		{"91.198.174.208", sec(299), sec(300), "upload.wikimedia.org"}, // TTL 30 s raised to the 5 min minimum
		{"91.198.174.208", sec(301), sec(302), ""},                     // expired
		{"91.198.174.192", sec(599), sec(700), "en.wikipedia.org"},     // TTL 600 s reaches the record's start
		{"91.198.174.192", sec(601), sec(700), ""},
		{"91.198.174.192", sec(-10), sec(-1), ""}, // a flow that ended before the answer
		{"8.8.8.8", sec(1), sec(2), ""},
	} {
		if got := c.Name(ip(tc.addr), tc.start, tc.end); got != tc.want {
			t.Errorf("%s [%d, %d]: %q, want %q", tc.addr, (tc.start-t0)/1e9, (tc.end-t0)/1e9, got, tc.want)
		}
	}
	if c.Learned != 3 {
		t.Errorf("learned %d, want 3", c.Learned)
	}
	// Queries and answers without addresses teach nothing.
	q := response(t0)
	q.DnsResponse = false
	q.DnsAnswers[1].Addr = ip("192.0.2.1")
	c.Learn(q)
	if got := c.Name(ip("192.0.2.1"), sec(1), sec(2)); got != "" {
		t.Errorf("learned %q from a query", got)
	}
	var none *Cache
	none.Learn(response(t0))
	if none.Name(ip("91.198.174.192"), t0, t0) != "" {
		t.Error("nil cache")
	}
}

func TestBounded(t *testing.T) {
	c := New(Config{Max: 100})
	for i := range 10000 {
		c.Learn(&pb.PacketSummary{TsNs: t0, SrcPort: 53, DnsResponse: true, DnsAnswers: []*pb.DNSAnswer{
			{Name: "h.example", Type: 1, Addr: []byte{10, 0, byte(i >> 8), byte(i)}, Ttl: 60}}})
	}
	if c.Len() > 100 {
		t.Errorf("%d addresses held, bound 100", c.Len())
	}
	// The most recent ones are there.
	if c.Name([]byte{10, 0, 9999 >> 8, 9999 & 0xff}, t0, t0) != "h.example" {
		t.Error("latest address forgotten")
	}
}

// TestCNAMELoop: a response whose CNAMEs form a loop still gives a name.
func TestCNAMELoop(t *testing.T) {
	c := New(Config{})
	c.Learn(&pb.PacketSummary{TsNs: t0, SrcPort: 53, DnsResponse: true, DnsAnswers: []*pb.DNSAnswer{
		{Name: "a.example", Type: 5, Target: "b.example"},
		{Name: "b.example", Type: 5, Target: "a.example"},
		{Name: "b.example", Type: 1, Addr: ip("192.0.2.7")}}})
	if n := c.Name(ip("192.0.2.7"), t0, t0); n != "a.example" && n != "b.example" {
		t.Errorf("name %q", n)
	}
}

// TestLearnMDNS: an mDNS (or LLMNR) response names the sender's own
// address and addresses that are not globally routable, not a public
// address of another host (any host of the link can send one: independent
// QA, seventh session, named 8.8.8.8 "evil.local"), and a TTL 0 record (an
// mDNS goodbye, RFC 6762 §10.1) teaches nothing. A unicast DNS answer for
// a public address is still learned.
func TestLearnMDNS(t *testing.T) {
	c := New(Config{})
	for _, app := range []string{"mdns", "llmnr"} {
		c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: app, SrcAddr: ip("198.51.100.7"), DnsResponse: true,
			DnsAnswers: []*pb.DNSAnswer{
				{Name: "self-" + app + ".local", Type: 1, Addr: ip("198.51.100.7"), Ttl: 120}, // its own, public: learned
				{Name: "evil-" + app + ".local", Type: 1, Addr: ip("8.8.8.8"), Ttl: 120},      // another host's public: not
				{Name: "nas-" + app + ".local", Type: 1, Addr: ip("192.168.1.20"), Ttl: 120},  // private: learned
				{Name: "ll-" + app + ".local", Type: 28, Addr: ip("fe80::1"), Ttl: 120},       // link-local: learned
				{Name: "gone-" + app + ".local", Type: 1, Addr: ip("192.168.1.21"), Ttl: 0},   // goodbye: not
			}})
		if app == "mdns" {
			for addr, want := range map[string]string{"198.51.100.7": "self-mdns.local", "8.8.8.8": "",
				"192.168.1.20": "nas-mdns.local", "fe80::1": "ll-mdns.local", "192.168.1.21": ""} {
				if got := c.Name(ip(addr), t0+1e9, t0+2e9); got != want {
					t.Errorf("mdns %s: %q, want %q", addr, got, want)
				}
			}
		}
	}
	if c.Learned != 6 {
		t.Errorf("learned %d, want 6 (3 of each response)", c.Learned)
	}
	c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: "dns", SrcAddr: ip("192.0.2.53"), SrcPort: 53, DnsResponse: true,
		DnsAnswers: []*pb.DNSAnswer{{Name: "dns.google", Type: 1, Addr: ip("8.8.8.8"), Ttl: 0}}})
	if got := c.Name(ip("8.8.8.8"), t0+1e9, t0+2e9); got != "dns.google" {
		t.Errorf("unicast DNS answer for 8.8.8.8 (TTL 0, kept 5 min): %q, want dns.google", got)
	}
}

// TestLearnSpoofedPaths: a DNS "response" that does not come from port 53
// (sent to port 53, or between other ports) names nothing; one from port 53
// to a multicast group is held to the link-local rule; an mDNS goodbye
// withdraws a name learned before (second QA, seventh session).
func TestLearnSpoofedPaths(t *testing.T) {
	c := New(Config{})
	ans := func(name, addr string, ttl uint32) []*pb.DNSAnswer {
		return []*pb.DNSAnswer{{Name: name, Type: 1, Addr: ip(addr), Ttl: ttl}}
	}
	c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: "dns", SrcAddr: ip("192.168.60.8"), SrcPort: 40404,
		DstAddr: ip("192.168.60.1"), DstPort: 53, DnsResponse: true, DnsAnswers: ans("www.bank.example", "208.67.222.222", 600)})
	c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: "dns", SrcAddr: ip("192.168.60.9"), SrcPort: 53,
		DstAddr: ip("224.0.0.251"), DstPort: 5353, DnsResponse: true, DnsAnswers: ans("bypass.local", "1.1.1.1", 600)})
	c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: "dns", SrcAddr: ip("192.168.60.9"), SrcPort: 53,
		DstAddr: ip("224.0.0.251"), DstPort: 5353, DnsResponse: true, DnsAnswers: ans("printer.local", "192.168.60.20", 600)})
	c.Learn(&pb.PacketSummary{TsNs: t0, Proto: 17, App: "mdns", SrcAddr: ip("192.168.50.13"), SrcPort: 5353,
		DstAddr: ip("224.0.0.251"), DnsResponse: true, DnsAnswers: ans("hello.local", "192.168.50.13", 120)})
	if got := c.Name(ip("192.168.50.13"), t0+1e9, t0+2e9); got != "hello.local" {
		t.Fatalf("hello.local not learned: %q", got)
	}
	c.Learn(&pb.PacketSummary{TsNs: t0 + 1e9, Proto: 17, App: "mdns", SrcAddr: ip("192.168.50.13"), SrcPort: 5353,
		DstAddr: ip("224.0.0.251"), DnsResponse: true, DnsAnswers: ans("HELLO.local", "192.168.50.13", 0)})
	for addr, want := range map[string]string{"208.67.222.222": "", "1.1.1.1": "", "192.168.60.20": "printer.local",
		"192.168.50.13": ""} {
		if got := c.Name(ip(addr), t0+70e9, t0+71e9); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
}
