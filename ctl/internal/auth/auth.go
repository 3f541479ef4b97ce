// Package auth issues netwatch's NATS credentials with decentralized JWT
// authentication (NATS "operator mode", ADR-7 of nats-architecture-and-design):
// an operator signs two accounts, NETWATCH (JetStream, every netwatch
// user) and SYS (the system account); the NETWATCH account key signs one
// user JWT per sensor or stage, whose permissions come from package perms.
// The servers only need the operator and account JWTs (resolver.conf); a new
// sensor needs no server change.
package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"netwatch/ctl/internal/perms"
)

// Account names in the operator's tree.
const (
	AccountNetwatch = "NETWATCH"
	AccountSystem   = "SYS"
)

// Files written by Init into its directory. Seeds (*.nk) are secrets: mode
// 0600; keep them on the machine that issues credentials.
const (
	OperatorSeedFile = "operator.nk"
	ResolverFile     = "resolver.conf" // include this in every nats-server config
)

// Tree is an operator with its two accounts, loaded from or written to a
// directory.
type Tree struct {
	Dir                     string
	Operator, Netwatch, Sys nkeys.KeyPair
	OperatorJWT             string
	NetwatchJWT, SysJWT     string
}

func seedFile(dir, name string) string { return filepath.Join(dir, name+".nk") }

// Init creates the operator, the NETWATCH account (JetStream without limits)
// and the SYS account in dir, and writes resolver.conf: the operator JWT,
// system_account and a MEMORY resolver preloaded with both account JWTs.
// When dir already holds an operator seed it loads the existing keys and
// only rewrites the JWTs and resolver.conf, so credentials issued before
// stay valid.
func Init(dir, operatorName string) (*Tree, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init %s: %w", dir, err)
	}
	t := &Tree{Dir: dir}
	var err error
	if t.Operator, err = loadOrCreate(seedFile(dir, "operator"), nkeys.CreateOperator); err != nil {
		return nil, err
	}
	if t.Netwatch, err = loadOrCreate(seedFile(dir, AccountNetwatch), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	if t.Sys, err = loadOrCreate(seedFile(dir, AccountSystem), nkeys.CreateAccount); err != nil {
		return nil, err
	}
	opub, _ := t.Operator.PublicKey()
	spub, _ := t.Sys.PublicKey()
	npub, _ := t.Netwatch.PublicKey()

	oc := jwt.NewOperatorClaims(opub)
	oc.Name = operatorName
	oc.SystemAccount = spub
	if t.OperatorJWT, err = oc.Encode(t.Operator); err != nil {
		return nil, fmt.Errorf("encode operator jwt: %w", err)
	}
	sc := jwt.NewAccountClaims(spub)
	sc.Name = AccountSystem
	if t.SysJWT, err = sc.Encode(t.Operator); err != nil {
		return nil, fmt.Errorf("encode account %s jwt: %w", AccountSystem, err)
	}
	nc := jwt.NewAccountClaims(npub)
	nc.Name = AccountNetwatch
	nc.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1,
		MaxAckPending: -1, MemoryMaxStreamBytes: -1, DiskMaxStreamBytes: -1}
	if t.NetwatchJWT, err = nc.Encode(t.Operator); err != nil {
		return nil, fmt.Errorf("encode account %s jwt: %w", AccountNetwatch, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# netwatch operator %q (netwatchctl init). Include from every nats-server config.\n", operatorName)
	fmt.Fprintf(&b, "operator: %q\n", t.OperatorJWT)
	fmt.Fprintf(&b, "system_account: %s\n", spub)
	fmt.Fprintf(&b, "resolver: MEMORY\nresolver_preload: {\n")
	fmt.Fprintf(&b, "  # %s\n  %s: %q\n", AccountNetwatch, npub, t.NetwatchJWT)
	fmt.Fprintf(&b, "  # %s\n  %s: %q\n}\n", AccountSystem, spub, t.SysJWT)
	if err := os.WriteFile(filepath.Join(dir, ResolverFile), []byte(b.String()), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", ResolverFile, err)
	}
	return t, nil
}

// Load reads a tree written by Init; a missing seed is an error naming it.
func Load(dir string) (*Tree, error) {
	t := &Tree{Dir: dir}
	for _, k := range []struct {
		name string
		kp   *nkeys.KeyPair
	}{{"operator", &t.Operator}, {AccountNetwatch, &t.Netwatch}, {AccountSystem, &t.Sys}} {
		seed, err := os.ReadFile(seedFile(dir, k.name))
		if err != nil {
			return nil, fmt.Errorf("load %s key (run netwatchctl init first): %w", k.name, err)
		}
		if *k.kp, err = nkeys.FromSeed([]byte(strings.TrimSpace(string(seed)))); err != nil {
			return nil, fmt.Errorf("load %s key: %w", k.name, err)
		}
	}
	return t, nil
}

func loadOrCreate(path string, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	if seed, err := os.ReadFile(path); err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, fmt.Errorf("load %s: %w", path, err)
		}
		return kp, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	kp, err := create()
	if err != nil {
		return nil, fmt.Errorf("create key %s: %w", path, err)
	}
	seed, _ := kp.Seed()
	if err := os.WriteFile(path, append(seed, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	return kp, nil
}

// UserCreds returns the contents of a .creds file (user JWT and seed, the
// format nats.UserCredentials reads) for a new user named name in the
// NETWATCH account with permissions p, expiring after ttl (0: never).
func (t *Tree) UserCreds(name string, p perms.Set, ttl time.Duration) ([]byte, error) {
	ukp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("create user key: %w", err)
	}
	upub, _ := ukp.PublicKey()
	uc := jwt.NewUserClaims(upub)
	uc.Name = name
	uc.Permissions.Pub.Allow.Add(p.Pub...)
	uc.Permissions.Pub.Deny.Add(p.PubDeny...)
	uc.Permissions.Sub.Allow.Add(p.Sub...)
	uc.AllowedConnectionTypes.Add(p.ConnTypes...)
	if ttl > 0 {
		uc.Expires = time.Now().Add(ttl).Unix()
	}
	vr := jwt.ValidationResults{}
	uc.Validate(&vr)
	if vr.IsBlocking(true) {
		return nil, fmt.Errorf("user %s: invalid claims: %v", name, vr.Errors())
	}
	ujwt, err := uc.Encode(t.Netwatch)
	if err != nil {
		return nil, fmt.Errorf("encode user %s jwt: %w", name, err)
	}
	seed, _ := ukp.Seed()
	creds, err := jwt.FormatUserConfig(ujwt, seed)
	if err != nil {
		return nil, fmt.Errorf("format creds for %s: %w", name, err)
	}
	return creds, nil
}
