package capture

import (
	"bytes"
	"strings"
	"testing"
	"time"
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
