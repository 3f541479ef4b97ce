// Package health holds the detector's rules about netwatch itself
// (category "health", no ATT&CK technique): a sensor gone silent (no
// METRICS message for several of its own intervals), capture drops rising
// (kernel, interface or publish-buffer drops between two samples of a
// capture), a disk of a monitored host near full, and consumer lag (messages
// pending on a durable JetStream consumer). They run in wall-clock time:
// METRICS times are wall clock, and silence is measured against now.
package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// Rule names of the health alerts (category "health").
const (
	Category     = "health"
	RuleSilent   = "health_sensor_silent"
	RuleDrops    = "health_capture_drops"
	RuleDisk     = "health_disk_full"
	RuleLag      = "health_consumer_lag"
	SystemSensor = "netwatch" // the sensor of alerts about the pipeline itself (consumer lag)
)

// Config of the health rules. Start from DefaultConfig.
type Config struct {
	SilentIntervals float64       // a sensor is silent after this many of its METRICS intervals without a message
	MinInterval     time.Duration // floor of the interval estimate (an agent sending faster is not judged on it)
	DropRatio       float64       // dropped / (received + dropped) between two samples that alerts
	DropMin         uint64        // and at least this many drops between them
	DiskRatio       float64       // fullness of a mounted file system that alerts: df's used / (used + avail), see UsedRatio
	LagPending      uint64        // messages pending (not yet delivered) on a durable consumer that alert
	Window          time.Duration // one alert per (rule, sensor, target) per window of wall time; a condition that lasts is re-alerted each window
}

// DefaultConfig: silent after 3 intervals; 1 % drops (at least 100);
// disk 90 %; 100,000 pending messages (the FLOWS consumers' MaxAckPending);
// 10-minute windows.
func DefaultConfig() Config {
	return Config{SilentIntervals: 3, MinInterval: time.Second, DropRatio: 0.01, DropMin: 100, DiskRatio: 0.9,
		LagPending: 100_000, Window: 10 * time.Minute}
}

// Validate reports every invalid field.
func (c Config) Validate() error {
	var errs []error
	if c.SilentIntervals < 1 {
		errs = append(errs, fmt.Errorf("-health.silent-intervals %v: want at least 1", c.SilentIntervals))
	}
	if !(c.DropRatio > 0 && c.DropRatio <= 1) {
		errs = append(errs, fmt.Errorf("-health.drop-ratio %v: want 0 < r <= 1", c.DropRatio))
	}
	if !(c.DiskRatio > 0 && c.DiskRatio <= 1) {
		errs = append(errs, fmt.Errorf("-health.disk-ratio %v: want 0 < r <= 1", c.DiskRatio))
	}
	if c.LagPending < 1 {
		errs = append(errs, fmt.Errorf("-health.lag-pending %d: want at least 1", c.LagPending))
	}
	if c.Window < time.Second {
		errs = append(errs, fmt.Errorf("-health.window %s: want at least 1s", c.Window))
	}
	return errors.Join(errs...)
}

type capKey struct{ sensor, boot, source string }

type sensorState struct {
	lastSeen   time.Time // wall clock when the last message arrived
	lastTimeNs int64     // its time_ns
	boot       string
	interval   time.Duration
	samples    int
	silentSent bool // an alert for the current silence was raised
}

// Monitor evaluates the health rules. Not safe for concurrent use.
type Monitor struct {
	cfg     Config
	sensors map[string]*sensorState
	caps    map[capKey]*pb.CaptureStats
	fired   map[string]bool // alert ids raised
}

// New returns a monitor with cfg (which must be valid).
func New(cfg Config) *Monitor {
	return &Monitor{cfg: cfg, sensors: map[string]*sensorState{}, caps: map[capKey]*pb.CaptureStats{}, fired: map[string]bool{}}
}

func (m *Monitor) window(now time.Time) int64 {
	w := int64(m.cfg.Window)
	return now.UnixNano() - now.UnixNano()%w
}

// alert builds a health alert once per (rule, sensor, target, window).
func (m *Monitor) alert(now time.Time, sensor, rule, target string, sev pb.Severity, summary string, ev map[string]any) *pb.Alert {
	win := m.window(now)
	id := schema.AlertID(sensor, rule, "", target, win)
	if m.fired[id] {
		return nil
	}
	if len(m.fired) > 100_000 {
		clear(m.fired)
	}
	m.fired[id] = true
	ev["target"] = target
	ev["window_start_ns"] = win
	ev["window_end_ns"] = win + int64(m.cfg.Window)
	b, _ := json.Marshal(ev)
	return &pb.Alert{Id: id, TimeNs: now.UnixNano(), Sensor: sensor, Severity: sev, Category: Category, Summary: summary,
		Evidence: b, Rule: rule, WindowStartNs: win, WindowEndNs: win + int64(m.cfg.Window), Score: 1}
}

// Retract forgets that a was raised (after a failed publish).
func (m *Monitor) Retract(a *pb.Alert) {
	delete(m.fired, a.GetId())
	if a.GetRule() == RuleSilent {
		if s := m.sensors[a.GetSensor()]; s != nil {
			s.silentSent = false
		}
	}
}

// Observe takes one METRICS message received at now and returns the drop
// and disk alerts it raises.
func (m *Monitor) Observe(mt *pb.Metrics, now time.Time) []*pb.Alert {
	sensor := mt.GetSensor()
	if sensor == "" {
		return nil
	}
	s := m.sensors[sensor]
	if s == nil {
		s = &sensorState{}
		m.sensors[sensor] = s
	}
	if mt.GetBoot() != s.boot { // a restarted agent may have a new interval
		s.boot, s.interval, s.samples = mt.GetBoot(), 0, 0
	}
	// The interval is the gap between two samples, unless the gap was
	// itself a silence (then the previous estimate stays).
	if gap := time.Duration(mt.GetTimeNs() - s.lastTimeNs); s.samples > 0 && gap > 0 &&
		(s.interval == 0 || float64(gap) <= m.cfg.SilentIntervals*float64(s.interval)) {
		s.interval = gap
	}
	s.lastSeen, s.lastTimeNs, s.silentSent = now, mt.GetTimeNs(), false
	s.samples++
	var out []*pb.Alert
	for _, c := range mt.GetCaptures() {
		k := capKey{sensor, mt.GetBoot(), c.GetSource()}
		prev := m.caps[k]
		m.caps[k] = c
		if prev == nil {
			continue
		}
		drops := func(x *pb.CaptureStats) uint64 { return x.GetDropped() + x.GetIfDropped() + x.GetBufferDropped() }
		if drops(c) < drops(prev) || c.GetReceived() < prev.GetReceived() {
			continue // counters went back: a restart without a new boot id
		}
		dd, dr := drops(c)-drops(prev), c.GetReceived()-prev.GetReceived()
		if dd >= m.cfg.DropMin && float64(dd) >= m.cfg.DropRatio*float64(dd+dr) {
			if a := m.alert(now, sensor, RuleDrops, c.GetSource(), pb.Severity_SEVERITY_HIGH,
				fmt.Sprintf("sensor %s lost %d of %d packets on %s since the previous sample (%.1f %%): capture drops", sensor, dd, dd+dr, c.GetSource(), 100*float64(dd)/float64(dd+dr)),
				map[string]any{"dropped": dd, "received": dr, "kernel_dropped": c.GetDropped() - prev.GetDropped(),
					"if_dropped": c.GetIfDropped() - prev.GetIfDropped(), "buffer_dropped": c.GetBufferDropped() - prev.GetBufferDropped(),
					"ratio": float64(dd) / float64(dd+dr), "threshold_ratio": m.cfg.DropRatio, "host": mt.GetHost()}); a != nil {
				out = append(out, a)
			}
		}
	}
	for _, d := range mt.GetDisks() {
		avail, hasAvail := availBytes(d)
		var r float64
		ev := map[string]any{"used_bytes": d.GetUsedBytes(), "total_bytes": d.GetTotalBytes(),
			"threshold_ratio": m.cfg.DiskRatio, "host": mt.GetHost()}
		switch {
		case hasAvail:
			if d.GetUsedBytes()+avail == 0 {
				continue
			}
			r = UsedRatio(d.GetUsedBytes(), avail)
			ev["avail_bytes"], ev["basis"] = avail, "used/(used+avail)"
		case d.GetTotalBytes() > 0:
			r = float64(d.GetUsedBytes()) / float64(d.GetTotalBytes())
			ev["basis"] = "used/total"
		default:
			continue
		}
		ev["ratio"] = r
		if r >= m.cfg.DiskRatio {
			if a := m.alert(now, sensor, RuleDisk, d.GetMount(), pb.Severity_SEVERITY_MEDIUM,
				fmt.Sprintf("disk %s on %s (sensor %s) is %.1f %% full", d.GetMount(), mt.GetHost(), sensor, 100*r), ev); a != nil {
				out = append(out, a)
			}
		}
	}
	return out
}

// UsedRatio is how full a file system is as df(1) reports it (GNU
// coreutils df "Use%", and gopsutil's UsedPercent): used / (used +
// avail), where used = (f_blocks - f_bfree) × f_frsize and avail =
// f_bavail × f_frsize of statfs(2). The blocks reserved for root (f_bfree
// - f_bavail, 5 % by default on ext4) count as neither, so the ratio
// reaches 1 when an unprivileged writer gets ENOSPC; used / total would
// stay below 1 - reserved share (0.95 on a default ext4: a 0.96 threshold
// never fires). df prints the percentage rounded up. 0 when both are 0.
func UsedRatio(used, avail uint64) float64 {
	if used+avail == 0 {
		return 0
	}
	return float64(used) / (float64(used) + float64(avail))
}

// availBytes returns the available bytes (f_bavail × f_frsize) of a disk
// and whether the METRICS message carries them (DiskUsage.avail_bytes, a
// proto3 "optional" field: an agent that sends 0 available bytes is full;
// an agent built before the field sends none, and the disk rule falls back
// to used / total, which understates df's Use% by the reserved blocks).
func availBytes(d *pb.DiskUsage) (uint64, bool) {
	if d.AvailBytes == nil {
		return 0, false
	}
	return d.GetAvailBytes(), true
}

// CheckSilent returns an alert for each sensor that has sent at least two
// METRICS messages (so its interval is known) and none for
// SilentIntervals × its interval before now; once per silence.
func (m *Monitor) CheckSilent(now time.Time) []*pb.Alert {
	names := make([]string, 0, len(m.sensors))
	for n := range m.sensors {
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*pb.Alert
	for _, n := range names {
		s := m.sensors[n]
		if s.samples < 2 || s.silentSent {
			continue
		}
		iv := max(s.interval, m.cfg.MinInterval)
		limit := time.Duration(m.cfg.SilentIntervals * float64(iv))
		if gone := now.Sub(s.lastSeen); gone > limit {
			s.silentSent = true
			if a := m.alert(now, n, RuleSilent, n, pb.Severity_SEVERITY_HIGH,
				fmt.Sprintf("sensor %s sent no metrics for %s (%.0f× its %s interval): agent down, host down or cut off", n, gone.Round(time.Second), gone.Seconds()/iv.Seconds(), iv),
				map[string]any{"last_seen_ns": s.lastSeen.UnixNano(), "interval_seconds": iv.Seconds(), "silent_seconds": gone.Seconds(),
					"threshold_intervals": m.cfg.SilentIntervals}); a != nil {
				out = append(out, a)
			}
		}
	}
	return out
}

// Lag is the state of one durable consumer.
type Lag struct {
	Stream, Consumer string
	Pending          uint64 // messages not yet delivered
	AckPending       int    // delivered, not yet acked
}

// CheckLag returns an alert for each consumer with at least LagPending
// messages pending.
func (m *Monitor) CheckLag(lags []Lag, now time.Time) []*pb.Alert {
	var out []*pb.Alert
	for _, l := range lags {
		if l.Pending < m.cfg.LagPending {
			continue
		}
		target := l.Stream + "/" + l.Consumer
		if a := m.alert(now, SystemSensor, RuleLag, target, pb.Severity_SEVERITY_MEDIUM,
			fmt.Sprintf("consumer %s on %s is %d messages behind (%d delivered, not acked): its stage is slow, stuck or down", l.Consumer, l.Stream, l.Pending, l.AckPending),
			map[string]any{"stream": l.Stream, "consumer": l.Consumer, "pending": l.Pending, "ack_pending": l.AckPending,
				"threshold_pending": m.cfg.LagPending}); a != nil {
			out = append(out, a)
		}
	}
	return out
}
