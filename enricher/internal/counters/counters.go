// Package counters computes per-second traffic counters of a sensor in
// packet time (enricher stage: consume → flow, counters → publish), so live
// charts and flood rules see traffic within seconds instead of when a flow
// ends.
package counters

import (
	"math"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"netwatch/enricher/internal/flow"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// TCP flag bits of pb.PacketSummary.TcpFlags.
const (
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// Config bounds a Sensor's counters.
type Config struct {
	// Lateness is how far (packet time) a second stays open behind the
	// watermark (the oldest clock among the sensor's buckets), for packets
	// whose time goes back within a bucket. Default 1 s.
	Lateness time.Duration
	// MaxOpen bounds the seconds kept open while a bucket holds the
	// watermark back (a bucket whose batch is not in yet); past it the
	// oldest second is emitted, and its stragglers are counted in
	// Sensor.Late. Default 300 (5 min of packet time).
	MaxOpen int
	// Top is the number of responder addresses per second, busiest
	// (packets) first. Default 32.
	Top int
	// MaxAddrs bounds the distinct responders, sources, and
	// (responder, source) pairs tracked per second; past it, packets still
	// count in the totals but new addresses are not tracked, so sources
	// become a lower bound. Default 4096.
	MaxAddrs int
}

// DefaultConfig returns the defaults of the -counters.* flags.
func DefaultConfig() Config {
	return Config{Lateness: time.Second, MaxOpen: 300, Top: 32, MaxAddrs: 4096}
}

// Emit receives one closed second and the input messages its packets came
// from (retained once each for this second).
type Emit func(c *pb.TrafficCounters, refs []flow.Ref)

type pair struct{ resp, src netip.Addr }

type second struct {
	ns    int64
	total pb.CounterSet
	srcs  map[netip.Addr]struct{}
	resp  map[netip.Addr]*pb.CounterSet
	pairs map[pair]struct{}
	refs  []flow.Ref
}

// Sensor aggregates one sensor's packets into one-second bins of packet
// time. Each bucket's packets arrive in order (one PACKETS subject, in
// stream order) but buckets are batched separately, so a bucket may deliver
// a minute of packets after another bucket delivered the same minute. A
// second is emitted once the watermark — the oldest clock among all
// schema.Buckets buckets of the sensor, a bucket's clock being its newest
// packet time or the time Advance gave it — is Lateness past its end, when
// more than MaxOpen seconds are open, or at Flush. It is not safe for
// concurrent use.
type Sensor struct {
	name   string
	cfg    Config
	emit   Emit
	open   []*second // by ns
	clock  int64     // newest packet time
	closed int64     // seconds before this (Unix ns) are closed; 0 before the first close
	free   []*second
	clocks [schema.Buckets]int64 // per bucket; math.MinInt64 until seen
	minB   int                   // a bucket holding the watermark

	Late uint64 // packets of seconds already closed (not in any emitted second)
}

// NewSensor returns the counters of sensor; zero fields of cfg take
// DefaultConfig's.
func NewSensor(sensor string, cfg Config, emit Emit) *Sensor {
	d := DefaultConfig()
	if cfg.Lateness <= 0 {
		cfg.Lateness = d.Lateness
	}
	if cfg.Top <= 0 {
		cfg.Top = d.Top
	}
	if cfg.MaxAddrs <= 0 {
		cfg.MaxAddrs = d.MaxAddrs
	}
	if cfg.MaxOpen <= 0 {
		cfg.MaxOpen = d.MaxOpen
	}
	s := &Sensor{name: sensor, cfg: cfg, emit: emit}
	for i := range s.clocks {
		s.clocks[i] = math.MinInt64
	}
	return s
}

const sec = int64(time.Second)

// floorSec is the start of the second holding ns (also before 1970).
func floorSec(ns int64) int64 {
	s := ns / sec * sec
	if s > ns {
		s -= sec
	}
	return s
}

// Add counts one packet of bucket (pb.PacketBatch.bucket, < schema.Buckets;
// others count as bucket 0); ref (may be nil) is the message it came from.
func (s *Sensor) Add(p *pb.PacketSummary, bucket uint32, ref flow.Ref) {
	ts := p.TsNs
	if s.closed != 0 && ts < s.closed {
		s.Late++
		return
	}
	b := s.bin(floorSec(ts))
	count(&b.total, p)
	src, sok := netip.AddrFromSlice(p.SrcAddr)
	dst, dok := netip.AddrFromSlice(p.DstAddr)
	if sok {
		if _, ok := b.srcs[src]; !ok && len(b.srcs) < s.cfg.MaxAddrs {
			b.srcs[src] = struct{}{}
			b.total.Sources++
		}
	}
	if dok {
		c := b.resp[dst]
		if c == nil && len(b.resp) < s.cfg.MaxAddrs {
			c = new(pb.CounterSet)
			b.resp[dst] = c
		}
		if c != nil {
			count(c, p)
			if sok {
				k := pair{dst, src}
				if _, ok := b.pairs[k]; !ok && len(b.pairs) < s.cfg.MaxAddrs {
					b.pairs[k] = struct{}{}
					c.Sources++
				}
			}
		}
	}
	if ref != nil && (len(b.refs) == 0 || b.refs[len(b.refs)-1] != ref) {
		ref.Retain()
		b.refs = append(b.refs, ref)
	}
	if ts > s.clock {
		s.clock = ts
	}
	s.Advance(bucket, ts)
	if len(s.open) > s.cfg.MaxOpen {
		s.closeUpTo(s.open[len(s.open)-s.cfg.MaxOpen].ns)
	}
}

// Advance moves bucket's clock to now (never back) and emits the seconds the
// watermark has passed. The stage calls it for buckets that got no batch
// for a while, so that a quiet bucket does not hold the counters back.
func (s *Sensor) Advance(bucket uint32, now int64) {
	if bucket >= schema.Buckets {
		bucket = 0
	}
	if now <= s.clocks[bucket] {
		return
	}
	old := s.clocks[bucket]
	s.clocks[bucket] = now
	if int(bucket) != s.minB && old != math.MinInt64 {
		return // the watermark is held by another bucket
	}
	wm := s.clocks[0]
	s.minB = 0
	for i, c := range &s.clocks { // by pointer: no copy of the array
		if c < wm {
			wm, s.minB = c, i
		}
	}
	if wm != math.MinInt64 {
		s.closeUpTo(floorSec(wm - int64(s.cfg.Lateness)))
	}
}

// Clock is the newest packet time seen, Unix ns; 0 before the first.
func (s *Sensor) Clock() int64 { return s.clock }

// count adds p to c (all fields but Sources).
func count(c *pb.CounterSet, p *pb.PacketSummary) {
	c.Packets++
	c.IpBytes += uint64(p.IpBytes)
	switch p.Proto {
	case 6:
		switch p.TcpFlags & (flagSYN | flagACK) {
		case flagSYN:
			c.Syn++
		case flagSYN | flagACK:
			c.SynAck++
		}
		if p.TcpFlags&flagRST != 0 {
			c.Rst++
		}
	case 1, 58:
		c.Icmp++
	}
	if p.DnsResponse {
		c.DnsResponses++
	}
}

// bin returns the open second starting at ns, opening it in order.
func (s *Sensor) bin(ns int64) *second {
	i, found := slices.BinarySearchFunc(s.open, ns, func(b *second, ns int64) int {
		switch {
		case b.ns < ns:
			return -1
		case b.ns > ns:
			return 1
		}
		return 0
	})
	if found {
		return s.open[i]
	}
	var b *second
	if n := len(s.free); n > 0 {
		b, s.free = s.free[n-1], s.free[:n-1]
	} else {
		b = &second{srcs: map[netip.Addr]struct{}{}, resp: map[netip.Addr]*pb.CounterSet{}, pairs: map[pair]struct{}{}}
	}
	b.ns = ns
	s.open = slices.Insert(s.open, i, b)
	return b
}

// closeUpTo emits the open seconds that start before end and closes them.
func (s *Sensor) closeUpTo(end int64) {
	if end <= s.closed {
		return
	}
	s.closed = end
	n := 0
	for n < len(s.open) && s.open[n].ns < end {
		s.flush(s.open[n])
		n++
	}
	if n > 0 {
		clear(s.open[:n])
		s.open = slices.Delete(s.open, 0, n)
	}
}

// Flush emits every open second and closes everything up to the newest
// packet's second (end of input, shutdown, or traffic stopped).
func (s *Sensor) Flush() {
	if s.clock == 0 && len(s.open) == 0 {
		return
	}
	s.closeUpTo(floorSec(s.clock) + sec)
	for _, b := range s.open { // packets older than the clock's second cannot be left, but be safe
		s.flush(b)
	}
	clear(s.open)
	s.open = s.open[:0]
}

// Open is the number of seconds not yet emitted.
func (s *Sensor) Open() int { return len(s.open) }

func (s *Sensor) flush(b *second) {
	m := &pb.TrafficCounters{Sensor: s.name, SecondNs: b.ns, Total: cloneSet(&b.total)}
	top := make([]*pb.AddrCounters, 0, len(b.resp))
	for a, c := range b.resp {
		top = append(top, &pb.AddrCounters{Addr: a.AsSlice(), Counters: c})
	}
	slices.SortFunc(top, func(x, y *pb.AddrCounters) int {
		if x.Counters.Packets != y.Counters.Packets {
			if x.Counters.Packets > y.Counters.Packets {
				return -1
			}
			return 1
		}
		return compareBytes(x.Addr, y.Addr)
	})
	if len(top) > s.cfg.Top {
		top = top[:s.cfg.Top]
	}
	m.Responders = top
	refs := b.refs
	b.refs = nil
	b.total.Reset()
	clear(b.srcs)
	clear(b.resp)
	clear(b.pairs)
	if len(s.free) < 4 {
		s.free = append(s.free, b)
	}
	s.emit(m, refs)
}

func cloneSet(c *pb.CounterSet) *pb.CounterSet {
	return &pb.CounterSet{Packets: c.Packets, IpBytes: c.IpBytes, Syn: c.Syn, SynAck: c.SynAck, Rst: c.Rst,
		Icmp: c.Icmp, DnsResponses: c.DnsResponses, Sources: c.Sources}
}

func compareBytes(a, b []byte) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	for i := range a {
		if a[i] != b[i] {
			return int(a[i]) - int(b[i])
		}
	}
	return 0
}

// MsgID is the Nats-Msg-Id of a sensor's counters of one second published
// by one enricher instance: "<sensor>.<instance>.<second, Unix s>", so a
// replay of the same input by the same instance is dropped by the stream's
// duplicate window while instances sharing a sensor do not collide.
func MsgID(sensor, instance string, secondNs int64) string {
	return sensor + "." + instance + "." + strconv.FormatInt(floorSec(secondNs)/sec, 10)
}
