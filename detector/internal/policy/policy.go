// Package policy is the detector's reloadable configuration file (-config
// FILE, YAML or JSON): allow-lists that suppress alerts and per-rule
// thresholds that override the flags. The file is watched (fsnotify on its
// directory, so editors that replace the file are seen) and re-read on
// SIGHUP; a file that does not parse or validate keeps the previous policy
// and the error is reported.
//
// Example:
//
//	allow:
//	  - networks: [10.9.0.0/24]          # the vulnerability scanners: no alert names them
//	  - addresses: [10.0.0.53]
//	    rules: [dns_tunnel, dga]         # the resolver, for these rules only
//	  - rules: [beaconing]               # rule switched off
//	thresholds:
//	  portscan.ports: 80                 # a flag name without the dash, and its value
//	  beacon.max-cv: 0.1
package policy

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/goccy/go-yaml"

	"netwatch/schema/pb"
)

// File is the document's shape. Unknown keys are an error.
type File struct {
	Allow      []AllowEntry   `yaml:"allow" json:"allow"`
	Thresholds map[string]any `yaml:"thresholds" json:"thresholds"`
}

// AllowEntry suppresses the alerts it matches: an alert of one of Rules
// (every rule when empty) whose originator or responder is one of
// Addresses or inside one of Networks (any alert when both are empty).
type AllowEntry struct {
	Addresses []string `yaml:"addresses" json:"addresses"`
	Networks  []string `yaml:"networks" json:"networks"`
	Rules     []string `yaml:"rules" json:"rules"`
}

type entry struct {
	addrs    []netip.Addr
	prefixes []netip.Prefix
	rules    []string
}

// Policy is a loaded, validated file. The zero value allows nothing and
// overrides nothing.
type Policy struct {
	entries []entry
	// Thresholds are flag name → value (text), applied with Apply.
	Thresholds map[string]string
}

// Parse reads a YAML or JSON document. Errors name the bad field: an
// unknown key, an address or network that does not parse, a threshold
// value that is not a scalar.
func Parse(data []byte) (p *Policy, err error) {
	var f File
	// goccy/go-yaml v1.19.2 panics (nil dereference) on some malformed
	// documents (FuzzParse, testdata/fuzz/FuzzParse): a bad file must stay
	// an error, never take the detector down on a reload.
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("parse: malformed document (%v)", r)
		}
	}()
	if err := yaml.UnmarshalWithOptions(data, &f, yaml.DisallowUnknownField()); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	p = &Policy{Thresholds: map[string]string{}}
	var errs []error
	for i, e := range f.Allow {
		var x entry
		for _, a := range e.Addresses {
			v, err := netip.ParseAddr(a)
			if err != nil {
				errs = append(errs, fmt.Errorf("allow[%d].addresses: %w", i, err))
				continue
			}
			x.addrs = append(x.addrs, v.Unmap())
		}
		for _, n := range e.Networks {
			v, err := netip.ParsePrefix(n)
			if err != nil {
				errs = append(errs, fmt.Errorf("allow[%d].networks: %w", i, err))
				continue
			}
			x.prefixes = append(x.prefixes, v.Masked())
		}
		x.rules = e.Rules
		p.entries = append(p.entries, x)
	}
	for k, v := range f.Thresholds {
		switch v.(type) {
		case string, int, int64, uint64, float64, bool:
			p.Thresholds[k] = fmt.Sprint(v)
		default:
			errs = append(errs, fmt.Errorf("thresholds.%s: want a number, duration or boolean, got %T", k, v))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return p, nil
}

// Load reads and parses path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return p, nil
}

// Apply sets each threshold on fs (a flag set of the threshold flags,
// bound to a copy of the configuration). Errors: a name fs does not
// define, or a value its flag rejects.
func (p *Policy) Apply(fs *flag.FlagSet) error {
	if p == nil {
		return nil
	}
	names := make([]string, 0, len(p.Thresholds))
	for k := range p.Thresholds {
		names = append(names, k)
	}
	sort.Strings(names)
	var errs []error
	for _, k := range names {
		if fs.Lookup(k) == nil {
			errs = append(errs, fmt.Errorf("thresholds.%s: not a rule threshold", k))
			continue
		}
		if err := fs.Set(k, p.Thresholds[k]); err != nil {
			errs = append(errs, fmt.Errorf("thresholds.%s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// Allowed reports whether a is suppressed by an allow entry, and which
// (its index), or -1.
func (p *Policy) Allowed(a *pb.Alert) (bool, int) {
	if p == nil {
		return false, -1
	}
	orig, _ := netip.ParseAddr(a.GetOrigAddr())
	resp, _ := netip.ParseAddr(a.GetRespAddr())
	orig, resp = orig.Unmap(), resp.Unmap()
	for i, e := range p.entries {
		if len(e.rules) > 0 && !slices.Contains(e.rules, a.GetRule()) && !slices.Contains(e.rules, a.GetCategory()) {
			continue
		}
		if len(e.addrs) == 0 && len(e.prefixes) == 0 {
			return true, i
		}
		for _, x := range []netip.Addr{orig, resp} {
			if !x.IsValid() {
				continue
			}
			if slices.Contains(e.addrs, x) {
				return true, i
			}
			for _, n := range e.prefixes {
				if n.Contains(x) {
					return true, i
				}
			}
		}
	}
	return false, -1
}

// String summarises the policy for logs.
func (p *Policy) String() string {
	if p == nil {
		return "none"
	}
	var th []string
	for k, v := range p.Thresholds {
		th = append(th, k+"="+v)
	}
	sort.Strings(th)
	return fmt.Sprintf("%d allow entries; thresholds [%s]", len(p.entries), strings.Join(th, " "))
}
