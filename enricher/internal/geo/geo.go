// Package geo looks up the country, city and autonomous system of flow
// addresses in MaxMind DB files (enricher stage: consume → flow (+geo) →
// publish). The format is the MaxMind DB format, spec at
// https://maxmind.github.io/MaxMind-DB/; GeoIP2/GeoLite2 City (or Country)
// and ASN databases are read with github.com/oschwald/maxminddb-golang/v2.
package geo

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/oschwald/maxminddb-golang/v2"
)

// Info is what the databases say about one address. The zero value (no
// database, or the address is in no network of it) has empty strings and
// ASN 0.
type Info struct {
	Country string // ISO 3166-1 alpha-2 code, e.g. "SE" (City or Country database)
	City    string // English city name (City database)
	ASN     uint32 // autonomous system number (ASN database)
	ASOrg   string // autonomous system organisation (ASN database)
}

// DB is a City (or Country) database and an ASN database, either may be
// absent, with a bounded cache of recent lookups. It is safe for concurrent
// use.
type DB struct {
	city, asn *maxminddb.Reader

	mu       sync.Mutex
	cur, old map[netip.Addr]*Info // two generations: a cheap LRU approximation
	max      int

	Lookups, Hits uint64 // database lookups and cache hits, under mu
}

// DefaultCacheSize is the number of addresses a DB remembers by default.
const DefaultCacheSize = 65536

// Open opens the City (or Country) database at cityPath and the ASN
// database at asnPath; an empty path leaves that half out, both empty
// returns (nil, nil). Each file is verified in full (the search tree, the
// data section and the metadata, maxminddb.Reader.Verify) so a broken file
// is an error at start, not a wrong answer later; a database of the wrong
// type (an ASN file given as City) is an error too. cacheSize ≤ 0 means
// DefaultCacheSize.
func Open(cityPath, asnPath string, cacheSize int) (*DB, error) {
	if cityPath == "" && asnPath == "" {
		return nil, nil
	}
	if cacheSize <= 0 {
		cacheSize = DefaultCacheSize
	}
	db := &DB{max: cacheSize, cur: map[netip.Addr]*Info{}}
	var err error
	if cityPath != "" {
		if db.city, err = open(cityPath, "-geoip.city", "City", "Country", "Enterprise"); err != nil {
			return nil, err
		}
	}
	if asnPath != "" {
		if db.asn, err = open(asnPath, "-geoip.asn", "ASN"); err != nil {
			if db.city != nil {
				db.city.Close()
			}
			return nil, err
		}
	}
	return db, nil
}

func open(path, flag string, types ...string) (*maxminddb.Reader, error) {
	r, err := maxminddb.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, path, err)
	}
	if err := r.Verify(); err != nil {
		r.Close()
		return nil, fmt.Errorf("%s %s: broken database: %w", flag, path, err)
	}
	t := r.Metadata.DatabaseType
	for _, w := range types {
		if strings.Contains(t, w) {
			return r, nil
		}
	}
	r.Close()
	return nil, fmt.Errorf("%s %s: database type %q, want one with %s", flag, path, t, strings.Join(types, " or "))
}

// Close releases the databases.
func (db *DB) Close() error {
	if db == nil {
		return nil
	}
	var errs []error
	for _, r := range []*maxminddb.Reader{db.city, db.asn} {
		if r != nil {
			errs = append(errs, r.Close())
		}
	}
	return errors.Join(errs...)
}

// cityRecord holds the fields read from a City/Country record (field names
// of the GeoIP2 City format).
type cityRecord struct {
	Country struct {
		ISOCode string `maxminddb:"iso_code"`
	} `maxminddb:"country"`
	City struct {
		Names struct {
			EN string `maxminddb:"en"`
		} `maxminddb:"names"`
	} `maxminddb:"city"`
}

type asnRecord struct {
	Number uint32 `maxminddb:"autonomous_system_number"`
	Org    string `maxminddb:"autonomous_system_organization"`
}

// Lookup returns what the databases hold for addr (an IPv4-mapped IPv6
// address is looked up as IPv4). The result is shared: do not modify it. A
// nil DB, an invalid address or an address in no network gives a pointer
// to a zero Info. A record that fails to decode gives what could be read.
func (db *DB) Lookup(addr netip.Addr) *Info {
	if db == nil || !addr.IsValid() {
		return &zero
	}
	addr = addr.Unmap()
	db.mu.Lock()
	defer db.mu.Unlock()
	if in, ok := db.cur[addr]; ok {
		db.Hits++
		return in
	}
	if in, ok := db.old[addr]; ok {
		db.Hits++
		db.put(addr, in)
		return in
	}
	db.Lookups++
	var in Info
	if db.city != nil {
		var c cityRecord
		if db.city.Lookup(addr).Decode(&c) == nil {
			in.Country, in.City = c.Country.ISOCode, c.City.Names.EN
		}
	}
	if db.asn != nil {
		var a asnRecord
		if db.asn.Lookup(addr).Decode(&a) == nil {
			in.ASN, in.ASOrg = a.Number, a.Org
		}
	}
	p := &zero
	if in != zero {
		p = &in
	}
	db.put(addr, p)
	return p
}

var zero Info

func (db *DB) put(addr netip.Addr, in *Info) {
	if len(db.cur) >= db.max/2 {
		db.old, db.cur = db.cur, make(map[netip.Addr]*Info, db.max/2)
	}
	db.cur[addr] = in
}
