// Package hostmetrics is the agent's side path (beside capture → publish)
// that samples host metrics with gopsutil: CPU, memory, load, disks and
// interface counters, for the METRICS stream.
package hostmetrics

import (
	"context"
	"os"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/host"
	"github.com/shirou/gopsutil/v4/load"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/net"

	"netwatch/schema/pb"
)

// Sample fills the host part of m (everything but sensor, boot, seq and
// captures). A metric that cannot be read is left zero; sampling never fails.
func Sample(ctx context.Context, m *pb.Metrics) {
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
				m.Disks = append(m.Disks, &pb.DiskUsage{Mount: p.Mountpoint, TotalBytes: u.Total, UsedBytes: u.Used})
			}
		}
	}
	if ifs, err := net.IOCountersWithContext(ctx, true); err == nil {
		for _, c := range ifs {
			m.Interfaces = append(m.Interfaces, &pb.InterfaceCounters{Name: c.Name,
				RxBytes: c.BytesRecv, TxBytes: c.BytesSent, RxPackets: c.PacketsRecv, TxPackets: c.PacketsSent,
				RxErrors: c.Errin, TxErrors: c.Errout, RxDropped: c.Dropin, TxDropped: c.Dropout})
		}
	}
}
