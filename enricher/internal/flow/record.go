package flow

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math"
	"net/netip"

	"netwatch/schema/communityid"
	"netwatch/schema/pb"
)

// addrs returns the originator and responder addresses (views of the key).
func (e *entry) addrs() (orig, resp []byte) {
	n := e.key.addrLen()
	if e.origIsA {
		return e.key.A[:n], e.key.B[:n]
	}
	return e.key.B[:n], e.key.A[:n]
}

func (e *entry) ports() (orig, resp uint16) {
	if e.key.Proto == 1 || e.key.Proto == 58 {
		return 0, 0
	}
	if e.origIsA {
		return e.key.APort, e.key.BPort
	}
	return e.key.BPort, e.key.APort
}

// direction classifies a flow by local networks: outbound (local → remote),
// inbound, internal (both local) or external (neither).
func direction(local []netip.Prefix, orig, resp []byte) string {
	switch o, r := isLocal(local, orig), isLocal(local, resp); {
	case o && r:
		return "internal"
	case o:
		return "outbound"
	case r:
		return "inbound"
	}
	return "external"
}

// isLocal reports whether addr (4 or 16 bytes) is in one of the local networks.
func isLocal(local []netip.Prefix, addr []byte) bool {
	a, _ := netip.AddrFromSlice(addr)
	a = a.Unmap()
	for _, p := range local {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// flowAlloc is a record and its address bytes in one allocation.
type flowAlloc struct {
	f    pb.Flow
	addr [32]byte
}

// emitRecord passes the current record of e to the table's emit function
// and starts a new record (counts zero, record index + 1).
func (t *Table) emitRecord(e *entry, final bool, reason pb.EndReason, cp *Checkpoint) {
	oa, ra := e.addrs()
	op, rp := e.ports()
	o, r := e.c[0], e.c[1]
	app, fromPort := e.app, false
	if app == "" {
		app = portApp(e.key.Proto, rp)
		fromPort = app != ""
	}
	fa := new(flowAlloc)
	n := copy(fa.addr[:16], oa)
	copy(fa.addr[16:], ra)
	f := &fa.f
	f.Sensor, f.Proto = t.cfg.Sensor, uint32(e.key.Proto)
	f.OrigAddr, f.OrigPort = fa.addr[:n:n], uint32(op)
	f.RespAddr, f.RespPort = fa.addr[16:16+n:16+n], uint32(rp)
	f.Vlan, f.InnerVlan = e.key.VLAN, e.key.InnerVLAN
	f.StartNs, f.EndNs = e.recStart, e.recLast
	f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.OrigTcpFlags = o.pkts, o.ipBytes, o.bytes, o.flags
	f.RespPkts, f.RespIpBytes, f.RespBytes, f.RespTcpFlags = r.pkts, r.ipBytes, r.bytes, r.flags
	f.RecordIndex, f.Final, f.EndReason, f.DirectionGuessed = e.recIndex, final, reason, e.guessed
	f.App, f.ConnState, f.History = app, e.connState(), t.history(e)
	f.Tunnel, f.TunnelId, f.FlowStartNs = pb.Tunnel(e.key.Tunnel), e.key.TunnelID, e.flowStart
	f.ServerName, f.Direction = e.server, e.direction
	f.AppFromPort, f.Ja3, f.Ja4, f.HttpUserAgent = fromPort, e.ja3, e.ja4, e.userAgent
	f.DnsQtype, f.DnsRcode, f.DnsResponded = uint32(e.dnsQtype), uint32(e.dnsRcode), e.dnsResp
	if g := t.cfg.Geo; g != nil {
		oa, _ := netip.AddrFromSlice(f.OrigAddr)
		ra, _ := netip.AddrFromSlice(f.RespAddr)
		o, r := g.Lookup(oa), g.Lookup(ra)
		f.OrigCountry, f.OrigCity, f.OrigAsn, f.OrigAsOrg = o.Country, o.City, o.ASN, o.ASOrg
		f.RespCountry, f.RespCity, f.RespAsn, f.RespAsOrg = r.Country, r.City, r.ASN, r.ASOrg
	}
	if n := t.cfg.Names; n != nil {
		f.OrigName = n.Name(f.OrigAddr, f.StartNs, f.EndNs)
		f.RespName = n.Name(f.RespAddr, f.StartNs, f.EndNs)
	}
	if e.key.Proto == 1 || e.key.Proto == 58 {
		f.IcmpType, f.IcmpCode = uint32(e.icmpType), uint32(e.icmpCode)
	}
	// The id (and, at the first record, the Community ID) in one string.
	b := appendFlowID(t.buf[:0], t.cfg.Sensor, f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort,
		f.Vlan, f.InnerVlan, f.TunnelId, f.FlowStartNs, f.RecordIndex)
	if e.cid == "" {
		b = communityid.AppendID(b, &e.cidSum)
		s := string(b)
		f.Id, e.cid = s[:flowIDLen], s[flowIDLen:]
	} else {
		f.Id = string(b)
	}
	t.buf = b
	f.CommunityId = e.cid
	if t.cfg.Features {
		f.Features = features(f, e.st)
		e.st.next()
	}
	refs := e.refs
	e.refs = nil
	e.c = [2]counts{}
	e.recIndex++
	t.emit(Record{Flow: f, Refs: refs, Checkpoint: cp})
}

// history is e's history string, interned: flows share few distinct ones.
func (t *Table) history(e *entry) string {
	h := e.hist[:e.histLen]
	if s, ok := t.hists[string(h)]; ok {
		return s
	}
	s := string(h)
	if len(t.hists) < 4096 {
		t.hists[s] = s
	}
	return s
}

// flowIDLen is the length of schema.FlowID's hex string.
const flowIDLen = 32

// appendFlowID appends schema.FlowID of these fields to dst without
// allocating (dst permitting): the same SHA-256 input, hashed in one piece.
// TestFlowIDMatchesSchema keeps the two equal.
func appendFlowID(dst []byte, sensor string, proto uint32, origAddr []byte, origPort uint32, respAddr []byte, respPort uint32,
	vlan, innerVlan, tunnelID uint32, flowStartNs int64, recordIndex uint32) []byte {
	var in [64 + 3 + 16 + 4 + 1 + 16 + 4 + 16 + 8]byte
	b := in[:0]
	if len(sensor) > 64 { // not a valid sensor name; hash it all the same
		b = make([]byte, 0, len(sensor)+len(in))
	}
	b = append(b, sensor...)
	b = append(b, 0, byte(proto), byte(len(origAddr)))
	b = append(b, origAddr...)
	b = binary.BigEndian.AppendUint32(b, origPort)
	b = append(b, byte(len(respAddr)))
	b = append(b, respAddr...)
	b = binary.BigEndian.AppendUint32(b, respPort)
	b = binary.BigEndian.AppendUint32(b, vlan)
	b = binary.BigEndian.AppendUint32(b, innerVlan)
	b = binary.BigEndian.AppendUint32(b, tunnelID)
	b = binary.BigEndian.AppendUint32(b, recordIndex)
	b = binary.BigEndian.AppendUint64(b, uint64(flowStartNs))
	sum := sha256.Sum256(b)
	return hex.AppendEncode(dst, sum[:flowIDLen/2])
}

// stats are the distributions of one record, per direction (0 originator,
// 1 responder), for Config.Features.
type stats struct {
	dir [2]dirStats
}

type dirStats struct {
	n              uint64  // packets in this record
	sizeMin        uint32  // IP bytes
	sizeMax        uint32  //
	sizeSq         float64 // sum of squared IP bytes
	iatN           uint64  // inter-arrival times in this record (n - 1)
	iatMin, iatMax int64   // ns
	iatSum, iatSq  float64 // ns, ns²
	last           int64   // time of the previous packet, Unix ns
	flags          [6]uint32
	initWin        uint32 // TCP window of the first packet this way in the flow (kept across records)
	winSet         bool
}

// flagBits are the TCP flags counted per direction, in feature name order.
var flagBits = [6]struct {
	bit  uint32
	name string
}{{0x02, "syn"}, {0x10, "ack"}, {0x08, "psh"}, {0x01, "fin"}, {0x04, "rst"}, {0x20, "urg"}}

func (s *stats) add(d int, p *pb.PacketSummary, ts int64) {
	x := &s.dir[d]
	size := p.IpBytes
	if x.n == 0 || size < x.sizeMin {
		x.sizeMin = size
	}
	x.sizeMax = max(x.sizeMax, size)
	x.sizeSq += float64(size) * float64(size)
	if x.n > 0 {
		iat := max(ts-x.last, 0) // time went backwards: 0, never negative
		if x.iatN == 0 || iat < x.iatMin {
			x.iatMin = iat
		}
		x.iatMax = max(x.iatMax, iat)
		x.iatSum += float64(iat)
		x.iatSq += float64(iat) * float64(iat)
		x.iatN++
	}
	if ts > x.last || x.n == 0 {
		x.last = ts
	}
	x.n++
	if p.Proto == 6 {
		for i, f := range flagBits {
			if p.TcpFlags&f.bit != 0 {
				x.flags[i]++
			}
		}
		if !x.winSet {
			x.initWin, x.winSet = p.TcpWindow, true
		}
	}
}

// next starts a new record: the distributions restart, the initial windows stay.
func (s *stats) next() {
	for d := range s.dir {
		x := &s.dir[d]
		*x = dirStats{initWin: x.initWin, winSet: x.winSet}
	}
}

// meanStd is the mean and population standard deviation of n values with
// sum and sum of squares; 0, 0 when n is 0 (never NaN: the variance is
// clamped at 0 against rounding).
func meanStd(n uint64, sum, sq float64) (mean, std float64) {
	if n == 0 {
		return 0, 0
	}
	mean = sum / float64(n)
	return mean, math.Sqrt(max(sq/float64(n)-mean*mean, 0))
}

// features are the detector's per-record numbers (README "Flows",
// features). Units: seconds (duration_s, *_iat_s_*), bytes (IP-layer for
// *ip_bytes and *_pkt_bytes_*, transport payload for *_bytes), packets,
// packets or bytes per second, ratios in [0, 1]. A value that is undefined
// for the record (a rate over 0 s, a mean of no packets, inter-arrival
// times of fewer than 2 packets) is 0: never NaN or Inf.
func features(f *pb.Flow, st *stats) map[string]float64 {
	dur := float64(f.EndNs-f.StartNs) / 1e9
	pk := float64(f.OrigPkts + f.RespPkts)
	ipb := float64(f.OrigIpBytes + f.RespIpBytes)
	pl := float64(f.OrigBytes + f.RespBytes)
	m := make(map[string]float64, 64)
	m["duration_s"] = dur
	m["orig_pkts"], m["resp_pkts"] = float64(f.OrigPkts), float64(f.RespPkts)
	m["orig_bytes"], m["resp_bytes"] = float64(f.OrigBytes), float64(f.RespBytes)
	m["orig_ip_bytes"], m["resp_ip_bytes"] = float64(f.OrigIpBytes), float64(f.RespIpBytes)
	m["pkts"], m["ip_bytes"] = pk, ipb
	m["mean_pkt_bytes"], m["orig_bytes_ratio"], m["orig_pkts_ratio"] = 0, 0, 0
	m["pkts_per_s"], m["bytes_per_s"] = 0, 0
	m["resp_replied"], m["syn_only"], m["rst"] = 0, 0, 0
	if pk > 0 {
		m["mean_pkt_bytes"] = ipb / pk
		m["orig_pkts_ratio"] = float64(f.OrigPkts) / pk
	}
	if pl > 0 {
		m["orig_bytes_ratio"] = float64(f.OrigBytes) / pl
	}
	if dur > 0 {
		m["pkts_per_s"] = pk / dur
		m["bytes_per_s"] = ipb / dur
	}
	if f.RespPkts > 0 {
		m["resp_replied"] = 1
	}
	if f.Proto == 6 && f.OrigTcpFlags&(flagSYN|flagACK) == flagSYN && f.RespPkts == 0 {
		m["syn_only"] = 1
	}
	if (f.OrigTcpFlags|f.RespTcpFlags)&flagRST != 0 {
		m["rst"] = 1
	}
	if st == nil {
		return m
	}
	ipBytes := [2]uint64{f.OrigIpBytes, f.RespIpBytes}
	for d, pre := range [2]string{"orig_", "resp_"} {
		x := &st.dir[d]
		mean, std := meanStd(x.n, float64(ipBytes[d]), x.sizeSq)
		lo, hi := float64(x.sizeMin), float64(x.sizeMax)
		m[pre+"pkt_bytes_min"], m[pre+"pkt_bytes_max"], m[pre+"pkt_bytes_mean"], m[pre+"pkt_bytes_std"] = lo, hi, mean, std
		mean, std = meanStd(x.iatN, x.iatSum, x.iatSq)
		m[pre+"iat_s_min"], m[pre+"iat_s_max"] = float64(x.iatMin)/1e9, float64(x.iatMax)/1e9
		m[pre+"iat_s_mean"], m[pre+"iat_s_std"] = mean/1e9, std/1e9
		for i, fb := range flagBits {
			m[pre+fb.name] = float64(x.flags[i])
		}
		m[pre+"init_win"] = float64(x.initWin)
	}
	return m
}
