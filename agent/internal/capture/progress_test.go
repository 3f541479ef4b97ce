package capture

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"netwatch/testkit"
)

type fakeProgress struct{ done, total int64 }

func (f fakeProgress) Progress() (int64, int64) { return f.done, f.total }

// TestMeterLine: a quarter of a 4 MB file in 10 s at 5,000 packets:
// 500 packets/s and 30 s left (hand count).
func TestMeterLine(t *testing.T) {
	start := time.Unix(1000, 0)
	m := NewMeter(nil, fakeProgress{1e6, 4e6}, func() uint64 { return 5000 }, start)
	got := m.Line(start.Add(10 * time.Second))
	want := " 25.0% of 4.0 MB  5000 packets  500 packets/s  0:30 left"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestMeterRun: the meter ends its line with a newline when stopped.
func TestMeterRun(t *testing.T) {
	var buf bytes.Buffer
	stop := NewMeter(&buf, fakeProgress{4e6, 4e6}, func() uint64 { return 7 }, time.Now()).Run(time.Hour)
	stop()
	if s := buf.String(); !strings.HasPrefix(s, "\r100.0% of 4.0 MB  7 packets") || !strings.HasSuffix(s, "\n") {
		t.Errorf("output %q", s)
	}
}

// TestProgressProcessed: Progress counts the records handed out, not what
// the read-ahead goroutine has read (a paced replay showed 100 % and 0:00
// left from its first line). After 1,000 of the 37k records of a 2.9 MB
// pcap read through ReadAhead (which prefetches up to 2 MiB), done is the
// 24-byte file header plus 16 + captured length of each of those records,
// summed from tshark's frame.cap_len; after the end it is the file size.
func TestProgressProcessed(t *testing.T) {
	const n = 1000
	path := filepath.Join(testkit.Pcaps(t), "attack-synflood-spoofed-sources.pcap")
	out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", path, "-c", strconv.Itoa(n), "-T", "fields", "-e", "frame.cap_len").Output()
	if err != nil {
		t.Fatalf("tshark: %v", err)
	}
	want := int64(24)
	for _, f := range strings.Fields(string(out)) {
		c, err := strconv.Atoi(f)
		if err != nil {
			t.Fatal(err)
		}
		want += 16 + int64(c)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, frames := range []bool{false, true} {
		r, err := Open(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		src := ReadAhead(r)
		var f Frame
		for i := 0; i < n; i++ {
			if frames {
				err = src.(FrameSource).NextFrame(&f)
			} else {
				_, _, _, err = src.Next()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(50 * time.Millisecond) // the read-ahead goroutine runs ahead meanwhile
		if done, total := src.Progress(); done != want || total != st.Size() {
			t.Errorf("NextFrame %v: after %d records progress %d of %d, want %d of %d", frames, n, done, total, want, st.Size())
		}
		for err == nil {
			_, _, _, err = src.Next()
		}
		if done, total := src.Progress(); err != io.EOF || done != total {
			t.Errorf("NextFrame %v: at the end (%v) progress %d of %d", frames, err, done, total)
		}
		src.Close()
	}
	// gzip: the decompressed offset scaled by compressed/decompressed bytes
	// so far; 1,000 records are 2.6 % of the file, so well under a tenth
	// (reading ahead gave 2 MiB of decompressed data's compressed bytes)
	gz := filepath.Join(t.TempDir(), "c.pcap.gz")
	if out, err := exec.Command("sh", "-c", "gzip -c < "+path+" > "+gz).CombinedOutput(); err != nil {
		t.Fatalf("gzip: %v: %s", err, out)
	}
	r, err := Open(gz, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := ReadAhead(r)
	defer src.Close()
	for i := 0; i < n; i++ {
		if _, _, _, err = src.Next(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if done, total := src.Progress(); done <= 0 || done > total/10 {
		t.Errorf("gzip: after %d records progress %d of %d, want above 0 and at most a tenth", n, done, total)
	}
	for err == nil {
		_, _, _, err = src.Next()
	}
	if done, total := src.Progress(); err != io.EOF || done != total {
		t.Errorf("gzip: at the end (%v) progress %d of %d", err, done, total)
	}
}
