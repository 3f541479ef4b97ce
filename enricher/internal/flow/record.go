package flow

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"net/netip"

	"netwatch/enricher/internal/communityid"
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
	in := func(b []byte) bool {
		a, _ := netip.AddrFromSlice(b)
		for _, p := range local {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	switch o, r := in(orig), in(resp); {
	case o && r:
		return "internal"
	case o:
		return "outbound"
	case r:
		return "inbound"
	}
	return "external"
}

// flowAlloc is a record and its address bytes in one allocation.
type flowAlloc struct {
	f    pb.Flow
	addr [32]byte
}

// emitRecord passes the current record of e to the table's emit function
// and starts a new record (counts zero, record index + 1).
func (t *Table) emitRecord(e *entry, final bool, reason pb.EndReason) {
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
		f.Features = features(f)
	}
	refs := e.refs
	e.refs = nil
	e.c = [2]counts{}
	e.recIndex++
	t.emit(Record{Flow: f, Refs: refs})
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

// features are the detector's per-record numbers: duration in seconds,
// packet and byte counts, rates and ratios (0 when undefined).
func features(f *pb.Flow) map[string]float64 {
	dur := float64(f.EndNs-f.StartNs) / 1e9
	pk := float64(f.OrigPkts + f.RespPkts)
	ipb := float64(f.OrigIpBytes + f.RespIpBytes)
	pl := float64(f.OrigBytes + f.RespBytes)
	m := map[string]float64{
		"duration_s":     dur,
		"orig_pkts":      float64(f.OrigPkts),
		"resp_pkts":      float64(f.RespPkts),
		"orig_bytes":     float64(f.OrigBytes),
		"resp_bytes":     float64(f.RespBytes),
		"orig_ip_bytes":  float64(f.OrigIpBytes),
		"resp_ip_bytes":  float64(f.RespIpBytes),
		"pkts":           pk,
		"ip_bytes":       ipb,
		"mean_pkt_bytes": 0, "orig_bytes_ratio": 0, "orig_pkts_ratio": 0,
		"pkts_per_s": 0, "bytes_per_s": 0,
		"resp_replied": 0, "syn_only": 0, "rst": 0,
	}
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
	return m
}
