// Package fragment is the agent stage between decode and publish that gives
// IP fragments the ports of their datagram's first fragment (DESIGN.md,
// "Accounting"): a non-first fragment seen before its first fragment is held
// until the first arrives, Hold of packet time passes, or Flush.
package fragment

import (
	"time"

	"netwatch/agent/internal/decode"
)

// key names one IP datagram: addresses, IP id and protocol, and where it
// was seen (both 802.1Q IDs, the tunnel and its VNI/key/session): two
// VLANs or VXLAN segments with overlapping addresses may use the same IP
// id at once (QA of issue 3: their fragments swapped ports).
type key struct {
	src, dst        [16]byte
	id              uint32
	proto           uint8
	v6              bool
	vlan, innerVLAN uint16
	tunnel          uint8
	tunnelID        uint32
}

type first struct {
	sport, dport uint16
	ts           int64
}

type held struct {
	k key
	p decode.Packet
}

// Table maps (src, dst, proto, IP id, VLANs, tunnel) to the ports of a
// first fragment.
// The zero value is not usable: call New. Not safe for concurrent use.
type Table struct {
	Hold    time.Duration // how long (packet time) a non-first fragment waits for its first; 1 s by New
	Keep    time.Duration // how long (packet time) a first fragment's ports are remembered; 60 s by New
	MaxKeys int           // bound on remembered datagrams; 65536 by New

	firsts  map[key]first
	order   []key // insertion order of firsts, for expiry
	pending []held
}

// New returns a Table with the default bounds.
func New() *Table {
	return &Table{Hold: time.Second, Keep: time.Minute, MaxKeys: 65536, firsts: map[key]first{}}
}

func keyOf(p *decode.Packet) key {
	return key{src: p.Src, dst: p.Dst, id: p.IPID, proto: p.Proto, v6: p.AddrLen == 16,
		vlan: p.VLAN, innerVLAN: p.InnerVLAN, tunnel: p.Tunnel, tunnelID: p.TunnelID}
}

// Process passes p to emit, now or later. emit must not keep p.
func (t *Table) Process(p *decode.Packet, emit func(*decode.Packet)) {
	if len(t.pending) > 0 {
		t.expire(p.TsNs, emit)
	}
	if p.Kind != decode.KindIP || !p.Fragment {
		emit(p)
		return
	}
	k := keyOf(p)
	if p.FragOffset == 0 {
		if _, ok := t.firsts[k]; !ok {
			t.order = append(t.order, k)
		}
		t.firsts[k] = first{sport: p.SrcPort, dport: p.DstPort, ts: p.TsNs}
		t.trim(p.TsNs)
		emit(p)
		// release the fragments that waited for this one
		j := 0
		for i := range t.pending {
			h := &t.pending[i]
			if h.k == k {
				h.p.SrcPort, h.p.DstPort = p.SrcPort, p.DstPort
				emit(&h.p)
				continue
			}
			t.pending[j] = t.pending[i]
			j++
		}
		clear(t.pending[j:])
		t.pending = t.pending[:j]
		return
	}
	if f, ok := t.firsts[k]; ok {
		p.SrcPort, p.DstPort = f.sport, f.dport
		emit(p)
		return
	}
	h := held{k: k, p: *p}
	h.p.Payload = nil
	t.pending = append(t.pending, h)
}

// Expire emits, without ports, the held non-first fragments that waited
// more than Hold for their first fragment at time now (Unix ns). Process
// does this for every packet; a live capture's idle read calls it with
// the wall clock (live packet times are wall clock), so that a lone
// fragment on a quiet link is not held until the next IP packet arrives
// (QA of issue 3: it was held 20 s and more).
func (t *Table) Expire(now int64, emit func(*decode.Packet)) {
	if len(t.pending) > 0 {
		t.expire(now, emit)
	}
}

// expire emits held fragments older than Hold at packet time now, ports 0.
func (t *Table) expire(now int64, emit func(*decode.Packet)) {
	n := 0
	for n < len(t.pending) && now-t.pending[n].p.TsNs > int64(t.Hold) {
		emit(&t.pending[n].p)
		n++
	}
	if n > 0 {
		t.pending = append(t.pending[:0], t.pending[n:]...)
	}
}

func (t *Table) trim(now int64) {
	n := 0
	for n < len(t.order) && (len(t.order)-n > t.MaxKeys || now-t.firsts[t.order[n]].ts > int64(t.Keep)) {
		if f, ok := t.firsts[t.order[n]]; ok && (len(t.order)-n > t.MaxKeys || now-f.ts > int64(t.Keep)) {
			delete(t.firsts, t.order[n])
		}
		n++
	}
	if n > 0 {
		t.order = append(t.order[:0], t.order[n:]...)
	}
}

// Flush emits every held fragment (ports 0): call it at the end of input.
func (t *Table) Flush(emit func(*decode.Packet)) {
	for i := range t.pending {
		emit(&t.pending[i].p)
	}
	clear(t.pending)
	t.pending = t.pending[:0]
}

// Pending is the number of held fragments.
func (t *Table) Pending() int { return len(t.pending) }
