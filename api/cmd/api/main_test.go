package main

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := parseConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://a@b/c"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://a@b/c" || c.HTTPAddr != "127.0.0.1:8080" || c.LiveBuffer != 1024 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = parseConfig(nil, env(nil), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable" ||
		c.RollupCacheWarm != 30*time.Second {
		t.Fatalf("default database: %+v %v", c, err)
	}
	c, err = parseConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://a@b/c",
		"NETWATCH_DATABASE_URL": "postgres://n@b/c", "NETWATCH_HTTP_ADDR": ":9", "NETWATCH_QUERY_TIMEOUT": "5s",
		"NETWATCH_AUTH_READ_TOKENS": "ops=0123456789abcdef0123"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://n@b/c" || c.HTTPAddr != ":9" || c.QueryTimeout != 5*time.Second ||
		len(c.Tokens) != 1 || c.Tokens[0].Name != "ops" || c.Tokens[0].Admin {
		t.Fatalf("env: %+v %v", c, err)
	}
	c, err = parseConfig([]string{"-database.url", "postgres://f@b/c", "-http.addr", ":1", "-auth.admin-tokens", "0123456789abcdef"},
		env(map[string]string{"NETWATCH_DATABASE_URL": "postgres://n@b/c", "NETWATCH_HTTP_ADDR": ":9"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://f@b/c" || c.HTTPAddr != ":1" {
		t.Fatalf("flag wins: %+v %v", c, err)
	}
	for _, args := range [][]string{
		{"-database.url", ""}, // no database
		{"-database.url", "postgres://a@b/c", "-live.buffer", "0"},
		{"-database.url", "postgres://a@b/c", "-log.level", "loud"},
		{"-database.url", "postgres://a@b/c", "-http.addr", ""},
		{"-database.url", "::not a url"},
		{"-http.addr", ":8080"},                                      // every interface, no token
		{"-http.addr", "0.0.0.0:8080"},                               // same
		{"-http.addr", "192.0.2.1:8080"},                             // not loopback, no token
		{"-http.addr", "0.0.0.0:8080", "-auth.read-tokens", "short"}, // token too short
		{"-auth.token-file", "/nonexistent"},
		{"-cache.rollup-warm", "1ms"}, // would reload the rollup cache without pause
		{"-cache.rollup-warm", "-1s"},
		{"-cache.rollup-bytes", "-1"},
	} {
		if _, err := parseConfig(args, env(nil), io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestLoopbackAndTokens(t *testing.T) {
	env := func(string) string { return "" }
	for _, addr := range []string{"127.0.0.1:8080", "localhost:1", "[::1]:8080", "127.9.9.9:80"} {
		if _, err := parseConfig([]string{"-http.addr", addr}, env, io.Discard); err != nil {
			t.Errorf("%s without tokens: %v", addr, err)
		}
	}
	dir := t.TempDir()
	f := dir + "/tokens"
	if err := os.WriteFile(f, []byte("# ops\nread viewer aaaaaaaaaaaaaaaaaaaa\n\nadmin alice bbbbbbbbbbbbbbbbbbbb\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parseConfig([]string{"-http.addr", ":8080", "-auth.token-file", f}, env, io.Discard)
	if err != nil || len(c.Tokens) != 2 || c.Tokens[0].Name != "viewer" || c.Tokens[0].Admin || !c.Tokens[1].Admin ||
		c.Tokens[1].Secret != "bbbbbbbbbbbbbbbbbbbb" {
		t.Fatalf("token file: %+v %v", c, err)
	}
	if err := os.WriteFile(f, []byte("write bob cccccccccccccccccccc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := parseConfig([]string{"-auth.token-file", f}, env, io.Discard); err == nil || !strings.Contains(err.Error(), ":1") {
		t.Errorf("bad token file line: %v", err)
	}
}
