package e2e

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"netwatch/testkit"
)

// Captures lists every pcap and pcapng file in the shared capture folder
// and its lab/ subfolder, sorted.
func Captures(t testing.TB) []string {
	t.Helper()
	dir := testkit.Pcaps(t)
	var files []string
	for _, d := range []string{dir, filepath.Join(dir, "lab")} {
		ents, err := os.ReadDir(d)
		if err != nil {
			t.Fatalf("list captures: %v", err)
		}
		for _, e := range ents {
			n := e.Name()
			if !e.IsDir() && (strings.HasSuffix(n, ".pcap") || strings.HasSuffix(n, ".pcapng")) {
				files = append(files, filepath.Join(d, n))
			}
		}
	}
	sort.Strings(files)
	if len(files) == 0 {
		testkit.Unavailable(t, "no captures in %s", dir)
	}
	return files
}

// SensorName turns a capture file name into a token-safe sensor name
// (letters, digits, '-' and '_', at most 64 characters), prefixed with p.
func SensorName(p, file string) string {
	base := filepath.Base(file)
	var b strings.Builder
	b.WriteString(p)
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}
