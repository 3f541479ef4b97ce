// Package hostmodel is the detector's unsupervised per-host anomaly model:
// per (sensor, host, window) behaviour counts computed from flow records
// (Tracker), golearn's isolation forest fitted on the windows of benign
// captures (Forest), and a threshold at a quantile of the benign scores.
// Its score annotates alerts (evidence "host_anomaly"), the detector's
// /hosts endpoint and metrics; it never raises an alert on its own.
package hostmodel

import (
	"encoding/binary"
	"math"
	"net/netip"

	"netwatch/schema/pb"
)

// NumFeatures is the length of a feature vector (Counts.Vector).
const NumFeatures = 9

// FeatureNames name the entries of Counts.Vector, in order.
var FeatureNames = [NumFeatures]string{"flows_out", "peers_out", "ports_out", "failed_out_share", "pkts_out",
	"bytes_out", "bytes_in", "flows_in", "peers_in"}

// FeatureSet names the feature vector; a model file trained on another is
// refused.
const FeatureSet = "host9-v1: ln(1+x) of flows_out, peers_out, ports_out, pkts_out, bytes_out, bytes_in, flows_in, peers_in; failed_out_share"

// MaxDistinct caps each distinct set of a host window (peers out, ports
// out, peers in): beyond it the count stays at MaxDistinct (a scan of
// 65,535 ports and one of 4,096 look alike to the model, ln(1+4096) = 8.3).
const MaxDistinct = 4096

// Counts are one host's behaviour in one window, from the flow records
// whose start falls in the window. "Out" counts flows the host originated,
// "in" flows it answered (responder). Bytes are transport payload bytes
// (flow orig_bytes/resp_bytes) sent or received in either role.
type Counts struct {
	FlowsOut  uint64 `json:"flows_out"`
	PeersOut  uint64 `json:"peers_out"`  // distinct responders of its flows (≤ MaxDistinct)
	PortsOut  uint64 `json:"ports_out"`  // distinct (protocol, responder port or ICMP type) of its flows (≤ MaxDistinct)
	FailedOut uint64 `json:"failed_out"` // its flows that failed (Failed)
	PktsOut   uint64 `json:"pkts_out"`   // packets it sent, both roles
	BytesOut  uint64 `json:"bytes_out"`  // payload bytes it sent, both roles
	BytesIn   uint64 `json:"bytes_in"`   // payload bytes it received, both roles
	FlowsIn   uint64 `json:"flows_in"`
	PeersIn   uint64 `json:"peers_in"` // distinct originators of the flows it answered (≤ MaxDistinct)
}

// Vector is the model's input: ln(1+x) of every count (counts span 1 to
// millions), and the share of failed outgoing flows (0 without any).
func (c Counts) Vector() [NumFeatures]float64 {
	l := func(v uint64) float64 { return math.Log1p(float64(v)) }
	share := 0.0
	if c.FlowsOut > 0 {
		share = float64(c.FailedOut) / float64(c.FlowsOut)
	}
	return [NumFeatures]float64{l(c.FlowsOut), l(c.PeersOut), l(c.PortsOut), share, l(c.PktsOut),
		l(c.BytesOut), l(c.BytesIn), l(c.FlowsIn), l(c.PeersIn)}
}

// Failed reports whether a flow is a failed connection attempt: no
// responder packet at all (unanswered SYN, UDP datagram or ICMP request),
// or a TCP responder that reset the connection without sending payload
// (closed port). A flow whose direction the enricher guessed with no
// originator packet (a one-way response) is not an attempt of its
// originator and is not failed.
func Failed(f *pb.Flow) bool {
	if f.GetOrigPkts() == 0 {
		return false
	}
	if f.GetRespPkts() == 0 {
		return true
	}
	return f.GetProto() == 6 && f.GetRespTcpFlags()&0x04 != 0 && f.GetRespBytes() == 0
}

// set is a distinct set of 64-bit hashes: the first value inline, a map
// from the second, capped at MaxDistinct.
type set struct {
	first uint64
	n     uint64
	more  map[uint64]struct{}
}

func (s *set) add(v uint64) {
	switch {
	case s.n == 0:
		s.first, s.n = v, 1
	case s.n == 1 && v == s.first:
	case s.n >= MaxDistinct:
	default:
		if s.more == nil {
			s.more = make(map[uint64]struct{}, 4)
		}
		if len(s.more) == 0 {
			// the second value (the map is new, or cleared by reset: a
			// reused state kept it, and skipping first here counted it
			// again at its next add, one too many)
			s.more[s.first] = struct{}{}
		}
		if _, ok := s.more[v]; !ok {
			s.more[v] = struct{}{}
			s.n++
		}
	}
}

func (s *set) reset() {
	s.first, s.n = 0, 0
	if s.more != nil {
		clear(s.more)
	}
}

type state struct {
	c                           Counts
	peersOut, portsOut, peersIn set
}

// hkey is a host within one window's map: no pointer, so the map is not
// scanned by the garbage collector, and 20 bytes to hash.
type hkey struct {
	addr   [16]byte
	sensor uint32 // index into Tracker.sensors
}

// winMap holds the hosts of one window. Closing a window walks and clears
// its map, which keeps its capacity for a later window (no regrowth in a
// steady state).
type winMap struct {
	win int64
	m   map[hkey]int32 // index into Tracker.states
}

// Window is a closed (or current) host window.
type Window struct {
	Sensor string
	Addr   netip.Addr
	Start  int64 // window start, Unix ns (packet time)
	Counts Counts
}

// Tracker keeps Counts per (sensor, host, window) over tumbling windows
// aligned to multiples of the window length since the Unix epoch, in
// packet time (flow start_ns). A window is closed once the packet-time
// watermark (latest flow end_ns; fed one side at a time, the slower
// side's, see MaxSkew) is one full window past its end; closed windows go
// to the OnClose callback. Not safe for concurrent use.
type Tracker struct {
	window   int64
	maxHosts int
	open     int       // host windows open, all windows together
	wins     []*winMap // open windows (a few: one window past the watermark is kept)
	spare    []*winMap // cleared maps for the next windows
	chunks   [][]state // the states, in chunks of chunkLen: growing never copies them
	nstates  int32
	free     []int32
	// recent are the last two hosts looked up (a flood's victim, a
	// scanner): a hit skips the map. Cleared when windows close.
	recent [2]recentHost
	next   int

	sensors    []string
	sensorIDs  map[string]uint32
	lastSensor string
	lastID     uint32

	watermark int64
	nextScan  int64
	// marks are the latest flow end_ns seen on each side (SideOut,
	// SideIn) by ObserveSide calls of one side only: a detector group
	// member reads its two sides from two work queues that progress
	// independently, so the watermark is the slower side's (within
	// MaxSkew windows of the faster one), not the latest end of either.
	marks [2]int64

	// OnClose receives each window as it closes (may be nil).
	OnClose func(Window)
	// Dropped counts host windows not tracked because maxHosts were open.
	Dropped uint64
	// Sides are the sides Observe counts (0: both). A detector consumer
	// group member (detector README "Scaling") counts SideOut of the
	// flows of its originator partitions in Observe and SideIn of those of
	// its target partitions with ObserveSide.
	Sides Side
}

// Side selects the host windows a flow record is counted in: its
// originator's (SideOut) and its responder's (SideIn).
type Side uint8

const (
	SideOut Side = 1 << iota
	SideIn
)

// NewTracker returns a tracker of window-long windows (ns > 0) holding at
// most maxHosts open host windows (further hosts are counted in Dropped,
// not tracked).
func NewTracker(window int64, maxHosts int) *Tracker {
	return &Tracker{window: window, maxHosts: maxHosts,
		sensorIDs: map[string]uint32{}, lastID: ^uint32(0)}
}

// Len is the number of open host windows.
func (t *Tracker) Len() int { return t.open }

// winMap returns the map of window win, making it when create is set.
func (t *Tracker) winMap(win int64, create bool) *winMap {
	for _, w := range t.wins {
		if w.win == win {
			return w
		}
	}
	if !create {
		return nil
	}
	var w *winMap
	if n := len(t.spare); n > 0 {
		w, t.spare = t.spare[n-1], t.spare[:n-1]
		w.win = win
	} else {
		w = &winMap{win: win, m: map[hkey]int32{}}
	}
	t.wins = append(t.wins, w)
	return w
}

func (t *Tracker) winOf(ns int64) int64 {
	w := ns - ns%t.window
	if ns < 0 && ns%t.window != 0 {
		w -= t.window
	}
	return w
}

// addrKey folds a 16-byte address into the 64-bit value the distinct
// sets hold: exact for IPv4 (the upper half of a mapped address is
// constant), a fold of the two halves for IPv6 (two addresses of one host
// window that fold alike count once: a distinct count, not an identity).
func addrKey(a *[16]byte) uint64 {
	return binary.BigEndian.Uint64(a[:8]) ^ binary.BigEndian.Uint64(a[8:])
}

// sensorID interns a sensor name (one map lookup per new name in a row).
func (t *Tracker) sensorID(sensor string) uint32 {
	if t.lastID != ^uint32(0) && sensor == t.lastSensor {
		return t.lastID
	}
	id, ok := t.sensorIDs[sensor]
	if !ok {
		id = uint32(len(t.sensors))
		t.sensors = append(t.sensors, sensor)
		t.sensorIDs[sensor] = id
	}
	t.lastSensor, t.lastID = sensor, id
	return id
}

// chunkLen is the number of states per chunk.
const chunkLen = 4096

func (t *Tracker) st(i int32) *state { return &t.chunks[i/chunkLen][i%chunkLen] }

type recentHost struct {
	w *winMap
	k hkey
	i int32
}

func (t *Tracker) get(w *winMap, k hkey) *state {
	for j := range t.recent {
		if r := &t.recent[j]; r.w == w && r.k == k {
			return t.st(r.i)
		}
	}
	if i, ok := w.m[k]; ok {
		t.remember(w, k, i)
		return t.st(i)
	}
	if t.open >= t.maxHosts {
		t.Dropped++
		return nil
	}
	t.open++
	var i int32
	if n := len(t.free); n > 0 {
		i = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		if t.nstates%chunkLen == 0 {
			t.chunks = append(t.chunks, make([]state, chunkLen))
		}
		i = t.nstates
		t.nstates++
	}
	w.m[k] = i
	t.remember(w, k, i)
	return t.st(i)
}

func (t *Tracker) remember(w *winMap, k hkey, i int32) {
	t.recent[t.next] = recentHost{w, k, i}
	t.next = (t.next + 1) % len(t.recent)
}

// Observe adds one flow record (interim records carry deltas, so they add
// up; a redelivered record is counted again) to the windows of its
// originator and responder, and closes the windows the watermark has left
// behind.
func (t *Tracker) Observe(sensor string, f *pb.Flow) {
	sides := t.Sides
	if sides == 0 {
		sides = SideOut | SideIn
	}
	t.ObserveSide(sensor, f, sides)
}

// ObserveSide is Observe counting f only in the windows of sides: its
// originator's (SideOut), its responder's (SideIn) or both; the
// watermark moves either way.
func (t *Tracker) ObserveSide(sensor string, f *pb.Flow, sides Side) {
	o, ok1 := netip.AddrFromSlice(f.GetOrigAddr())
	r, ok2 := netip.AddrFromSlice(f.GetRespAddr())
	if ok1 && ok2 {
		ob, rb := o.Unmap().As16(), r.Unmap().As16()
		sid := t.sensorID(sensor)
		w := t.winMap(t.winOf(f.GetStartNs()), true)
		port := uint64(f.GetProto())<<32 | uint64(f.GetRespPort())
		if f.GetProto() == 1 || f.GetProto() == 58 {
			port = uint64(f.GetProto())<<32 | 1<<16 | uint64(f.GetIcmpType())
		}
		var s *state
		if sides&SideOut != 0 {
			s = t.get(w, hkey{ob, sid})
		}
		if s != nil {
			s.c.FlowsOut++
			if Failed(f) {
				s.c.FailedOut++
			}
			s.c.PktsOut += f.GetOrigPkts()
			s.c.BytesOut += f.GetOrigBytes()
			s.c.BytesIn += f.GetRespBytes()
			s.peersOut.add(addrKey(&rb))
			s.portsOut.add(port)
			s.c.PeersOut, s.c.PortsOut = s.peersOut.n, s.portsOut.n
		}
		s = nil
		if sides&SideIn != 0 {
			s = t.get(w, hkey{rb, sid})
		}
		if s != nil {
			s.c.FlowsIn++
			s.c.PktsOut += f.GetRespPkts()
			s.c.BytesOut += f.GetRespBytes()
			s.c.BytesIn += f.GetOrigBytes()
			s.peersIn.add(addrKey(&ob))
			s.c.PeersIn = s.peersIn.n
		}
	}
	if e := t.mark(f.GetEndNs(), sides); e > t.watermark {
		t.watermark = e
		if t.nextScan == 0 {
			t.nextScan = t.winOf(e) + 2*t.window
		}
		if e >= t.nextScan {
			t.close(t.watermark - t.window)
			t.nextScan = t.winOf(e) + t.window
		}
	}
}

// MaxSkew is how many windows one side's watermark may run ahead of the
// other's in a tracker fed one side at a time (a consumer group member):
// past it the slower side's windows close anyway (a side whose partitions
// went quiet does not hold every window open).
const MaxSkew = 5

// mark records end e of a flow counted on sides and returns the
// watermark candidate: e itself when both sides are counted together
// (Observe of one instance), else the slower side's latest end, at least
// the faster side's less MaxSkew windows (a side not seen yet counts as
// at 0: it holds the other back by MaxSkew windows).
func (t *Tracker) mark(e int64, sides Side) int64 {
	if sides == SideOut|SideIn || sides == 0 {
		t.marks[0] = max(t.marks[0], e)
		t.marks[1] = max(t.marks[1], e)
		return e
	}
	i := 0
	if sides == SideIn {
		i = 1
	}
	t.marks[i] = max(t.marks[i], e)
	return max(min(t.marks[0], t.marks[1]), max(t.marks[0], t.marks[1])-MaxSkew*t.window)
}

// close closes every window that ended at or before limit.
func (t *Tracker) close(limit int64) {
	t.recent = [2]recentHost{}
	keep := t.wins[:0]
	for _, w := range t.wins {
		if w.win+t.window > limit {
			keep = append(keep, w)
			continue
		}
		for k, i := range w.m {
			s := t.st(i)
			if t.OnClose != nil {
				t.OnClose(Window{Sensor: t.sensors[k.sensor], Addr: netip.AddrFrom16(k.addr).Unmap(), Start: w.win, Counts: s.c})
			}
			s.c = Counts{}
			s.peersOut.reset()
			s.portsOut.reset()
			s.peersIn.reset()
			t.free = append(t.free, i)
		}
		t.open -= len(w.m)
		clear(w.m)
		t.spare = append(t.spare, w)
	}
	clear(t.wins[len(keep):])
	t.wins = keep
}

// Flush closes every open window (end of input).
func (t *Tracker) Flush() { t.close(math.MaxInt64) }

// Current returns the counts so far of addr's window at packet time ns.
func (t *Tracker) Current(sensor string, addr netip.Addr, ns int64) (Window, bool) {
	id, ok := t.sensorIDs[sensor]
	if !ok {
		return Window{}, false
	}
	w := t.winMap(t.winOf(ns), false)
	if w == nil {
		return Window{}, false
	}
	i, ok := w.m[hkey{addr.Unmap().As16(), id}]
	if !ok {
		return Window{}, false
	}
	return Window{Sensor: sensor, Addr: addr.Unmap(), Start: w.win, Counts: t.st(i).c}, true
}
