package flow

// Well-known service ports (IANA service name registry) used to name the
// application when the agent did not recognise it and to guess which
// endpoint is the responder.
var tcpApps = map[uint16]string{
	20: "ftp-data", 21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 53: "dns", 80: "http", 88: "kerberos",
	110: "pop3", 111: "sunrpc", 135: "msrpc", 139: "netbios-ssn", 143: "imap", 179: "bgp", 389: "ldap",
	443: "tls", 445: "smb", 465: "smtps", 514: "rsh", 587: "smtp", 636: "ldaps", 853: "dot", 873: "rsync",
	993: "imaps", 995: "pop3s", 1080: "socks", 1433: "mssql", 1521: "oracle", 1883: "mqtt", 2049: "nfs",
	3128: "http-proxy", 3306: "mysql", 3389: "rdp", 4222: "nats", 5060: "sip", 5222: "xmpp", 5432: "postgresql",
	5671: "amqps", 5672: "amqp", 5900: "vnc", 6379: "redis", 6443: "tls", 8080: "http", 8443: "tls",
	9092: "kafka", 9200: "elasticsearch", 11211: "memcached", 27017: "mongodb",
}

var udpApps = map[uint16]string{
	53: "dns", 67: "dhcp", 68: "dhcp", 69: "tftp", 123: "ntp", 137: "netbios-ns", 138: "netbios-dgm",
	161: "snmp", 162: "snmp-trap", 443: "quic", 500: "ike", 514: "syslog", 546: "dhcpv6", 547: "dhcpv6",
	1900: "ssdp", 3478: "stun", 4500: "ipsec-nat-t", 4789: "vxlan", 5060: "sip", 5353: "mdns",
	5355: "llmnr", 6081: "geneve", 11211: "memcached", 51820: "wireguard",
}

// portApp is the application of a well-known responder port, "" if none.
func portApp(proto uint8, port uint16) string {
	switch proto {
	case 6, 132:
		return tcpApps[port]
	case 17:
		return udpApps[port]
	}
	return ""
}

// portRank orders ports by how likely they are a service: a known service
// port 3, other system ports (<1024) 2, registered ports (<49152) 1,
// dynamic ports 0 (RFC 6335).
func portRank(proto uint8, port uint16) int {
	switch {
	case portApp(proto, port) != "":
		return 3
	case port < 1024:
		return 2
	case port < 49152:
		return 1
	}
	return 0
}
