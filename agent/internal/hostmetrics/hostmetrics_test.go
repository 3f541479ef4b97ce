package hostmetrics

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

// DF is one line of `df -B1 --output=target,fstype,size,used,avail PATH`.
type DF struct {
	Target, FSType    string
	Size, Used, Avail uint64
}

// ReadDF runs df(1) on path: the independent source of a file system's
// mount point, size, used bytes (f_blocks − f_bfree) and bytes available
// to an unprivileged writer (f_bavail).
func ReadDF(t testing.TB, path string) DF {
	t.Helper()
	out, err := exec.Command(testkit.Tool(t, "df"), "-B1", "--output=target,fstype,size,used,avail", path).Output()
	if err != nil {
		t.Fatalf("df %s: %v", path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(lines) != 2 || len(f) != 5 {
		t.Fatalf("df %s: %q", path, out)
	}
	size, err1 := strconv.ParseUint(f[2], 10, 64)
	used, err2 := strconv.ParseUint(f[3], 10, 64)
	avail, err3 := strconv.ParseUint(f[4], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("df %s: %q", path, out)
	}
	return DF{f[0], f[1], size, used, avail}
}

// shmDir is a new directory on /dev/shm, a tmpfs: a file system type the
// default disk list (gopsutil's physical devices) leaves out.
func shmDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "netwatch-hostmetrics-")
	if err != nil {
		testkit.Unavailable(t, "a directory on the tmpfs /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if d := ReadDF(t, dir); d.FSType != "tmpfs" {
		testkit.Unavailable(t, "/dev/shm is %s, not tmpfs", d.FSType)
	}
	return dir
}

func diskNamed(m *pb.Metrics, mount string) *pb.DiskUsage {
	for _, d := range m.GetDisks() {
		if d.GetMount() == mount {
			return d
		}
	}
	return nil
}

// TestSamplePaths: a directory on a tmpfs is not among the default disks;
// given in paths, its file system is reported under df's mount point with
// df's size, and used bytes between two df reads around the sample (other
// processes write there too). Without the path it is absent; a missing
// path is left out; "/" is reported once whatever the paths say.
func TestSamplePaths(t *testing.T) {
	dir := shmDir(t)
	var plain pb.Metrics
	Sample(context.Background(), &plain, nil)
	want := ReadDF(t, dir)
	if d := diskNamed(&plain, want.Target); d != nil {
		t.Fatalf("%s (%s) is in the default list: the test needs a file system that is not", want.Target, want.FSType)
	}
	if d := diskNamed(&plain, "/"); d == nil {
		t.Fatalf("no disk / in %v", plain.GetDisks())
	}
	var last string
	for try := 0; try < 10; try++ {
		before := ReadDF(t, dir)
		var m pb.Metrics
		Sample(context.Background(), &m, []string{dir, filepath.Join(dir, "missing"), "/", t.TempDir()})
		after := ReadDF(t, dir)
		n := 0
		for _, d := range m.GetDisks() {
			if d.GetMount() == "/" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%d disks named /: %v", n, m.GetDisks())
		}
		d := diskNamed(&m, want.Target)
		if d == nil {
			t.Fatalf("no disk %s (holding %s) in %v", want.Target, dir, m.GetDisks())
		}
		if len(m.GetDisks()) != len(plain.GetDisks())+1 {
			t.Errorf("disks %v, want the default list %v and %s", m.GetDisks(), plain.GetDisks(), want.Target)
		}
		lo, hi := min(before.Used, after.Used), max(before.Used, after.Used)
		alo, ahi := min(before.Avail, after.Avail), max(before.Avail, after.Avail)
		if d.AvailBytes == nil {
			t.Fatalf("%s: no avail_bytes", want.Target)
		}
		if d.GetTotalBytes() == before.Size && d.GetUsedBytes() >= lo && d.GetUsedBytes() <= hi &&
			d.GetAvailBytes() >= alo && d.GetAvailBytes() <= ahi {
			return
		}
		last = "total " + strconv.FormatUint(d.GetTotalBytes(), 10) + " used " + strconv.FormatUint(d.GetUsedBytes(), 10) +
			"; df size " + strconv.FormatUint(before.Size, 10) + " used " + strconv.FormatUint(lo, 10) + ".." + strconv.FormatUint(hi, 10) +
			"; avail " + strconv.FormatUint(d.GetAvailBytes(), 10) + " df " + strconv.FormatUint(alo, 10) + ".." + strconv.FormatUint(ahi, 10)
	}
	t.Fatalf("%s after 10 samples: %s", want.Target, last)
}

// TestMountOf: the longest mount point holding the path, the last of equal
// ones, symbolic links resolved; the path itself without one.
func TestMountOf(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(sub, link); err != nil {
		t.Fatal(err)
	}
	ab := filepath.Join(dir, "a")
	for _, c := range []struct {
		path   string
		mounts []string
		want   string
	}{
		{sub, []string{"/", ab, dir}, ab},
		{sub, []string{"/", dir + "/a/"}, ab},
		{link, []string{"/", ab}, ab},
		{sub, []string{"/", dir + "/a/b/c", dir + "/ab"}, "/"},
		{ab + "x", []string{"/", ab}, "/"},
		{sub, nil, sub},
		{sub, []string{"relative"}, sub},
	} {
		if got := MountOf(c.path, c.mounts); got != c.want {
			t.Errorf("MountOf(%s, %v) = %s, want %s", c.path, c.mounts, got, c.want)
		}
	}
}
