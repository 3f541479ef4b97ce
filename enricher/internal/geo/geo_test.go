package geo

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dataDir holds MaxMind's test databases and their source JSON
// (../shared/data/geoip/README.md).
var dataDir = filepath.Join("..", "..", "..", "..", "shared", "data", "geoip")

func path(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(dataDir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test database: %v", err)
	}
	return p
}

// source reads a MaxMind test source file: a list of {"<network>": record}.
func source[T any](t *testing.T, name string) map[netip.Prefix]T {
	t.Helper()
	b, err := os.ReadFile(path(t, name))
	if err != nil {
		t.Fatal(err)
	}
	var list []map[string]T
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	m := map[netip.Prefix]T{}
	for _, e := range list {
		for k, v := range e {
			p, err := netip.ParsePrefix(k)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			m[v4(p).Masked()] = v
		}
	}
	return m
}

// v4 turns a network of the IPv4 subtree of an IPv6 database (::a.b.c.d/96+n,
// as the City source writes IPv4 networks) into a.b.c.d/n: the MaxMind DB
// format keeps IPv4 at ::/96 (MaxMind DB spec, "IPv4 addresses in an IPv6
// tree").
func v4(p netip.Prefix) netip.Prefix {
	b := p.Addr().As16()
	if p.Addr().Is4() || p.Bits() < 96 || [12]byte(b[:12]) != [12]byte{} {
		return p
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(b[12:])), p.Bits()-96)
}

// longest is the most specific network of src containing a.
func longest[T any](src map[netip.Prefix]T, a netip.Addr) (T, bool) {
	var best netip.Prefix
	var v T
	found := false
	for p, r := range src {
		if p.Contains(a) && (!found || p.Bits() > best.Bits()) {
			best, v, found = p, r, true
		}
	}
	return v, found
}

type cityJSON struct {
	Country struct {
		ISOCode string `json:"iso_code"`
	} `json:"country"`
	City struct {
		Names map[string]string `json:"names"`
	} `json:"city"`
}

type asnJSON struct {
	Number uint32 `json:"autonomous_system_number"`
	Org    string `json:"autonomous_system_organization"`
}

// TestLookupMatchesSource checks the first and last address of every network
// in the test databases' source JSON against what Lookup returns, the
// expected values taken from the JSON (the most specific network holding the
// address), not from the reader.
func TestLookupMatchesSource(t *testing.T) {
	db, err := Open(path(t, "GeoIP2-City-Test.mmdb"), path(t, "GeoLite2-ASN-Test.mmdb"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	city := source[cityJSON](t, "GeoIP2-City-Test.json")
	asn := source[asnJSON](t, "GeoLite2-ASN-Test.json")
	addrs := map[netip.Addr]bool{}
	for _, m := range []map[netip.Prefix]bool{keys(city), keys(asn)} {
		for p := range m {
			addrs[p.Addr()] = true
			addrs[last(p)] = true
		}
	}
	var checked, withCity, withASN int
	for a := range addrs {
		var want Info
		if c, ok := longest(city, a); ok {
			want.Country, want.City = c.Country.ISOCode, c.City.Names["en"]
		}
		if r, ok := longest(asn, a); ok {
			want.ASN, want.ASOrg = r.Number, r.Org
		}
		got := db.Lookup(a)
		if *got != want {
			t.Errorf("%s: got %+v, want %+v", a, *got, want)
		}
		checked++
		if want.City != "" {
			withCity++
		}
		if want.ASN != 0 {
			withASN++
		}
	}
	if checked < 50 || withCity < 5 || withASN < 20 {
		t.Errorf("checked %d addresses, %d with a city and %d with an ASN: source files too small?", checked, withCity, withASN)
	}
	// Two README examples, by hand.
	if in := db.Lookup(netip.MustParseAddr("2.125.160.216")); in.Country != "GB" {
		t.Errorf("2.125.160.216: %+v, want GB", *in)
	}
	if in := db.Lookup(netip.MustParseAddr("::ffff:1.128.0.1")); in.ASN != 1221 {
		t.Errorf("1.128.0.1 (mapped): %+v, want AS1221", *in)
	}
	// Private and documentation space is in no network.
	if in := db.Lookup(netip.MustParseAddr("10.0.0.1")); *in != (Info{}) {
		t.Errorf("10.0.0.1: %+v, want nothing", *in)
	}
}

func keys[T any](m map[netip.Prefix]T) map[netip.Prefix]bool {
	k := map[netip.Prefix]bool{}
	for p := range m {
		k[p] = true
	}
	return k
}

// last is the last address of p.
func last(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func TestCache(t *testing.T) {
	db, err := Open("", path(t, "GeoLite2-ASN-Test.mmdb"), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a := netip.MustParseAddr("1.128.0.1")
	for range 3 {
		if db.Lookup(a).ASN != 1221 {
			t.Fatal("lookup")
		}
	}
	if db.Lookups != 1 || db.Hits != 2 {
		t.Errorf("lookups %d hits %d, want 1 and 2", db.Lookups, db.Hits)
	}
	for i := range 100 {
		db.Lookup(netip.AddrFrom4([4]byte{1, 128, 0, byte(i)}))
	}
	if n := len(db.cur) + len(db.old); n > 4 {
		t.Errorf("cache holds %d addresses, bound 4", n)
	}
}

func TestOpenErrors(t *testing.T) {
	for _, c := range []struct{ city, asn, want string }{
		{path(t, "GeoIP2-City-Test-Broken-Double-Format.mmdb"), "", "-geoip.city"},
		{"", path(t, "GeoIP2-City-Test.mmdb"), "database type"},  // a City file as ASN
		{path(t, "GeoLite2-ASN-Test.mmdb"), "", "database type"}, // an ASN file as City
		{filepath.Join(t.TempDir(), "missing.mmdb"), "", "missing.mmdb"},
		{path(t, "GeoIP2-City-Test.json"), "", "-geoip.city"}, // not a database
	} {
		db, err := Open(c.city, c.asn, 0)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%q, %q): db %v err %v, want an error with %q", c.city, c.asn, db, err, c.want)
		}
	}
	if db, err := Open("", "", 0); db != nil || err != nil {
		t.Errorf("no files: %v %v", db, err)
	}
	var none *DB
	if in := none.Lookup(netip.MustParseAddr("1.128.0.1")); *in != (Info{}) {
		t.Errorf("nil DB: %+v", *in)
	}
	// The country database serves -geoip.city (country only).
	db, err := Open(path(t, "GeoIP2-Country-Test.mmdb"), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
}
