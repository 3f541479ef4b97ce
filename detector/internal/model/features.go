// Package model is the detector's machine-learning side: it turns a flow
// record (pb.Flow, from the enricher via FLOWS) into the NSL-KDD-style
// features a golearn classifier was trained on, loads the shipped model and
// scores flows. Training and evaluation are in train.go.
package model

import (
	"sort"

	"netwatch/schema/pb"
)

// Features are the NSL-KDD columns netwatch computes for a flow, named
// after their NSL-KDD columns (Tavallaee et al., "A Detailed Analysis of the
// KDD CUP 99 Data Set", IEEE CISDA 2009; column definitions: the KDD Cup
// 1999 task description, and Lee & Stolfo, "A framework for constructing
// features and models for intrusion detection systems", ACM TISSEC 3(4),
// 2000). The basic columns and Land come from the record alone (Extract);
// the 19 traffic columns need the connections before it (Traffic.Observe).
//
// Not computed, and not model inputs: wrong_fragment (the count of bad
// fragments: a flow record does not carry it), urgent (the count of urgent
// packets: a record carries only the OR of the TCP flags) and the 13
// content features hot, num_failed_logins, logged_in, num_compromised,
// root_shell, su_attempted, num_root, num_file_creations, num_shells,
// num_access_files, num_outbound_cmds, is_host_login, is_guest_login (they
// come from the payload of login sessions, which flows do not carry).
type Features struct {
	Duration float64 `json:"duration"`      // seconds, end - start of the record
	Protocol string  `json:"protocol_type"` // "tcp", "udp" or "icmp" (anything else: "icmp", the rarest class)
	Service  string  `json:"service"`       // NSL-KDD service name from the responder port (Services), "private" when unlisted
	Flag     string  `json:"flag"`          // NSL-KDD / Zeek conn_state (Flags)
	SrcBytes float64 `json:"src_bytes"`     // originator payload bytes (orig_bytes)
	DstBytes float64 `json:"dst_bytes"`     // responder payload bytes (resp_bytes)
	Land     float64 `json:"land"`          // 1 when originator and responder address and port are equal, else 0
	TrafficFeatures
}

// Protocols, Services and Flags are the fixed value lists of the categorical
// attributes, in the order the model file stores them.
var (
	Protocols = []string{"icmp", "tcp", "udp"}
	Flags     = []string{"OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH"}
	Services  []string
)

// servicePorts maps NSL-KDD service names to the port (or ICMP type, for the
// *_i services) a flow would use: IANA service-names registry; KDD's
// "private" (unlisted port) and "other" have no port.
var servicePorts = map[string]uint32{
	"IRC": 194, "X11": 6000, "Z39_50": 210, "auth": 113, "bgp": 179, "courier": 530, "csnet_ns": 105,
	"ctf": 84, "daytime": 13, "discard": 9, "domain": 53, "echo": 7, "efs": 520, "exec": 512,
	"finger": 79, "ftp": 21, "ftp_data": 20, "gopher": 70, "hostnames": 101, "http": 80, "http_443": 443,
	"http_8001": 8001, "imap4": 143, "iso_tsap": 102, "klogin": 543, "kshell": 544, "ldap": 389,
	"link": 245, "login": 513, "mtp": 1911, "name": 42, "netbios_dgm": 138, "netbios_ns": 137,
	"netbios_ssn": 139, "netstat": 15, "nnsp": 433, "nntp": 119, "pm_dump": 5000, "pop_2": 109,
	"pop_3": 110, "printer": 515, "remote_job": 71, "rje": 77, "shell": 514, "smtp": 25,
	"sql_net": 150, "ssh": 22, "sunrpc": 111, "supdup": 95, "systat": 11, "telnet": 23, "time": 37,
	"uucp": 540, "uucp_path": 117, "vmnet": 175, "whois": 43,
	// UDP services
	"domain_u": 53, "ntp_u": 123, "tftp_u": 69,
}

var tcpPort, udpPort map[uint32]string

func init() {
	tcpPort, udpPort = map[uint32]string{}, map[uint32]string{}
	set := map[string]bool{"private": true, "other": true, "eco_i": true, "ecr_i": true,
		"tim_i": true, "urp_i": true, "red_i": true, "urh_i": true}
	for s, p := range servicePorts {
		set[s] = true
		switch s {
		case "domain_u", "ntp_u", "tftp_u":
			udpPort[p] = s
		default:
			tcpPort[p] = s
		}
	}
	tcpPort[8080] = "http" // common alternative HTTP port, KDD folds it into http
	for s := range set {
		Services = append(Services, s)
	}
	sort.Strings(Services)
	serviceIndex = make(map[string]uint16, len(Services))
	for i, s := range Services {
		serviceIndex[s] = uint16(i)
	}
}

// Extract computes the Features of f that the record alone gives (the
// basic columns and Land; the traffic columns stay 0: Traffic.Observe
// fills them). It never fails: unknown values map to the nearest NSL-KDD
// category ("private" service, "OTH" flag).
func Extract(f *pb.Flow) Features {
	x := Features{SrcBytes: float64(f.GetOrigBytes()), DstBytes: float64(f.GetRespBytes())}
	if f.GetOrigPort() == f.GetRespPort() && len(f.GetOrigAddr()) > 0 && string(f.GetOrigAddr()) == string(f.GetRespAddr()) {
		x.Land = 1
	}
	if d := f.GetEndNs() - f.GetStartNs(); d > 0 {
		x.Duration = float64(d) / 1e9
	}
	switch f.GetProto() {
	case 6:
		x.Protocol = "tcp"
		x.Service = serviceOr(tcpPort, f.GetRespPort())
		x.Flag = tcpFlag(f)
	case 17:
		x.Protocol = "udp"
		x.Service = serviceOr(udpPort, f.GetRespPort())
		x.Flag = "SF"
	default:
		x.Protocol = "icmp"
		x.Flag = "SF"
		switch f.GetIcmpType() {
		case 8, 128: // echo request (ICMP, ICMPv6)
			x.Service = "ecr_i"
		case 0, 129: // echo reply
			x.Service = "eco_i"
		case 3, 1: // destination unreachable (ICMP, ICMPv6)
			x.Service = "urp_i"
		case 13, 14:
			x.Service = "tim_i"
		case 5, 137:
			x.Service = "red_i"
		default:
			x.Service = "other"
		}
	}
	return x
}

func serviceOr(m map[uint32]string, port uint32) string {
	if s, ok := m[port]; ok {
		return s
	}
	return "private"
}

// TCP flag bits (RFC 9293).
const (
	fin = 0x01
	syn = 0x02
	rst = 0x04
	ack = 0x10
)

// tcpFlag is the flow's Zeek conn_state when the enricher set one of the
// NSL-KDD values, else an approximation from the OR of TCP flags each side
// sent (Zeek's conn_state definitions, without the packet order).
func tcpFlag(f *pb.Flow) string {
	if cs := f.GetConnState(); cs != "" {
		i := sort.SearchStrings(Flags, cs)
		if i < len(Flags) && Flags[i] == cs {
			return cs
		}
		return "OTH"
	}
	o, r := f.GetOrigTcpFlags(), f.GetRespTcpFlags()
	origSyn, respSynAck := o&syn != 0, r&syn != 0 && r&ack != 0
	switch {
	case origSyn && f.GetRespPkts() == 0 && o&rst != 0:
		return "RSTOS0"
	case origSyn && f.GetRespPkts() == 0:
		return "S0"
	case origSyn && !respSynAck && r&rst != 0:
		return "REJ"
	case !origSyn && respSynAck:
		return "SH"
	case origSyn && respSynAck && o&rst != 0:
		return "RSTO"
	case origSyn && respSynAck && r&rst != 0:
		return "RSTR"
	case origSyn && respSynAck && o&fin != 0 && r&fin != 0:
		return "SF"
	case origSyn && respSynAck && o&fin != 0:
		return "S2"
	case origSyn && respSynAck && r&fin != 0:
		return "S3"
	case origSyn && respSynAck:
		return "S1"
	}
	return "OTH"
}
