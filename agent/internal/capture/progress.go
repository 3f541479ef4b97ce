package capture

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// Meter prints the progress of reading a capture file to a terminal: the
// share of the file read, packets per second since the start, and the time
// left at that pace, on one line rewritten in place.
type Meter struct {
	w       io.Writer
	src     interface{ Progress() (done, total int64) }
	packets func() uint64 // frames read so far; called from the meter's goroutine
	start   time.Time
}

// NewMeter returns a meter of src writing to w, started at start.
func NewMeter(w io.Writer, src interface{ Progress() (done, total int64) }, packets func() uint64, start time.Time) *Meter {
	return &Meter{w: w, src: src, packets: packets, start: start}
}

// Line is the progress line at now, e.g.
// " 42.0% of 1.2 MB  12000 packets  6000 packets/s  0:03 left".
func (m *Meter) Line(now time.Time) string {
	done, total := m.src.Progress()
	n := m.packets()
	el := now.Sub(m.start)
	share := 100.0
	if total > 0 {
		share = 100 * float64(done) / float64(total)
	}
	rate := 0.0
	if el > 0 {
		rate = float64(n) / el.Seconds()
	}
	left := "?"
	if done > 0 && total >= done {
		left = fmtDuration(time.Duration(float64(el) * float64(total-done) / float64(done)))
	}
	return fmt.Sprintf("%5.1f%% of %.1f MB  %d packets  %.0f packets/s  %s left", share, float64(total)/1e6, n, rate, left)
}

func fmtDuration(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// Run rewrites the line every interval until stop is called; stop writes the
// last line and a newline, and returns once nothing more is written.
func (m *Meter) Run(interval time.Duration) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprintf(m.w, "\r%s\x1b[K\n", m.Line(time.Now()))
				return
			case now := <-t.C:
				fmt.Fprintf(m.w, "\r%s\x1b[K", m.Line(now))
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done); wg.Wait() })
	}
}
