package rest

import (
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok, err  bool
	}{
		{"", "", false, false},
		{"10.0.0.1", "10.0.0.1/32", true, false},
		{"::ffff:10.0.0.1", "::ffff:10.0.0.1/128", true, false}, // not 10.0.0.1: distinct in flows (inet)
		{"2001:db8::1", "2001:db8::1/128", true, false},
		{"10.0.0.77/24", "10.0.0.0/24", true, false},
		{"2001:db8::/32", "2001:db8::/32", true, false},
		{"10.0.0.300", "", false, true},
		{"10.0.0.0/33", "", false, true},
		{"host.example", "", false, true},
	} {
		pf, ok, err := ParseAddr(tc.in)
		if (err != nil) != tc.err || ok != tc.ok || (ok && pf.String() != tc.want) {
			t.Errorf("ParseAddr(%q) = %v, %v, %v; want %s, %v, err %v", tc.in, pf, ok, err, tc.want, tc.ok, tc.err)
		}
	}
}

func TestParseProto(t *testing.T) {
	for in, want := range map[string]int{"": -1, "tcp": 6, "UDP": 17, "icmp": 1, "icmp6": 58, "ipv6-icmp": 58, "0": 0, "255": 255, "47": 47} {
		if got, err := ParseProto(in); err != nil || got != want {
			t.Errorf("ParseProto(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"256", "-1", "tcpp", "6.0"} {
		if _, err := ParseProto(in); err == nil {
			t.Errorf("ParseProto(%q): no error", in)
		}
	}
	for n, want := range map[int]string{6: "tcp", 17: "udp", 58: "icmp6", 99: "99"} {
		if got := ProtoName(n); got != want {
			t.Errorf("ProtoName(%d) = %q", n, got)
		}
	}
}

func TestCursorRoundTrip(t *testing.T) {
	c := cursor{T: time.Date(2010, 1, 2, 3, 4, 5, 123456000, time.UTC), ID: "abc"}
	p := &params{r: httptest.NewRequest("GET", "/?cursor="+url.QueryEscape(c.String()), nil)}
	got, ok := p.cursor()
	if !ok || p.err != nil || !got.T.Equal(c.T) || got.ID != c.ID {
		t.Fatalf("round trip %v -> %v, %v, %v", c, got, ok, p.err)
	}
}

func TestLimit(t *testing.T) {
	for q, want := range map[string]int{"": DefaultLimit, "limit=1": 1, "limit=1000": 1000} {
		p := &params{r: httptest.NewRequest("GET", "/?"+q, nil)}
		if got := p.limit(); got != want || p.err != nil {
			t.Errorf("%q: %d %v", q, got, p.err)
		}
	}
	for _, q := range []string{"limit=1001", "limit=0", "limit=-5", "limit=ten"} {
		p := &params{r: httptest.NewRequest("GET", "/?"+q, nil)}
		if p.limit(); p.err == nil {
			t.Errorf("%q: no error", q)
		}
	}
}

// FuzzCursor: any cursor string is either rejected or decodes to a cursor
// with an id and a time; it never panics. Seeds: a valid cursor, empty JSON,
// garbage base64, a cursor with a non-time.
func FuzzCursor(f *testing.F) {
	f.Add(cursor{T: time.Unix(1, 0), ID: "x"}.String())
	f.Add("e30")
	f.Add("!!!")
	f.Add("eyJ0IjoxLCJpIjoieCJ9")
	f.Fuzz(func(t *testing.T, s string) {
		p := &params{r: httptest.NewRequest("GET", "/?cursor="+url.QueryEscape(s), nil)}
		c, ok := p.cursor()
		if ok && (c.ID == "" || c.T.IsZero() || p.err != nil) {
			t.Fatalf("accepted %q as %+v", s, c)
		}
		if !ok && p.str("cursor") != "" && p.err == nil {
			t.Fatalf("rejected %q without an error", s)
		}
	})
}
