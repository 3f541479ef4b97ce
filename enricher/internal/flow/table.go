package flow

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"netwatch/enricher/internal/geo"
	"netwatch/enricher/internal/names"
	"netwatch/schema/communityid"
	"netwatch/schema/pb"
)

// TCP flag bits of pb.PacketSummary.TcpFlags.
const (
	flagFIN = 0x01
	flagSYN = 0x02
	flagRST = 0x04
	flagACK = 0x10
)

// Ref is the input message a packet came from. The table calls Retain once
// for every flow record that holds packets from it, and hands it back in
// that Record's Refs, so the caller can release (and finally acknowledge)
// the message once the record is published.
type Ref interface{ Retain() }

// Config tunes a Table. Timeouts are in packet time.
type Config struct {
	Sensor      string
	IdleTCP     time.Duration  // idle timeout of TCP flows; Zeek tcp_inactivity_timeout (5 min)
	IdleUDP     time.Duration  // UDP; Zeek udp_inactivity_timeout (1 min)
	IdleICMP    time.Duration  // ICMP and ICMPv6; Zeek icmp_inactivity_timeout (1 min)
	IdleOther   time.Duration  // other IP protocols (1 min)
	Active      time.Duration  // active timeout: a longer record is cut into interim records (IPFIX, RFC 5470 §5.1.1); 0 disables
	CloseLinger time.Duration  // how long a TCP flow stays after FIN both ways or RST to absorb the last ACKs (Zeek tcp_close_delay); 0 ends it at once
	Seed        uint16         // Community ID seed
	LocalNets   []netip.Prefix // local networks for Flow.Direction; none leaves it empty
	// Features fills pb.Flow.Features (a map of derived numbers). Off by
	// default: the map costs more than the rest of the record to build and
	// to marshal, and the detector computes its features from the flow's
	// fields (detector/internal/model.Extract), not from this map.
	Features bool
	// Geo fills the orig_/resp_ country, city, ASN and AS organisation
	// fields; nil leaves them empty.
	Geo *geo.DB
	// Names is the sensor's passive DNS cache: the table learns from DNS
	// responses into it and names the flows' addresses (orig_name,
	// resp_name) from it; nil does neither. Tables of one sensor share it.
	Names *names.Cache
	// Limit bounds the open flows of every table that shares it; nil is
	// no bound.
	Limit *Limit
	// Checkpoints attaches a Checkpoint to every interim record and to
	// every final record of a flow that had interim records or packets in
	// more than one input message (see Resume).
	Checkpoints bool
	// Epoch identifies the input whose positions checkpoints refer to (the
	// stream's creation time, Unix ns); it is copied into FlowState.Epoch.
	Epoch int64
}

// Limit is a bound on open flows shared by tables (from one goroutine: it
// is not safe for concurrent use). A table that would open a flow while
// Open ≥ Max first ends its own least recently active flow (END_IDLE, counted
// in Table.Evicted), so the open flows never exceed Max plus one per
// table that had none to end.
type Limit struct {
	Max  int // at most this many open flows; ≤ 0 is no bound
	Open int // open flows now
}

// DefaultConfig returns the defaults documented in README.md.
func DefaultConfig() Config {
	return Config{IdleTCP: 5 * time.Minute, IdleUDP: time.Minute, IdleICMP: time.Minute, IdleOther: time.Minute,
		Active: 5 * time.Minute, CloseLinger: 2 * time.Second}
}

// Validate reports non-positive idle timeouts and negative durations.
func (c *Config) Validate() error {
	var errs []error
	for name, d := range map[string]time.Duration{"tcp": c.IdleTCP, "udp": c.IdleUDP, "icmp": c.IdleICMP, "other": c.IdleOther} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("-flow.idle-timeout.%s %s: must be positive", name, d))
		}
	}
	if c.Active < 0 {
		errs = append(errs, fmt.Errorf("-flow.active-timeout %s: must not be negative", c.Active))
	}
	if c.CloseLinger < 0 {
		errs = append(errs, fmt.Errorf("-flow.close-linger %s: must not be negative", c.CloseLinger))
	}
	return errors.Join(errs...)
}

// Record is one emitted flow record and the input messages it holds.
type Record struct {
	Flow *pb.Flow
	Refs []Ref
	// Checkpoint (with Config.Checkpoints) is the flow's state to store
	// once the record is published and before its Refs are released; nil
	// when a replay rebuilds the flow whole.
	Checkpoint *Checkpoint
}

// counts are one direction's counters of the current record.
type counts struct {
	pkts, ipBytes, bytes uint64
	flags                uint32
}

type entry struct {
	key       Key
	origIsA   bool
	guessed   bool
	flipped   bool // the first packet came from the responder
	flowStart int64
	recStart  int64
	recLast   int64
	last      int64
	recIndex  uint32
	c         [2]counts // 0 originator, 1 responder; since the previous record
	allFlags  [2]uint32 // OR of TCP flags over the whole flow
	letters   [2]uint8  // history letters seen, per direction
	hist      [14]byte  // '^' and at most 6 letters per direction
	histLen   uint8
	icmpType  uint8
	icmpCode  uint8
	icmpOrig  bool // icmpType/Code come from an originator packet
	app       string
	server    string
	ja3, ja4  string          // the originator's first JA3/JA4
	userAgent string          // the originator's first HTTP User-Agent
	dnsQtype  uint16          // QTYPE of the first DNS question seen
	dnsRcode  uint8           // RCODE of the first DNS response seen
	dnsResp   bool            // a DNS response was seen
	cidSum    [sha1.Size]byte // Community ID digest of the first packet
	cid       string          // its string form, made at the first record
	direction string
	respAny   bool // the responder sent a packet
	closing   bool
	closeAt   int64
	reason    pb.EndReason
	refs      []Ref
	firstSeq  uint64 // input message of the flow's first packet
	lastPos   Pos    // position of the flow's last packet
	st        *stats // per-record distributions, only with Config.Features
	class     int
	idle      links // in Table.idle[class]
	close     links // in Table.closing while closing
}

// Table is the flow table of one (sensor, bucket). It is not safe for
// concurrent use. Records are passed to the emit function in a
// deterministic order given the packet sequence.
type Table struct {
	cfg      Config
	idleNs   [4]int64
	emit     func(Record)
	flows    map[Key]*entry
	idle     [4]list // per protocol class, in order of last packet
	closing  list    // TCP flows after FIN both ways or RST, by close time
	clock    int64
	free     []*entry           // ended entries for reuse
	buf      []byte             // scratch for ids
	hists    map[string]string  // interned history strings
	resume   map[Key]*FlowState // checkpoints of a replay (Resume)
	pktMax   int64              // latest packet time seen (the clock may be ahead of it after Advance)
	evicting bool               // a flow is ended by the Limit

	Skipped     uint64 // packets without usable addresses
	Backwards   uint64 // packets older than the clock (accounted with their own time)
	Evicted     uint64 // flows ended early because the Limit was reached
	Replayed    uint64 // packets skipped because a checkpoint says they are in published records
	Checkpoints uint64 // checkpoints made
}

const (
	classTCP = iota
	classUDP
	classICMP
	classOther
)

// NewTable returns an empty table; emit receives every record and owns it.
func NewTable(cfg Config, emit func(Record)) *Table {
	t := &Table{cfg: cfg, emit: emit, flows: make(map[Key]*entry), hists: map[string]string{}}
	t.idleNs = [4]int64{int64(cfg.IdleTCP), int64(cfg.IdleUDP), int64(cfg.IdleICMP), int64(cfg.IdleOther)}
	for i := range t.idle {
		t.idle[i].off = idleLinks
	}
	t.closing.off = closeLinks
	return t
}

// Len is the number of open flows.
func (t *Table) Len() int { return len(t.flows) }

// Clock is the table's packet-time clock, Unix ns: the latest packet time
// seen or the time given to Advance; 0 before the first packet.
func (t *Table) Clock() int64 { return t.clock }

func classOf(proto uint8) int {
	switch proto {
	case 6:
		return classTCP
	case 17:
		return classUDP
	case 1, 58:
		return classICMP
	}
	return classOther
}

// Add accounts one packet. ref (may be nil) is the message it came from.
// Packets older than the clock are accounted with their own times but do
// not move the clock back.
func (t *Table) Add(p *pb.PacketSummary, ref Ref) { t.AddAt(p, ref, Pos{}) }

// AddAt is Add of the packet at pos in the bucket's input (for checkpoints
// and Resume).
func (t *Table) AddAt(p *pb.PacketSummary, ref Ref, pos Pos) {
	k, srcIsA, ok := keyOf(p)
	if !ok {
		t.Skipped++
		return
	}
	ts := p.TsNs
	if ts < t.clock {
		t.Backwards++
	}
	if ts > t.pktMax {
		t.pktMax = ts
	}
	t.Advance(ts)
	if t.cfg.Names != nil && p.DnsResponse {
		t.cfg.Names.Learn(p)
	}
	e := t.flows[k]
	if e == nil && t.resume != nil {
		if st := t.resume[k]; st != nil {
			if pos.Less(st.Pos) || st.Done && pos == st.Pos {
				t.Replayed++ // in a published record
				return
			}
			delete(t.resume, k)
			if !st.Done {
				e = t.restore(st)
			}
		}
	}
	flags := p.TcpFlags
	if e != nil && e.closing && k.Proto == 6 && flags&(flagSYN|flagACK) == flagSYN {
		// A new connection on the same ports after the old one closed.
		t.finish(e, e.reason)
		e = nil
	}
	if e != nil && t.cfg.Active > 0 && ts-e.recStart >= int64(t.cfg.Active) {
		var cp *Checkpoint
		if t.cfg.Checkpoints {
			// The state the next record starts from: this packet opens it.
			next := *e
			next.recIndex++
			next.recStart = ts
			cp = t.checkpoint(&next, pos, false)
		}
		t.emitRecord(e, false, pb.EndReason_END_ACTIVE, cp)
		e.recStart, e.recLast = ts, ts
	}
	if e == nil {
		e = t.newEntry(k, srcIsA, p)
		e.firstSeq = pos.Seq
	}
	e.lastPos = pos
	d := 0
	if srcIsA != e.origIsA {
		d = 1
	}
	if d == 1 {
		e.respAny = true
	}
	c := &e.c[d]
	c.pkts++
	c.ipBytes += uint64(p.IpBytes)
	c.bytes += uint64(p.PayloadBytes)
	if k.Proto == 6 {
		c.flags |= flags
		e.allFlags[d] |= flags
	}
	e.history(d, k.Proto, flags, p.PayloadBytes)
	if e.st != nil {
		e.st.add(d, p, ts)
	}
	if ts > e.last {
		e.last = ts
	}
	if ts > e.recLast {
		e.recLast = ts
	}
	if ts < e.recStart { // time went backwards: the record (and flow) starts at its earliest packet
		e.recStart = ts
		if e.recIndex == 0 {
			e.flowStart = ts
		}
	}
	if (k.Proto == 1 || k.Proto == 58) && d == 0 && !e.icmpOrig {
		e.icmpType, e.icmpCode, e.icmpOrig = uint8(p.IcmpType), uint8(p.IcmpCode), true
	}
	e.l7(p)
	if d == 0 && (p.Ja3 != "" || p.Ja4 != "" || p.HttpUserAgent != "") {
		e.client(p)
	}
	if ref != nil && (len(e.refs) == 0 || e.refs[len(e.refs)-1] != ref) {
		ref.Retain()
		e.refs = append(e.refs, ref)
	}
	t.idle[e.class].moveToBack(e)
	if k.Proto == 6 && !e.closing {
		switch {
		case flags&flagRST != 0:
			e.closing, e.reason = true, pb.EndReason_END_RST
		case e.allFlags[0]&flagFIN != 0 && e.allFlags[1]&flagFIN != 0:
			e.closing, e.reason = true, pb.EndReason_END_FIN
		}
		if e.closing {
			e.closeAt = ts
			if t.cfg.CloseLinger == 0 {
				t.finish(e, e.reason)
				return
			}
			t.closing.pushBack(e)
		}
	}
}

func (t *Table) newEntry(k Key, srcIsA bool, p *pb.PacketSummary) *entry {
	ts := p.TsNs
	if l := t.cfg.Limit; l != nil {
		if l.Max > 0 && l.Open >= l.Max && len(t.flows) > 0 {
			t.evict()
		}
		l.Open++
	}
	var e *entry
	if n := len(t.free); n > 0 {
		e = t.free[n-1]
		t.free = t.free[:n-1]
	} else {
		e = new(entry)
	}
	*e = entry{key: k, flowStart: ts, recStart: ts, recLast: ts, last: ts, class: classOf(k.Proto)}
	if t.cfg.Features {
		e.st = new(stats)
	}
	srcOrig, guessed := originator(k, p, t.cfg.LocalNets)
	e.origIsA = srcIsA == srcOrig
	e.guessed = guessed
	e.flipped = !srcOrig
	e.icmpType, e.icmpCode, e.icmpOrig = uint8(p.IcmpType), uint8(p.IcmpCode), srcOrig
	n := k.addrLen()
	if k.Proto == 1 || k.Proto == 58 {
		e.cidSum = communityid.PacketSum(t.cfg.Seed, k.Proto, p.SrcAddr, p.DstAddr, 0, 0, uint8(p.IcmpType), uint8(p.IcmpCode))
	} else {
		e.cidSum = communityid.Sum(t.cfg.Seed, k.Proto, k.A[:n], k.B[:n], k.APort, k.BPort, false)
	}
	if len(t.cfg.LocalNets) > 0 {
		oa, ra := e.addrs()
		e.direction = direction(t.cfg.LocalNets, oa, ra)
	}
	t.idle[e.class].pushBack(e)
	t.flows[k] = e
	return e
}

// originator decides whether the first packet's sender is the originator:
// a SYN without ACK says so, a SYN-ACK says the opposite, an ICMP request
// or one-way message says so, an ICMP reply the opposite (guessed);
// otherwise the more service-like port (portRank, then the lower port) is
// the responder; when the ports do not tell (both dynamic, or equal) and
// exactly one end is in a local network, the local end is the originator
// (monitored networks mostly connect out); else the sender is the
// originator (all guessed).
func originator(k Key, p *pb.PacketSummary, local []netip.Prefix) (srcOrig, guessed bool) {
	switch k.Proto {
	case 6:
		switch p.TcpFlags & (flagSYN | flagACK) {
		case flagSYN:
			return true, false
		case flagSYN | flagACK:
			return false, false
		}
	case 1, 58:
		if k.OneWay || communityid.ICMPRequest(k.Proto == 58, uint8(p.IcmpType)) {
			return true, false
		}
		return false, true
	}
	if !communityid.HasPorts(k.Proto) || k.Proto == 1 || k.Proto == 58 {
		return true, true
	}
	sp, dp := uint16(p.SrcPort), uint16(p.DstPort)
	rs, rd := portRank(k.Proto, sp), portRank(k.Proto, dp)
	switch {
	case rd > rs:
		return true, true
	case rs > rd:
		return false, true
	case rs >= 1 && sp != dp:
		return dp < sp, true
	}
	if len(local) > 0 {
		switch sl, dl := isLocal(local, p.SrcAddr), isLocal(local, p.DstAddr); {
		case sl && !dl:
			return true, true
		case dl && !sl:
			return false, true
		}
	}
	return true, true
}

// client keeps the originator's first TLS fingerprints and User-Agent.
func (e *entry) client(p *pb.PacketSummary) {
	if e.ja3 == "" {
		e.ja3 = p.Ja3
	}
	if e.ja4 == "" {
		e.ja4 = p.Ja4
	}
	if e.userAgent == "" {
		e.userAgent = p.HttpUserAgent
	}
}

// l7 keeps the first application name and server name seen, and the
// first DNS question type and response code.
func (e *entry) l7(p *pb.PacketSummary) {
	if e.app == "" {
		switch {
		case p.App != "":
			e.app = p.App
		case p.QuicVersion != 0:
			e.app = "quic"
		case p.TlsSni != "":
			e.app = "tls"
		case p.HttpHost != "" || p.HttpMethod != "":
			e.app = "http"
		case p.DnsQuery != "":
			e.app = "dns"
		}
	}
	if e.dnsQtype == 0 && p.DnsQtype != 0 {
		e.dnsQtype = uint16(p.DnsQtype)
	}
	if p.DnsResponse && !e.dnsResp {
		e.dnsRcode, e.dnsResp = uint8(p.DnsRcode), true
	}
	if e.server == "" {
		switch {
		case p.TlsSni != "":
			e.server = p.TlsSni
		case p.HttpHost != "":
			e.server = p.HttpHost
		case p.DnsQuery != "":
			e.server = p.DnsQuery
		}
	}
}

// History letters (Zeek conn.log "history"), first occurrence per direction;
// originator upper case, responder lower case.
const (
	hSYN = 1 << iota
	hSYNACK
	hACK
	hData
	hFIN
	hRST
)

var letters = [...]struct {
	bit  uint8
	char byte
}{{hSYN, 'S'}, {hSYNACK, 'H'}, {hACK, 'A'}, {hData, 'D'}, {hFIN, 'F'}, {hRST, 'R'}}

func (e *entry) history(d int, proto uint8, flags, payload uint32) {
	var b uint8
	if proto == 6 {
		switch {
		case flags&(flagSYN|flagACK) == flagSYN:
			b |= hSYN
		case flags&(flagSYN|flagACK) == flagSYN|flagACK:
			b |= hSYNACK
		case flags&(flagACK|flagFIN|flagRST) == flagACK && payload == 0:
			b |= hACK
		}
		if flags&flagFIN != 0 {
			b |= hFIN
		}
		if flags&flagRST != 0 {
			b |= hRST
		}
	}
	if payload > 0 {
		b |= hData
	}
	nb := b &^ e.letters[d]
	if nb == 0 {
		return
	}
	if e.histLen == 0 && e.flipped {
		e.hist[0], e.histLen = '^', 1
	}
	e.letters[d] |= nb
	for _, l := range letters {
		if nb&l.bit != 0 {
			c := l.char
			if d == 1 {
				c += 'a' - 'A'
			}
			e.hist[e.histLen] = c
			e.histLen++
		}
	}
}

// connState is Zeek's conn_state from the flags seen so far.
func (e *entry) connState() string {
	if e.key.Proto != 6 {
		if !e.respAny {
			return "S0"
		}
		return "SF"
	}
	o, r := e.letters[0], e.letters[1]
	oS, rH := o&hSYN != 0, r&hSYNACK != 0
	oF, rF, oR, rR := o&hFIN != 0, r&hFIN != 0, o&hRST != 0, r&hRST != 0
	switch {
	case oS && !rH:
		switch {
		case rR:
			return "REJ"
		case oR:
			return "RSTOS0"
		case oF:
			return "SH"
		}
		return "S0"
	case rH && !oS:
		switch {
		case rR:
			return "RSTRH"
		case rF:
			return "SHR"
		}
		return "OTH"
	case !oS && !rH:
		return "OTH"
	}
	switch {
	case oR:
		return "RSTO"
	case rR:
		return "RSTR"
	case oF && rF:
		return "SF"
	case oF:
		return "S2"
	case rF:
		return "S3"
	}
	return "S1"
}

// Advance moves the clock to now (never back) and ends the flows whose idle
// timeout or close linger has passed by then.
func (t *Table) Advance(now int64) {
	if now > t.clock {
		t.clock = now
	}
	for c := range t.idle {
		for e := t.idle[c].head; e != nil; e = t.idle[c].head {
			if t.clock-e.last < t.idleNs[c] {
				break
			}
			t.finish(e, pb.EndReason_END_IDLE)
		}
	}
	for e := t.closing.head; e != nil; e = t.closing.head {
		if t.clock-e.closeAt < int64(t.cfg.CloseLinger) {
			break
		}
		t.finish(e, e.reason)
	}
}

// Flush ends every open flow with reason (END_EOF, END_SHUTDOWN), in a
// deterministic order.
func (t *Table) Flush(reason pb.EndReason) {
	for c := range t.idle {
		for e := t.idle[c].head; e != nil; e = t.idle[c].head {
			t.finish(e, reason)
		}
	}
}

// evict ends the least recently active flow of the table (END_EVICTED): the
// head of the idle list whose last packet is oldest.
func (t *Table) evict() {
	var old *entry
	for c := range t.idle {
		if e := t.idle[c].head; e != nil && (old == nil || e.last < old.last) {
			old = e
		}
	}
	if old != nil {
		t.Evicted++
		t.evicting = true
		t.finish(old, pb.EndReason_END_EVICTED)
		t.evicting = false
	}
}

func (t *Table) finish(e *entry, reason pb.EndReason) {
	if t.cfg.Limit != nil {
		t.cfg.Limit.Open--
	}
	t.idle[e.class].remove(e)
	if e.close.in {
		t.closing.remove(e)
	}
	delete(t.flows, e.key)
	var cp *Checkpoint
	// A replay of the bucket's messages rebuilds a flow whole unless it
	// had interim records or spans messages, or its end does not follow
	// from its bucket's packets: shutdown, eviction (other tables), a clock
	// moved ahead of the packets by the wall clock (Advance from the stage).
	if t.cfg.Checkpoints && (e.recIndex > 0 || e.lastPos.Seq != e.firstSeq || reason == pb.EndReason_END_SHUTDOWN ||
		t.evicting || t.clock > t.pktMax) {
		cp = t.checkpoint(e, e.lastPos, true)
	}
	t.emitRecord(e, true, reason, cp)
	if len(t.free) < maxFree {
		*e = entry{}
		t.free = append(t.free, e)
	}
}

// maxFree bounds the entries kept for reuse per table.
const maxFree = 4096

// links are an entry's place in one list.
type links struct {
	prev, next *entry
	in         bool
}

const (
	idleLinks = iota
	closeLinks
)

// list is an intrusive doubly linked list of entries (no allocation per
// element, unlike container/list); off selects which links it uses.
type list struct {
	head, tail *entry
	off        int
}

func (l *list) links(e *entry) *links {
	if l.off == idleLinks {
		return &e.idle
	}
	return &e.close
}

func (l *list) pushBack(e *entry) {
	k := l.links(e)
	k.prev, k.next, k.in = l.tail, nil, true
	if l.tail != nil {
		l.links(l.tail).next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *list) remove(e *entry) {
	k := l.links(e)
	if k.prev != nil {
		l.links(k.prev).next = k.next
	} else {
		l.head = k.next
	}
	if k.next != nil {
		l.links(k.next).prev = k.prev
	} else {
		l.tail = k.prev
	}
	*k = links{}
}

func (l *list) moveToBack(e *entry) {
	if l.tail == e {
		return
	}
	l.remove(e)
	l.pushBack(e)
}
