// Package testkit holds test-only helpers shared by the netwatch modules: an
// in-process NATS JetStream server with the production streams, a throwaway
// PostgreSQL schema, and the paths of the shared captures. It is never
// imported by non-test code, so nats-server stays out of the binaries.
package testkit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
)

// CI reports whether the tests run under CI=true, where a missing dependency
// is a failure, not a skip.
func CI() bool { return os.Getenv("CI") == "true" }

// Unavailable fails the test under CI and skips it otherwise.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true and "+format, args...)
	}
	t.Skipf(format, args...)
}

// NATS starts an in-process NATS server with JetStream on a random port
// (STYLE.md) and returns its URL. The server stops when the test ends.
func NATS(t testing.TB) string {
	t.Helper()
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true, MaxPayload: 8 << 20}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("start nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10 s")
	}
	t.Cleanup(s.Shutdown)
	return s.ClientURL()
}

// JetStream starts NATS (see NATS), provisions the production streams and
// consumers from package schema, and returns the URL, a connection and its
// JetStream context.
func JetStream(t testing.TB) (string, *nats.Conn, jetstream.JetStream) {
	t.Helper()
	u := NATS(t)
	nc, err := nats.Connect(u)
	if err != nil {
		t.Fatalf("connect nats: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return u, nc, js
}

// DefaultDatabaseURL is the PostgreSQL that `make test` and `.ci/run` bring up.
const DefaultDatabaseURL = "postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable"

// DatabaseURL is NETWATCH_TEST_DATABASE_URL, else DATABASE_URL, else
// DefaultDatabaseURL.
func DatabaseURL() string {
	for _, k := range []string{"NETWATCH_TEST_DATABASE_URL", "DATABASE_URL"} {
		if v := os.Getenv(k); v != "" {
			return v
		}
	}
	return DefaultDatabaseURL
}

// Postgres creates a fresh schema in the test database and returns a DSN whose
// search_path is that schema, so each test sees an empty database; the schema
// is dropped when the test ends. Without a reachable server the test fails
// under CI=true and is skipped otherwise.
func Postgres(t testing.TB) string {
	t.Helper()
	base := DatabaseURL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		Unavailable(t, "no PostgreSQL at %s: %v", base, err)
		return ""
	}
	name := fmt.Sprintf("t_%d_%d", time.Now().UnixNano(), rand.IntN(1e6))
	if _, err := conn.Exec(ctx, "CREATE SCHEMA "+name); err != nil {
		conn.Close(ctx)
		t.Fatalf("create schema: %v", err)
	}
	conn.Close(ctx)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if c, err := pgx.Connect(ctx, base); err == nil {
			_, _ = c.Exec(ctx, "DROP SCHEMA "+name+" CASCADE")
			c.Close(ctx)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	return u.String()
}

// Root is the repository root: the nearest parent of the working directory
// that holds go.work.
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.work above the working directory")
		}
		dir = parent
	}
}

// Shared is the read-only ../shared folder beside the repository (captures,
// labels, test vectors), or NETWATCH_SHARED when set.
func Shared(t testing.TB) string {
	t.Helper()
	if v := os.Getenv("NETWATCH_SHARED"); v != "" {
		return v
	}
	p := filepath.Join(Root(t), "..", "shared")
	if _, err := os.Stat(p); err != nil {
		Unavailable(t, "shared data not found at %s: %v", p, err)
	}
	return p
}

// Pcaps is Shared/data/pcaps.
func Pcaps(t testing.TB) string { return filepath.Join(Shared(t), "data", "pcaps") }

// Tool returns the path of an external program (tshark, tcpdump, ...) or
// fails (CI) / skips the test.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s not installed: %v", name, err)
	}
	return p
}

// Eventually polls cond every 50 ms until it returns true or timeout passes,
// then fails with msg (STYLE.md: poll with a deadline, never sleep).
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: "+msg, append([]any{timeout}, args...)...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
