package capture

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket/layers"

	"netwatch/testkit"
)

func anyLink(layers.LinkType) error { return nil }

// TestReadAheadSameFrames reads captures directly and through ReadAhead:
// the same frames, capture info and link types in the same order, and the
// same final error (io.EOF, or the *ReadError of a truncated file).
//
// The synflood capture (3.7 MB) is also read with blocks of 7, 16, 17 and
// 100 bytes after the first MiB, so that record headers and data straddle
// blocks at every position, and as gzip.
func TestReadAheadSameFrames(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	big := filepath.Join(pcaps, "attack-synflood-spoofed-sources.pcap") // 37,841 frames: many blocks
	gz := filepath.Join(t.TempDir(), "synflood.pcap.gz")
	raw, err := os.ReadFile(big)
	if err != nil {
		t.Fatal(err)
	}
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(raw)
	zw.Close()
	if err := os.WriteFile(gz, zb.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func(n int) { prefetchBlockBytes = n }(prefetchBlockBytes)
	for _, c := range []struct {
		f     string
		block int
	}{
		{big, 256 << 10}, {big, 7}, {big, 16}, {big, 17}, {big, 100}, {gz, 256 << 10}, {gz, 33},
		{filepath.Join(pcaps, "pcapng-2-interfaces-nsec-and-usec-dns.pcapng"), 256 << 10},
		{filepath.Join("..", "..", "testdata", "truncated-mid-record.pcap"), 256 << 10},
	} {
		f := c.f
		prefetchBlockBytes = c.block
		t.Run(fmt.Sprintf("%s/%d", filepath.Base(f), c.block), func(t *testing.T) {
			direct, err := Open(f, anyLink)
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close()
			r, err := Open(f, anyLink)
			if err != nil {
				t.Fatal(err)
			}
			ra := ReadAhead(r)
			defer ra.Close()
			r3, err := Open(f, anyLink)
			if err != nil {
				t.Fatal(err)
			}
			fs := ReadAhead(r3).(FrameSource) // the agent's loop reads files this way
			defer fs.Close()
			var fr Frame
			n := 0
			for {
				d1, c1, l1, e1 := direct.Next()
				d2, c2, l2, e2 := ra.Next()
				e3 := fs.NextFrame(&fr)
				if e1 != e3 && (e1 == nil || e3 == nil || e1.Error() != e3.Error()) {
					t.Fatalf("frame %d: errors %v and NextFrame's %v", n, e1, e3)
				}
				if e1 == nil && (!bytes.Equal(d1, fr.Data) || c1.Timestamp.UnixNano() != fr.TsNs || c1.Length != fr.WireLen ||
					l1 != fr.Link) {
					t.Fatalf("frame %d differs from NextFrame's", n+1)
				}
				if e1 != nil || e2 != nil {
					var r1, r2 *ReadError
					if !(e1 == e2 || (errors.As(e1, &r1) && errors.As(e2, &r2) && e1.Error() == e2.Error())) {
						t.Fatalf("frame %d: errors %v and %v", n, e1, e2)
					}
					if e1 != io.EOF && r1 == nil {
						t.Fatalf("frame %d: unexpected error %v", n, e1)
					}
					break
				}
				n++
				if !bytes.Equal(d1, d2) || !c1.Timestamp.Equal(c2.Timestamp) || c1.Length != c2.Length ||
					c1.CaptureLength != c2.CaptureLength || l1 != l2 {
					t.Fatalf("frame %d differs", n)
				}
			}
			if n == 0 {
				t.Fatal("no frames")
			}
			// the error repeats
			if _, _, _, err := ra.Next(); err == nil {
				t.Fatal("Next after the end returned no error")
			}
		})
	}
}

// TestReadAheadCloseEarly closes a read-ahead reader that was not drained:
// the reading goroutine stops and Close returns.
func TestReadAheadCloseEarly(t *testing.T) {
	r, err := Open(filepath.Join(testkit.Pcaps(t), "attack-synflood-spoofed-sources.pcap"), anyLink)
	if err != nil {
		t.Fatal(err)
	}
	ra := ReadAhead(r)
	if _, _, _, err := ra.Next(); err != nil {
		t.Fatal(err)
	}
	if err := ra.Close(); err != nil {
		t.Fatal(err)
	}
}
