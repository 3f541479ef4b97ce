// Package hostmetrics is the agent's side path (beside capture → publish)
// that samples host metrics with gopsutil: CPU, memory, load, disks and
// interface counters, for the METRICS stream.
package hostmetrics

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/shirou/gopsutil/v4/common"
	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/host"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/net"
	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

// Sample fills the host part of m (everything but sensor, boot, seq and
// captures). A metric that cannot be read is left zero; sampling never fails.
//
// Disks are the mounts gopsutil lists without all (disk.Partitions(false):
// file systems of a physical device type, no tmpfs, proc, overlay ...),
// each once, plus for each of paths (directories, such as a database's
// data directory) the file system holding it, even one of a type not in
// that list: its size and use are read from the path itself (statfs(2), as
// df(1) does), and it is named by its mount point (the longest mount point
// of /proc/self/mountinfo that holds the path, symbolic links resolved; the
// path itself when the mount table cannot be read). A file system already
// listed is not repeated; a path that cannot be read is left out. Used
// bytes are total minus free blocks (f_blocks − f_bfree, df's "Used"),
// not total minus the blocks available to unprivileged users.
func Sample(ctx context.Context, m *pb.Metrics, paths []string) {
	m.TimeNs = time.Now().UnixNano()
	m.Host, _ = os.Hostname()
	if p, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(p) > 0 {
		m.CpuPercent = p[0]
	}
	if v, err := mem.VirtualMemoryWithContext(ctx); err == nil {
		m.MemTotalBytes, m.MemUsedBytes = v.Total, v.Used
	}
	if l, err := load.AvgWithContext(ctx); err == nil {
		m.Load1 = l.Load1
	}
	if up, err := host.UptimeWithContext(ctx); err == nil {
		m.UptimeS = int64(up)
	}
	if parts, err := disk.PartitionsWithContext(ctx, false); err == nil {
		seen := map[string]bool{}
		for _, p := range parts {
			if seen[p.Mountpoint] {
				continue
			}
			seen[p.Mountpoint] = true
			if u, err := disk.UsageWithContext(ctx, p.Mountpoint); err == nil && u.Total > 0 {
				m.Disks = append(m.Disks, &pb.DiskUsage{Mount: p.Mountpoint, TotalBytes: u.Total, UsedBytes: u.Used, AvailBytes: proto.Uint64(u.Free)})
			}
		}
	}
	if len(paths) > 0 {
		m.Disks = append(m.Disks, pathDisks(ctx, paths, m.Disks)...)
	}
	if ifs, err := net.IOCountersWithContext(ctx, true); err == nil {
		for _, c := range ifs {
			m.Interfaces = append(m.Interfaces, &pb.InterfaceCounters{Name: c.Name,
				RxBytes: c.BytesRecv, TxBytes: c.BytesSent, RxPackets: c.PacketsRecv, TxPackets: c.PacketsSent,
				RxErrors: c.Errin, TxErrors: c.Errout, RxDropped: c.Dropin, TxDropped: c.Dropout})
		}
	}
}

// pathDisks returns the file systems holding paths that are not among
// listed (by mount point), each once (see Sample).
func pathDisks(ctx context.Context, paths []string, listed []*pb.DiskUsage) []*pb.DiskUsage {
	// The mount table of the agent's own mount namespace: the paths are
	// resolved there (gopsutil reads /proc/1/mountinfo by default, the
	// init process's namespace, which a systemd unit's may differ from).
	var mounts []string
	self := context.WithValue(ctx, common.EnvKey, common.EnvMap{common.HostProcMountinfo: "/proc/self/mountinfo"})
	if parts, err := disk.PartitionsWithContext(self, true); err == nil {
		for _, p := range parts {
			mounts = append(mounts, p.Mountpoint)
		}
	} else if parts, err := disk.PartitionsWithContext(ctx, true); err == nil {
		for _, p := range parts {
			mounts = append(mounts, p.Mountpoint)
		}
	}
	seen := map[string]bool{}
	for _, d := range listed {
		seen[d.GetMount()] = true
	}
	var out []*pb.DiskUsage
	for _, p := range paths {
		u, err := disk.UsageWithContext(ctx, p)
		if err != nil || u.Total == 0 {
			continue
		}
		name := MountOf(p, mounts)
		if seen[name] {
			continue
		}
		seen[name] = true
		out = append(out, &pb.DiskUsage{Mount: name, TotalBytes: u.Total, UsedBytes: u.Used, AvailBytes: proto.Uint64(u.Free)})
	}
	return out
}

// MountOf returns the mount point among mounts (in mount table order) that
// holds path: the longest one that is path or one of its parent
// directories, after making path absolute and resolving its symbolic
// links; of equal ones the last (a later mount hides an earlier one at the
// same point). Without such a mount point it returns the cleaned path.
func MountOf(path string, mounts []string) string {
	p, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	best := ""
	for _, m := range mounts {
		m = filepath.Clean(m)
		if !filepath.IsAbs(m) {
			continue
		}
		if m == p || m == "/" || strings.HasPrefix(p, m+"/") {
			if len(m) >= len(best) {
				best = m
			}
		}
	}
	if best == "" {
		return p
	}
	return best
}
