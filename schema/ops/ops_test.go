package ops

import (
	"strings"
	"testing"
)

// TestValidate: NATS URLs and the ops listen address are checked by
// -check-config, not discovered at run time.
func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		url, http, want string // want: a substring of the error, "" for valid
	}{
		{"nats://127.0.0.1:4222", "127.0.0.1:9101", ""},
		{"nats://a:4222,tls://b:4443, ws://c:80", ":9101", ""},
		{"127.0.0.1:4222", "", ""},
		{"bogus://::", "", `scheme "bogus"`},
		{"nats://", "", "no host"},
		{"nats://h:4222", "nonsense", "missing port"},
		{"nats://h:4222", "127.0.0.1:http", "not a number"},
		{"nats://h:4222", "127.0.0.1:70000", "not a number"},
	} {
		c := Common{NATSURL: tc.url, HTTPAddr: tc.http, LogLevel: "info", LogFormat: "json"}
		err := c.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("url %q http %q: %v, want %q", tc.url, tc.http, err, tc.want)
		}
	}
}
