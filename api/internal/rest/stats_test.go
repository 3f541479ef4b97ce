package rest

import (
	"strings"
	"testing"
	"time"
)

// TestRollupPieces: a range is cut into the fewest whole UTC days, hours and
// minutes, each from the coarsest tier that exists and divides the step;
// the pieces (tier and start) are contiguous from from to to.
func TestRollupPieces(t *testing.T) {
	all := &dbSchema{cols: map[string]bool{"talkers_1m.": true, "talkers_1h.": true, "talkers_1d.": true}}
	noDays := &dbSchema{cols: map[string]bool{"talkers_1m.": true, "talkers_1h.": true}}
	onlyMinutes := &dbSchema{cols: map[string]bool{"talkers_1m.": true}}
	tm := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		sch      *dbSchema
		from, to string
		step     time.Duration
		want     string
	}{
		{all, "2024-06-01T10:00:00Z", "2024-06-01T11:00:00Z", 24 * time.Hour, "_1h 06-01T10:00"},
		{all, "2024-06-01T00:00:00Z", "2024-06-02T00:00:00Z", 24 * time.Hour, "_1d 06-01T00:00"},
		{all, "2024-06-01T09:59:00Z", "2024-06-01T11:11:00Z", 24 * time.Hour, "_1m 06-01T09:59 _1h 06-01T10:00 _1m 06-01T11:00"},
		{all, "2024-06-01T11:30:00Z", "2024-06-01T12:30:00Z", 24 * time.Hour, "_1m 06-01T11:30"},
		{all, "2024-05-31T22:30:00Z", "2024-06-03T01:05:00Z", 24 * time.Hour,
			"_1m 05-31T22:30 _1h 05-31T23:00 _1d 06-01T00:00 _1h 06-03T00:00 _1m 06-03T01:00"},
		{noDays, "2024-05-31T22:30:00Z", "2024-06-03T01:05:00Z", 24 * time.Hour, "_1m 05-31T22:30 _1h 05-31T23:00 _1m 06-03T01:00"},
		{onlyMinutes, "2024-06-01T09:59:00Z", "2024-06-01T11:11:00Z", 24 * time.Hour, "_1m 06-01T09:59"},
		{all, "2024-06-01T09:59:00Z", "2024-06-01T11:11:00Z", 15 * time.Minute, "_1m 06-01T09:59"}, // only minutes divide 15m
		{all, "2024-05-31T22:00:00Z", "2024-06-02T02:00:00Z", 2 * time.Hour, "_1h 05-31T22:00"},    // days do not divide 2h
		// Before 1970 and very long ranges: few pieces, quickly.
		{all, "1969-12-31T23:59:00Z", "1970-01-02T00:00:00Z", 24 * time.Hour, "_1m 12-31T23:59 _1d 01-01T00:00"},
		{all, "0001-01-01T00:01:00Z", "9999-01-01T00:00:00Z", 24 * time.Hour, "_1m 01-01T00:01 _1h 01-01T01:00 _1d 01-02T00:00"},
	} {
		ps := rollupPieces(c.sch, "talkers", tm(c.from), tm(c.to), c.step)
		var got []string
		var prev time.Time
		for i, p := range ps {
			if i == 0 && !p.from.Equal(tm(c.from)) || i > 0 && !p.from.Equal(prev) {
				t.Errorf("%s-%s: piece %d starts at %s, not where the previous ended", c.from, c.to, i, p.from)
			}
			prev = p.to
			got = append(got, p.tier.suffix+" "+p.from.Format("01-02T15:04"))
		}
		if !prev.Equal(tm(c.to)) {
			t.Errorf("%s-%s: pieces end at %s", c.from, c.to, prev)
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("%s-%s step %v:\n got %s\nwant %s", c.from, c.to, c.step, g, c.want)
		}
	}
}
