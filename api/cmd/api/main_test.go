package main

import (
	"io"
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
	if err != nil || c.DatabaseURL != "postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable" {
		t.Fatalf("default database: %+v %v", c, err)
	}
	c, err = parseConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://a@b/c",
		"NETWATCH_DATABASE_URL": "postgres://n@b/c", "NETWATCH_HTTP_ADDR": ":9", "NETWATCH_QUERY_TIMEOUT": "5s"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://n@b/c" || c.HTTPAddr != ":9" || c.QueryTimeout != 5*time.Second {
		t.Fatalf("env: %+v %v", c, err)
	}
	c, err = parseConfig([]string{"-database.url", "postgres://f@b/c", "-http.addr", ":1"},
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
	} {
		if _, err := parseConfig(args, env(nil), io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
