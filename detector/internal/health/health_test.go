package health

import (
	"math"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"netwatch/schema/pb"
)

func sample(sensor string, at time.Time, received, dropped uint64, used uint64) *pb.Metrics {
	return &pb.Metrics{Sensor: sensor, Host: "h1", Boot: "b1", TimeNs: at.UnixNano(),
		Captures: []*pb.CaptureStats{{Source: "eth0", Received: received, Dropped: dropped}},
		Disks:    []*pb.DiskUsage{{Mount: "/", TotalBytes: 1000, UsedBytes: used}}}
}

func TestSilent(t *testing.T) {
	m := New(DefaultConfig())
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	m.Observe(sample("s1", t0, 0, 0, 0), t0)
	if n := len(m.CheckSilent(t0.Add(time.Hour))); n != 0 {
		t.Fatalf("one sample: %d alerts (interval unknown)", n)
	}
	m.Observe(sample("s1", t0.Add(10*time.Second), 0, 0, 0), t0.Add(10*time.Second)) // interval 10 s
	last := t0.Add(10 * time.Second)
	if n := len(m.CheckSilent(last.Add(30 * time.Second))); n != 0 {
		t.Errorf("3 intervals exactly: %d alerts", n)
	}
	got := m.CheckSilent(last.Add(31 * time.Second))
	if len(got) != 1 || got[0].Rule != RuleSilent || got[0].Category != "health" || got[0].Sensor != "s1" ||
		!strings.Contains(string(got[0].Evidence), `"interval_seconds":10`) {
		t.Fatalf("silent: %v", got)
	}
	if n := len(m.CheckSilent(last.Add(40 * time.Second))); n != 0 {
		t.Errorf("same silence alerted again: %d", n)
	}
	// Back, then silent again in a later window: a new alert.
	back := last.Add(15 * time.Minute)
	m.Observe(sample("s1", back, 0, 0, 0), back)
	if got := m.CheckSilent(back.Add(15 * time.Minute)); len(got) != 1 {
		t.Errorf("second silence: %d alerts", len(got))
	}
}

func TestDropsAndDisk(t *testing.T) {
	m := New(DefaultConfig())
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * 10 * time.Second) }
	cases := []struct {
		received, dropped, used uint64
		rules                   []string
	}{
		{1000, 0, 500, nil},                    // first sample: no delta
		{11000, 99, 500, nil},                  // 99 drops: below DropMin
		{21000, 199, 500, nil},                 // 100 of 10,100: 0.99 %
		{31000, 400, 500, []string{RuleDrops}}, // 201 of 10,201: 1.97 %
		{41000, 700, 900, []string{RuleDisk}},  // drops again, same window: once; disk 90 %
		{51000, 700, 950, nil},                 // disk still full, same window
		{100, 0, 100, nil},                     // counters went back (agent restarted, same boot): skipped
	}
	for i, c := range cases {
		got := m.Observe(sample("s1", at(i), c.received, c.dropped, c.used), at(i))
		var rules []string
		for _, a := range got {
			rules = append(rules, a.Rule)
		}
		if strings.Join(rules, ",") != strings.Join(c.rules, ",") {
			t.Errorf("sample %d: rules %v, want %v", i, rules, c.rules)
		}
	}
}

func TestLag(t *testing.T) {
	m := New(DefaultConfig())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := m.CheckLag([]Lag{{Stream: "FLOWS", Consumer: "detector", Pending: 99_999}, {Stream: "FLOWS", Consumer: "sink-flows", Pending: 100_000, AckPending: 5}}, now)
	if len(got) != 1 || got[0].Sensor != SystemSensor || !strings.Contains(got[0].Summary, "sink-flows") {
		t.Fatalf("lag: %v", got)
	}
}

// TestUsedRatioDf: UsedRatio agrees with df(1)'s Use% (rounded up, as df
// prints it) on this machine's mounted file systems, read with `df -B1
// --output=used,avail,pcent`, and on a statfs(2) reading of a root file
// system with a large reserve (f_blocks 66,053,021, f_bfree 57,089,308,
// f_bavail 14,911,603, 4 KiB blocks: df said 38 %, used / total is
// 13.6 %).
func TestUsedRatioDf(t *testing.T) {
	const bs = 4096
	used, avail := uint64(66_053_021-57_089_308)*bs, uint64(14_911_603)*bs
	if r := UsedRatio(used, avail); math.Ceil(100*r) != 38 {
		t.Errorf("statfs reading: UsedRatio %.4f, df says 38 %%", r)
	}
	out, err := exec.Command("df", "-B1", "--output=used,avail,pcent,target").Output()
	if err != nil {
		t.Fatalf("df: %v", err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 4 || f[2] == "-" {
			continue // no blocks (a pseudo file system)
		}
		u, err1 := strconv.ParseUint(f[0], 10, 64)
		a, err2 := strconv.ParseUint(f[1], 10, 64)
		p, err3 := strconv.Atoi(strings.TrimSuffix(f[2], "%"))
		if err1 != nil || err2 != nil || err3 != nil {
			t.Fatalf("df line %q", line)
		}
		n++
		if got := int(math.Ceil(100 * UsedRatio(u, a))); got != p {
			t.Errorf("%s: used %d avail %d: UsedRatio gives %d %%, df %d %%", f[3], u, a, got, p)
		}
	}
	if n == 0 {
		t.Fatal("df listed no file system with blocks")
	}
	if UsedRatio(0, 0) != 0 {
		t.Error("UsedRatio(0, 0) != 0")
	}
}

// TestDiskWithoutAvail: METRICS without available bytes (DiskUsage has no
// avail_bytes today) falls back to used / total and says so.
func TestDiskWithoutAvail(t *testing.T) {
	m := New(DefaultConfig())
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	got := m.Observe(sample("s1", now, 0, 0, 900), now)
	if len(got) != 1 || !strings.Contains(string(got[0].Evidence), `"basis":"used/total"`) {
		t.Fatalf("disk 900 of 1000: %v", got)
	}
}

// TestDiskWithAvail: with avail_bytes the rule uses df's Use% (GNU
// coreutils df: used / (used + avail)), so the blocks reserved for root
// make a disk full sooner than used / total says. Hand numbers: total 1000,
// used 860, avail 90 (50 reserved): df says 860/950 = 90.5 %, used/total
// 86 %; with the default 0.9 ratio only df's view alerts. Available 0 of
// a file system with used 0 is not full (nothing to divide), an agent
// sending avail 0 with data used is full.
func TestDiskWithAvail(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	disk := func(used, avail uint64) *pb.Metrics {
		s := sample("s1", now, 0, 0, used)
		s.Disks[0].AvailBytes = &avail
		return s
	}
	m := New(DefaultConfig())
	got := m.Observe(disk(860, 90), now)
	if len(got) != 1 || !strings.Contains(string(got[0].Evidence), `"basis":"used/(used+avail)"`) ||
		!strings.Contains(got[0].Summary, "90.5 %") {
		t.Fatalf("used 860, avail 90 of 1000: %v", got)
	}
	m = New(DefaultConfig())
	if got := m.Observe(disk(850, 150), now); len(got) != 0 {
		t.Fatalf("used 850, avail 150 (85 %%): %v", got)
	}
	m = New(DefaultConfig())
	if got := m.Observe(disk(10, 0), now); len(got) != 1 {
		t.Fatalf("used 10, avail 0 (full): %v", got)
	}
	m = New(DefaultConfig())
	if got := m.Observe(disk(0, 0), now); len(got) != 0 {
		t.Fatalf("used 0, avail 0: %v", got)
	}
}
