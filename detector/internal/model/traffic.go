package model

import (
	"hash/maphash"

	"netwatch/schema/pb"
)

// TrafficFeatures are the 19 traffic columns of NSL-KDD (KDD Cup 1999),
// computed over the connections seen before the current one, the current
// one included (so a count is at least 1 and no rate divides by 0).
// Definitions: the KDD Cup 1999 task description ("traffic features
// computed using a two-second time window" and the "dst_host" features
// over a window of connections) and Lee & Stolfo, "A framework for
// constructing features and models for intrusion detection systems", ACM
// TISSEC 3(4), 2000, section 4.
//
// "Same host" is the same responder address, "same service" the same
// NSL-KDD service (Extract's Service: the responder port or ICMP type
// mapped to its name, so all unlisted ports are one "private" service, as
// in the data). A SYN error is a flag of S0, S1, S2, S3 or SH and a REJ
// error one of REJ, RSTO, RSTOS0 or RSTR: that is what the NSL-KDD records
// say (KDDTrain+_20Percent's records with count 1, whose own flag alone
// sets serror_rate and rerror_rate, give exactly these two sets).
type TrafficFeatures struct {
	// Time-based: the connections that started in the 2 s up to this one's start.
	Count           float64 `json:"count"`              // connections to the same host
	SrvCount        float64 `json:"srv_count"`          // connections to the same service
	SerrorRate      float64 `json:"serror_rate"`        // share of Count with a SYN error
	SrvSerrorRate   float64 `json:"srv_serror_rate"`    // share of SrvCount with a SYN error
	RerrorRate      float64 `json:"rerror_rate"`        // share of Count with a REJ error
	SrvRerrorRate   float64 `json:"srv_rerror_rate"`    // share of SrvCount with a REJ error
	SameSrvRate     float64 `json:"same_srv_rate"`      // share of Count to the same service
	DiffSrvRate     float64 `json:"diff_srv_rate"`      // share of Count to another service
	SrvDiffHostRate float64 `json:"srv_diff_host_rate"` // share of SrvCount to another host

	// Host-based: the last HostWindow connections (any host).
	DstHostCount           float64 `json:"dst_host_count"`              // connections to the same host
	DstHostSrvCount        float64 `json:"dst_host_srv_count"`          // connections to the same service
	DstHostSameSrvRate     float64 `json:"dst_host_same_srv_rate"`      // share of DstHostCount to the same service
	DstHostDiffSrvRate     float64 `json:"dst_host_diff_srv_rate"`      // share of DstHostCount to another service
	DstHostSameSrcPortRate float64 `json:"dst_host_same_src_port_rate"` // share of DstHostCount from the same originator port
	DstHostSrvDiffHostRate float64 `json:"dst_host_srv_diff_host_rate"` // share of DstHostSrvCount to another host
	DstHostSerrorRate      float64 `json:"dst_host_serror_rate"`        // share of DstHostCount with a SYN error
	DstHostSrvSerrorRate   float64 `json:"dst_host_srv_serror_rate"`    // share of DstHostSrvCount with a SYN error
	DstHostRerrorRate      float64 `json:"dst_host_rerror_rate"`        // share of DstHostCount with a REJ error
	DstHostSrvRerrorRate   float64 `json:"dst_host_srv_rerror_rate"`    // share of DstHostSrvCount with a REJ error
}

// Window sizes of Traffic.
const (
	// TimeWindowNs is the time-based window: 2 s (KDD Cup 1999).
	TimeWindowNs = int64(2e9)
	// HostWindow is the host-based window: the last 100 connections
	// (Lee & Stolfo 2000). NSL-KDD's dst_host_count reaches 255, so the
	// data's own window was longer: a tree split above 100 is never taken
	// on netwatch's flows.
	HostWindow = 100
	// MaxCount caps Count and SrvCount as the KDD data does (511): the
	// time-based window holds the last MaxCount-1 connections at most
	// (bounded memory during a flood).
	MaxCount = 511
)

// conn is what Traffic keeps of one connection.
type conn struct {
	start      int64  // record start, ns
	dst        uint64 // hash of the responder address
	srcPort    uint32
	service    uint16 // index in Services
	serr, rerr bool
}

// tally counts connections and their SYN and REJ errors.
type tally struct{ n, serr, rerr int32 }

func (t *tally) add(c *conn, d int32) {
	t.n += d
	if c.serr {
		t.serr += d
	}
	if c.rerr {
		t.rerr += d
	}
}

// table is an open-addressing hash table (linear probing, backward-shift
// deletion; Knuth, TAOCP vol. 3, 6.4, Algorithm R) from uint64 keys to
// tallies, of fixed size: it never allocates after newTable. A key whose
// tally drops to zero is deleted, so it holds at most as many keys as its
// window holds connections; its size is at least four times that.
type table struct {
	keys  []uint64
	vals  []tally
	used  []bool
	shift uint // 64 - log2(size)
}

func newTable(capacity int) table {
	bits := uint(2)
	for 1<<bits < 4*capacity {
		bits++
	}
	return table{keys: make([]uint64, 1<<bits), vals: make([]tally, 1<<bits), used: make([]bool, 1<<bits), shift: 64 - bits}
}

// home is k's first slot (Fibonacci hashing).
func (t *table) home(k uint64) int { return int((k * 0x9e3779b97f4a7c15) >> t.shift) }

func (t *table) find(k uint64) int {
	mask := len(t.keys) - 1
	i := t.home(k)
	for t.used[i] && t.keys[i] != k {
		i = (i + 1) & mask
	}
	return i
}

func (t *table) get(k uint64) tally {
	if i := t.find(k); t.used[i] {
		return t.vals[i]
	}
	return tally{}
}

// add adds d times c to k's tally, deleting k when its count drops to 0.
func (t *table) add(k uint64, c *conn, d int32) {
	i := t.find(k)
	if !t.used[i] {
		t.used[i], t.keys[i], t.vals[i] = true, k, tally{}
	}
	if t.vals[i].add(c, d); t.vals[i].n != 0 {
		return
	}
	mask := len(t.keys) - 1
	for j := i; ; {
		j = (j + 1) & mask
		if !t.used[j] {
			break
		}
		h := t.home(t.keys[j])
		if i <= j && i < h && h <= j || i > j && (i < h || h <= j) {
			continue // j's entry is still reachable from its home
		}
		t.keys[i], t.vals[i] = t.keys[j], t.vals[j]
		i = j
	}
	t.used[i] = false
}

// window is a FIFO of connections (a ring of fixed size) with the tallies
// the features need, kept up to date as connections enter and leave:
// per responder, per service, per (responder, service) and per
// (responder, originator port).
type window struct {
	ring    []conn
	head, n int
	dst     table
	srv     []tally // by service index
	dstSrv  table
	dstPort table
}

func newWindow(size int) window {
	return window{ring: make([]conn, size), dst: newTable(size), srv: make([]tally, len(Services)),
		dstSrv: newTable(size), dstPort: newTable(size)}
}

// Keys of the pair tallies: the responder hash mixed with the service or
// the port (a collision merges two pairs' counts: about 2^-64 per pair).
func srvKey(c *conn) uint64  { return c.dst ^ (uint64(c.service)+1)*0x9e3779b97f4a7c15 }
func portKey(c *conn) uint64 { return c.dst ^ (uint64(c.srcPort)+1)*0xc2b2ae3d27d4eb4f }

func (w *window) tally(c *conn, d int32) {
	w.dst.add(c.dst, c, d)
	w.srv[c.service].add(c, d)
	w.dstSrv.add(srvKey(c), c, d)
	w.dstPort.add(portKey(c), c, d)
}

// push adds c, dropping the oldest connection when the ring is full.
func (w *window) push(c conn) {
	if w.n == len(w.ring) {
		w.pop()
	}
	w.ring[(w.head+w.n)%len(w.ring)] = c
	w.n++
	w.tally(&c, 1)
}

// pop drops the oldest connection.
func (w *window) pop() {
	w.tally(&w.ring[w.head], -1)
	w.head = (w.head + 1) % len(w.ring)
	w.n--
}

// Traffic computes the traffic features of flows from the connections it
// has seen before, in the order it sees them. A detector sees flow records
// roughly in the order their flows end, while the time-based window is by
// record start (KDD Cup 1999: "the past two seconds"): a connection leaves
// the time window, in the order it arrived, once its start is more than
// TimeWindowNs before the start of the record being scored; so a record
// arriving late (a long flow) is scored against the connections that
// arrived before it and are still in the window, not exactly those that
// started in its past 2 s. The time window holds at most MaxCount-1
// connections (the oldest leave first); the host window the last
// HostWindow-1. Only a flow's first record (RecordIndex 0) enters the
// windows; interim and final records of a long flow are scored against
// them without being counted again.
//
// A detector sees only its share of the flows when several run (FLOWS is
// partitioned among them), so its counts are of that share only.
//
// The tallies are kept as connections enter and leave, so a record costs a
// few hash-table operations whatever the windows hold. Memory is fixed at
// NewTraffic (two rings and tables of 2,048 and 512 slots: about 150 KiB)
// and Observe does not allocate. A Traffic is not safe for concurrent use.
type Traffic struct {
	time, host window
	seed       maphash.Seed
}

// NewTraffic returns an empty window.
func NewTraffic() *Traffic {
	return &Traffic{time: newWindow(MaxCount - 1), host: newWindow(HostWindow - 1), seed: maphash.MakeSeed()}
}

// serviceIndex maps a Services name to its index (built with Services, in
// features.go's init).
var serviceIndex map[string]uint16

func synError(flag string) bool {
	switch flag {
	case "S0", "S1", "S2", "S3", "SH":
		return true
	}
	return false
}

func rejError(flag string) bool {
	switch flag {
	case "REJ", "RSTO", "RSTOS0", "RSTR":
		return true
	}
	return false
}

// Observe returns the Features of f (Extract plus the traffic columns over
// the connections seen so far and f itself) and adds f to the windows when
// it is a flow's first record.
func (t *Traffic) Observe(f *pb.Flow) Features {
	x := Extract(f)
	c := conn{start: f.GetStartNs(), dst: maphash.Bytes(t.seed, f.GetRespAddr()), srcPort: f.GetOrigPort(),
		service: serviceIndex[x.Service], serr: synError(x.Flag), rerr: rejError(x.Flag)}
	for t.time.n > 0 && c.start-t.time.ring[t.time.head].start > TimeWindowNs {
		t.time.pop()
	}
	x.TrafficFeatures = t.features(&c)
	if f.GetRecordIndex() == 0 {
		t.time.push(c)
		t.host.push(c)
	}
	return x
}

// features computes the traffic columns of c from the windows' tallies and
// c itself (which counts in every window).
func (t *Traffic) features(c *conn) TrafficFeatures {
	var self tally
	self.add(c, 1)
	r := func(a, b int32) float64 { return float64(a) / float64(b) } // b >= 1: the current connection

	hostT, srvT := t.time.dst.get(c.dst), t.time.srv[c.service]
	count, srv := hostT.n+1, srvT.n+1
	sameSrv := t.time.dstSrv.get(srvKey(c)).n + 1
	hHost, hSrvT := t.host.dst.get(c.dst), t.host.srv[c.service]
	hCount, hSrv := hHost.n+1, hSrvT.n+1
	hSameSrv := t.host.dstSrv.get(srvKey(c)).n + 1
	hSamePort := t.host.dstPort.get(portKey(c)).n + 1
	return TrafficFeatures{
		Count: float64(count), SrvCount: float64(srv),
		SerrorRate: r(hostT.serr+self.serr, count), SrvSerrorRate: r(srvT.serr+self.serr, srv),
		RerrorRate: r(hostT.rerr+self.rerr, count), SrvRerrorRate: r(srvT.rerr+self.rerr, srv),
		SameSrvRate: r(sameSrv, count), DiffSrvRate: r(count-sameSrv, count), SrvDiffHostRate: r(srv-sameSrv, srv),
		DstHostCount: float64(hCount), DstHostSrvCount: float64(hSrv),
		DstHostSameSrvRate: r(hSameSrv, hCount), DstHostDiffSrvRate: r(hCount-hSameSrv, hCount),
		DstHostSameSrcPortRate: r(hSamePort, hCount), DstHostSrvDiffHostRate: r(hSrv-hSameSrv, hSrv),
		DstHostSerrorRate: r(hHost.serr+self.serr, hCount), DstHostSrvSerrorRate: r(hSrvT.serr+self.serr, hSrv),
		DstHostRerrorRate: r(hHost.rerr+self.rerr, hCount), DstHostSrvRerrorRate: r(hSrvT.rerr+self.rerr, hSrv),
	}
}
