// Package hostmodel is the detector's unsupervised per-host anomaly model:
// per (sensor, host, window) behaviour counts computed from flow records
// (Tracker), golearn's isolation forest fitted on the windows of benign
// captures (Forest), and a threshold at a quantile of the benign scores.
// Its score annotates alerts (evidence "host_anomaly"), the detector's
// /hosts endpoint and metrics; it never raises an alert on its own.
package hostmodel

import (
	"hash/maphash"
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

type key struct {
	sensor string
	addr   netip.Addr
	win    int64
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
// watermark (latest flow end_ns) is one full window past its end; closed
// windows go to the OnClose callback. Not safe for concurrent use.
type Tracker struct {
	window   int64
	maxHosts int
	m        map[key]*state
	free     []*state
	seed     maphash.Seed

	watermark int64
	nextScan  int64

	// OnClose receives each window as it closes (may be nil).
	OnClose func(Window)
	// Dropped counts host windows not tracked because maxHosts were open.
	Dropped uint64
}

// NewTracker returns a tracker of window-long windows (ns > 0) holding at
// most maxHosts open host windows (further hosts are counted in Dropped,
// not tracked).
func NewTracker(window int64, maxHosts int) *Tracker {
	return &Tracker{window: window, maxHosts: maxHosts, m: map[key]*state{}, seed: maphash.MakeSeed()}
}

// Len is the number of open host windows.
func (t *Tracker) Len() int { return len(t.m) }

func (t *Tracker) winOf(ns int64) int64 {
	w := ns - ns%t.window
	if ns < 0 && ns%t.window != 0 {
		w -= t.window
	}
	return w
}

func (t *Tracker) hashAddr(a netip.Addr) uint64 {
	b := a.As16()
	return maphash.Bytes(t.seed, b[:])
}

func (t *Tracker) get(sensor string, a netip.Addr, win int64) *state {
	k := key{sensor, a, win}
	s := t.m[k]
	if s != nil {
		return s
	}
	if len(t.m) >= t.maxHosts {
		t.Dropped++
		return nil
	}
	if n := len(t.free); n > 0 {
		s = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		s = &state{}
	}
	t.m[k] = s
	return s
}

// Observe adds one flow record (interim records carry deltas, so they add
// up; a redelivered record is counted again) to the windows of its
// originator and responder, and closes the windows the watermark has left
// behind.
func (t *Tracker) Observe(sensor string, f *pb.Flow) {
	o, ok1 := netip.AddrFromSlice(f.GetOrigAddr())
	r, ok2 := netip.AddrFromSlice(f.GetRespAddr())
	if ok1 && ok2 {
		o, r = o.Unmap(), r.Unmap()
		win := t.winOf(f.GetStartNs())
		port := uint64(f.GetProto())<<32 | uint64(f.GetRespPort())
		if f.GetProto() == 1 || f.GetProto() == 58 {
			port = uint64(f.GetProto())<<32 | 1<<16 | uint64(f.GetIcmpType())
		}
		if s := t.get(sensor, o, win); s != nil {
			s.c.FlowsOut++
			if Failed(f) {
				s.c.FailedOut++
			}
			s.c.PktsOut += f.GetOrigPkts()
			s.c.BytesOut += f.GetOrigBytes()
			s.c.BytesIn += f.GetRespBytes()
			s.peersOut.add(t.hashAddr(r))
			s.portsOut.add(port)
			s.c.PeersOut, s.c.PortsOut = s.peersOut.n, s.portsOut.n
		}
		if s := t.get(sensor, r, win); s != nil {
			s.c.FlowsIn++
			s.c.PktsOut += f.GetRespPkts()
			s.c.BytesOut += f.GetRespBytes()
			s.c.BytesIn += f.GetOrigBytes()
			s.peersIn.add(t.hashAddr(o))
			s.c.PeersIn = s.peersIn.n
		}
	}
	if e := f.GetEndNs(); e > t.watermark {
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

// close closes every window that ended at or before limit.
func (t *Tracker) close(limit int64) {
	for k, s := range t.m {
		if k.win+t.window > limit {
			continue
		}
		if t.OnClose != nil {
			t.OnClose(Window{Sensor: k.sensor, Addr: k.addr, Start: k.win, Counts: s.c})
		}
		delete(t.m, k)
		s.c = Counts{}
		s.peersOut.reset()
		s.portsOut.reset()
		s.peersIn.reset()
		if len(t.free) < 1024 {
			t.free = append(t.free, s)
		}
	}
}

// Flush closes every open window (end of input).
func (t *Tracker) Flush() { t.close(math.MaxInt64) }

// Current returns the counts so far of addr's window at packet time ns.
func (t *Tracker) Current(sensor string, addr netip.Addr, ns int64) (Window, bool) {
	win := t.winOf(ns)
	s := t.m[key{sensor, addr.Unmap(), win}]
	if s == nil {
		return Window{}, false
	}
	return Window{Sensor: sensor, Addr: addr.Unmap(), Start: win, Counts: s.c}, true
}
