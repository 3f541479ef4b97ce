// Package capflow builds flow records from a capture file with tshark's own
// dissection, independently of the agent and the enricher: the detector's
// tests check the rules on them, and `detector train -format hosts` computes
// the host model's training windows from the labelled captures with it.
package capflow

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"netwatch/schema/pb"
)

// Options of Flows.
type Options struct {
	// Tshark is the tshark binary; empty means "tshark" on PATH.
	Tshark string
	// PerQuery gives every DNS query name a flow of its own (as from a
	// resolver that uses a fresh source port per query, RFC 5452).
	PerQuery bool
}

// Flows returns one flow record per bidirectional 5-tuple of the IP packets
// of the capture at path, in the order of their first packet. The
// originator is the sender of the tuple's first packet; payload bytes are
// tcp.len or udp.length - 8; TCP flags are OR'ed per direction; ICMP
// packets keep their type and no ports (-E occurrence=f takes the outer
// fields, so the header quoted in an ICMP error is not used). Unlike the
// enricher, a tuple is one flow however long its silences (no idle or
// active timeout) and orig_ip_bytes/resp_ip_bytes are not set.
//
// DNS: server_name is the flow's first query name (dns.qry.name),
// dns_qtype the first question's type and dns_rcode the first response's
// RCODE (dns.flags.rcode), as the enricher sets them.
//
// An error means tshark could not run or read the file; a line with a
// field that does not parse is an error too (tshark printed something
// unexpected).
func Flows(path string, o Options) ([]*pb.Flow, error) {
	tshark := o.Tshark
	if tshark == "" {
		tshark = "tshark"
	}
	fields := []string{"frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ipv6.nxt",
		"tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", "tcp.flags", "tcp.len", "udp.length", "icmp.type", "icmpv6.type", "dns.qry.name",
		"dns.qry.type", "dns.flags.response", "dns.flags.rcode"}
	args := []string{"-r", path, "-n", "-T", "fields", "-E", "occurrence=f", "-E", "separator=\t"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tshark, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	type fkey struct {
		proto  uint32
		a, b   netip.Addr
		ap, bp uint32
		qname  string
	}
	flows := map[fkey]*pb.Flow{}
	var order []*pb.Flow
	var perr error
	u := func(s string) uint32 {
		if s == "" {
			return 0
		}
		v, err := strconv.ParseUint(s, 0, 32)
		if err != nil && perr == nil {
			perr = fmt.Errorf("tshark %s: field %q: %w", path, s, err)
		}
		return uint32(v)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		if len(c) < len(fields) {
			continue
		}
		src, dst, proto := c[1], c[2], c[5]
		if src == "" {
			src, dst, proto = c[3], c[4], c[6]
		}
		sa, err1 := netip.ParseAddr(src)
		da, err2 := netip.ParseAddr(dst)
		if err1 != nil || err2 != nil || proto == "" {
			continue // not IP
		}
		ts, _ := strconv.ParseFloat(c[0], 64)
		ns := int64(ts * 1e9)
		p := u(proto)
		var sp, dp, flags, payload, icmpType uint32
		switch p {
		case 6:
			sp, dp, flags, payload = u(c[7]), u(c[8]), u(c[11]), u(c[12])
		case 17:
			sp, dp = u(c[9]), u(c[10])
			if l := u(c[13]); l >= 8 {
				payload = l - 8
			}
		case 1:
			icmpType = u(c[14])
		case 58:
			icmpType = u(c[15])
		}
		qname := c[16]
		kq := ""
		if o.PerQuery {
			kq = qname
		}
		k, rk := fkey{p, sa, da, sp, dp, kq}, fkey{p, da, sa, dp, sp, kq}
		f, fromOrig := flows[k], true
		if f == nil {
			if f = flows[rk]; f != nil {
				fromOrig = false
			}
		}
		if f == nil {
			f = &pb.Flow{Proto: p, OrigAddr: sa.AsSlice(), OrigPort: sp, RespAddr: da.AsSlice(), RespPort: dp,
				IcmpType: icmpType, StartNs: ns, Final: true}
			flows[k] = f
			order = append(order, f)
		}
		if qname != "" && (sp == 53 || dp == 53) {
			if f.ServerName == "" {
				f.ServerName = qname
			}
			if f.DnsQtype == 0 {
				f.DnsQtype = u(c[17])
			}
			if c[18] == "1" && !f.DnsResponded {
				f.DnsResponded, f.DnsRcode = true, u(c[19])
			}
		}
		f.EndNs = max(f.EndNs, ns)
		if fromOrig {
			f.OrigPkts++
			f.OrigBytes += uint64(payload)
			f.OrigTcpFlags |= flags
		} else {
			f.RespPkts++
			f.RespBytes += uint64(payload)
			f.RespTcpFlags |= flags
		}
	}
	if perr != nil {
		return nil, perr
	}
	return order, nil
}
