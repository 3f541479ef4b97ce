// Package fleet_test runs netwatch's multi-host pieces against real NATS
// servers (issue 8): credentials issued by netwatchctl enforced by the
// broker, TLS, and a 3-node JetStream cluster that loses a node mid-publish.
// The servers are nats-server itself, in-process, started from the same
// configuration-file syntax as deploy/.
package fleet_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago (for
// cluster routes, which must be known before the servers start).
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startConf writes conf to dir/name.conf, parses it as nats-server does
// (server.ProcessConfigFile) and starts the server; it stops when the test
// ends (Shutdown is idempotent, so a test may stop it earlier).
func startConf(t testing.TB, dir, name, conf string) *server.Server {
	t.Helper()
	path := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(path)
	if err != nil {
		t.Fatalf("parse %s: %v\n%s", path, err, conf)
	}
	return startOpts(t, opts)
}

func startOpts(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.NoSigs, opts.NoLog = true, os.Getenv("FLEET_NATS_LOG") == "" && opts.LogFile == ""
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("new server %s: %v", opts.ServerName, err)
	}
	if !opts.NoLog {
		s.ConfigureLogger() // FLEET_NATS_LOG=1: the servers log to stderr
	}
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		t.Fatalf("server %s not ready in 20 s", opts.ServerName)
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

// waitFor polls cond every 50 ms until it returns nil or d passes, then
// fails with its last error.
func waitFor(t testing.TB, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func q(s string) string { return fmt.Sprintf("%q", s) }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
