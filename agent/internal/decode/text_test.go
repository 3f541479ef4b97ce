package decode

import (
	"testing"
	"unicode/utf8"
)

// A DNS tunnel (iodine) puts raw bytes in query labels; protobuf strings must
// be valid UTF-8, so they are escaped as \xNN (hand-written expectations).
func TestTextEscapesBinary(t *testing.T) {
	cases := []struct {
		in   []byte
		want string
	}{
		{[]byte("www.example.com"), "www.example.com"},
		{[]byte{'a', 0xff, 'b'}, `a\xffb`},
		{[]byte{0xc3, 0xa9}, `\xc3\xa9`},
		{[]byte(`back\slash`), `back\x5cslash`},
		{[]byte{0}, `\x00`},
	}
	var l L7 // one arena for every case: earlier strings must survive its growth
	got := make([]string, len(cases))
	for i, c := range cases {
		got[i] = l.text(c.in)
	}
	for i, c := range cases {
		if got[i] != c.want || !utf8.ValidString(got[i]) {
			t.Errorf("text(%q) = %q, want %q", c.in, got[i], c.want)
		}
	}
}

func TestDNSBinaryLabelIsValidUTF8(t *testing.T) {
	// Header (id, flags RD, 1 question) + name with a label holding 0xfe 0x80 + type A class IN.
	msg := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
		3, 'a', 0xfe, 0x80, 1, 't', 0, 0, 1, 0, 1}
	var l L7
	parseDNS(msg, &l, false)
	if l.DNSQuery != `a\xfe\x80.t` {
		t.Fatalf("query = %q, want %q", l.DNSQuery, `a\xfe\x80.t`)
	}
}
