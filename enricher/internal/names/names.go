// Package names keeps the names a sensor's DNS responses gave to addresses
// (passive DNS), so that later flows to those addresses carry them
// (enricher stage: consume → flow (+names) → publish).
package names

import (
	"net/netip"
	"strings"
	"time"

	"netwatch/schema/pb"
)

// Config bounds a Cache.
type Config struct {
	Max    int           // addresses remembered per sensor (default 100000); the least recently learned go first
	MinTTL time.Duration // shortest time a name is kept, whatever the record's TTL (default 5m): clients often connect after a short TTL has passed
	MaxTTL time.Duration // longest time a name is kept (default 24h)
}

// DefaultConfig is the default of the enricher's -dns.names-* flags.
func DefaultConfig() Config {
	return Config{Max: 100_000, MinTTL: 5 * time.Minute, MaxTTL: 24 * time.Hour}
}

type entry struct {
	name           string
	learned, until int64 // packet time, Unix ns
}

// Cache maps addresses to the name a DNS answer gave them, in packet time.
// It holds at most Max addresses in two generations (an address is dropped
// when it was not learned or used during the last two generations of Max/2
// insertions), so memory is bounded. It is not safe for concurrent use.
type Cache struct {
	cfg      Config
	cur, old map[netip.Addr]entry
	Learned  uint64 // A/AAAA answers stored
}

// New returns an empty cache; zero fields of cfg take DefaultConfig's.
func New(cfg Config) *Cache {
	d := DefaultConfig()
	if cfg.Max <= 0 {
		cfg.Max = d.Max
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = d.MinTTL
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = d.MaxTTL
	}
	cfg.Max = max(cfg.Max, 2)
	return &Cache{cfg: cfg, cur: map[netip.Addr]entry{}}
}

// Learn stores the addresses of p's A and AAAA answers (RFC 1035 §3.4.1,
// RFC 3596) when p is a DNS response. An address gets the name the client
// asked for: the owner name of its record, followed back through the
// response's CNAME records (RFC 1034 §3.6.2) to the head of the chain, so
// an address of "dyna.wikimedia.org" reached from "en.wikipedia.org" is
// named "en.wikipedia.org". The name is kept for the record's TTL, clamped
// to [MinTTL, MaxTTL], from the packet's time.
//
// An mDNS or LLMNR answer (the agent's app "mdns", "llmnr": multicast,
// unauthenticated, from any host of the link) is learned only for the
// sender's own address or an address that is not globally routable
// (private, unique local, link-local, loopback: what .local names are for,
// RFC 6762 §3), so that a host on the LAN cannot name 8.8.8.8; a record
// with TTL 0, an mDNS "goodbye" (RFC 6762 §10.1), withdraws the name it
// gave. A DNS answer counts only from source port 53, and one sent to a
// multicast group is taken as a link-local one.
func (c *Cache) Learn(p *pb.PacketSummary) {
	if c == nil || !p.DnsResponse || len(p.DnsAnswers) == 0 {
		return
	}
	local := p.App == "mdns" || p.App == "llmnr"
	if !local {
		// A DNS answer comes from the server's port 53; a "response" sent
		// to port 53 or from any other port answers no query, and one sent
		// to a multicast group reached everyone on the link like mDNS
		// (second QA, seventh session: both named public addresses).
		if p.SrcPort != 53 {
			return
		}
		if dst, ok := netip.AddrFromSlice(p.DstAddr); ok && dst.Unmap().IsMulticast() {
			local = true
		}
	}
	var src netip.Addr
	if local {
		src, _ = netip.AddrFromSlice(p.SrcAddr)
		src = src.Unmap()
	}
	for _, a := range p.DnsAnswers {
		if (a.Type != 1 && a.Type != 28) || a.Name == "" {
			continue
		}
		addr, ok := netip.AddrFromSlice(a.Addr)
		if !ok {
			continue
		}
		if local && addr.Unmap() != src && !linkScoped(addr.Unmap()) {
			continue
		}
		if local && a.Ttl == 0 {
			// A goodbye: the name is withdrawn (RFC 6762 §10.1).
			c.forget(addr.Unmap(), head(p.DnsAnswers, a.Name))
			continue
		}
		ttl := min(max(time.Duration(a.Ttl)*time.Second, c.cfg.MinTTL), c.cfg.MaxTTL)
		c.put(addr.Unmap(), entry{name: head(p.DnsAnswers, a.Name), learned: p.TsNs, until: p.TsNs + int64(ttl)})
		c.Learned++
	}
}

// forget removes a's name if it is name (case-insensitive, RFC 4343).
func (c *Cache) forget(a netip.Addr, name string) {
	for _, m := range []map[netip.Addr]entry{c.cur, c.old} {
		if e, ok := m[a]; ok && strings.EqualFold(e.name, name) {
			delete(m, a)
		}
	}
}

// linkScoped reports whether a is not globally routable: private (RFC 1918,
// RFC 4193 unique local), link-local or loopback.
func linkScoped(a netip.Addr) bool {
	return a.IsPrivate() || a.IsLinkLocalUnicast() || a.IsLoopback()
}

// head follows CNAME records backwards from name (at most 8 steps, RFC 1034
// gives no limit; resolvers stop around 8-16) and returns the first name of
// the chain.
func head(ans []*pb.DNSAnswer, name string) string {
	for range 8 {
		prev := ""
		for _, a := range ans {
			if a.Type == 5 && strings.EqualFold(a.Target, name) {
				prev = a.Name
				break
			}
		}
		if prev == "" || strings.EqualFold(prev, name) {
			return name
		}
		name = prev
	}
	return name
}

func (c *Cache) put(a netip.Addr, e entry) {
	if len(c.cur) >= c.cfg.Max/2 {
		c.old, c.cur = c.cur, make(map[netip.Addr]entry, c.cfg.Max/2)
	}
	c.cur[a] = e
}

// Name returns the name learned for addr (4 or 16 bytes) by a response seen
// at or before end whose lifetime reaches start (Unix ns, a flow record's
// start and end), or "".
func (c *Cache) Name(addr []byte, start, end int64) string {
	if c == nil {
		return ""
	}
	a, ok := netip.AddrFromSlice(addr)
	if !ok {
		return ""
	}
	a = a.Unmap()
	e, ok := c.cur[a]
	if !ok {
		if e, ok = c.old[a]; ok {
			c.put(a, e)
		}
	}
	if !ok || e.learned > end || e.until < start {
		return ""
	}
	return e.name
}

// Len is the number of addresses held.
func (c *Cache) Len() int { return len(c.cur) + len(c.old) }
