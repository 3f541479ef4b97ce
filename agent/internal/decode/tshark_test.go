package decode

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"netwatch/agent/internal/capture"
	"netwatch/testkit"
)

// decoded is what the agent reads from one frame of a capture.
type decoded struct {
	p  Packet
	l7 L7 // ParseL7 of p when App recognised it
}

// decodeFile decodes every frame of a shared capture, keyed by 1-based
// frame number; L7 strings are cloned.
func decodeFile(t *testing.T, name string) map[int]*decoded {
	t.Helper()
	src, err := capture.OpenFile(filepath.Join(testkit.Pcaps(t), name))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	out := map[int]*decoded{}
	decs := map[any]*Decoder{}
	var l L7
	for n := 1; ; n++ {
		data, _, link, err := src.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		d := decs[link]
		if d == nil {
			if d, err = New(link); err != nil {
				t.Fatal(err)
			}
			decs[link] = d
		}
		r := &decoded{}
		d.Decode(data, &r.p)
		r.p.Payload = nil // aliases the reader's buffer
		if App(&r.p) != "" || r.p.Kind == KindIP {
			// decode again for L7 while the payload is valid
			var p Packet
			d.Decode(data, &p)
			ParseL7(&p, &l)
			r.l7 = L7{App: l.App, TLSSNI: strings.Clone(l.TLSSNI), JA3: strings.Clone(l.JA3),
				JA3Full: strings.Clone(l.JA3Full), JA4: strings.Clone(l.JA4), QUICVersion: l.QUICVersion,
				Hello: l.Hello, HelloPartial: l.HelloPartial, DNSQuery: strings.Clone(l.DNSQuery), DNSQType: l.DNSQType,
				DNSResponse: l.DNSResponse, Undecodable: l.Undecodable}
			for _, a := range l.DNSAnswers {
				a.Name, a.Target, a.Addr = strings.Clone(a.Name), strings.Clone(a.Target), slices.Clone(a.Addr)
				r.l7.DNSAnswers = append(r.l7.DNSAnswers, a)
			}
			for _, a := range l.TLSALPN {
				r.l7.TLSALPN = append(r.l7.TLSALPN, strings.Clone(a))
			}
		}
		out[n] = r
	}
}

// tsharkRows runs tshark on a shared capture with a display filter and
// fields, every occurrence of a field joined by ",", and returns the rows by
// frame number (the first field must be frame.number).
func tsharkRows(t *testing.T, name, filter string, fields ...string) map[int][]string {
	t.Helper()
	return tsharkRowsFile(t, filepath.Join(testkit.Pcaps(t), name), filter, fields...)
}

// tsharkRowsFile is tsharkRows for any capture file.
func tsharkRowsFile(t *testing.T, file, filter string, fields ...string) map[int][]string {
	t.Helper()
	tshark := testkit.Tool(t, "tshark")
	args := []string{"-r", file, "-Y", filter, "-T", "fields",
		"-E", "occurrence=a", "-E", "aggregator=,", "-E", "separator=/t"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command(tshark, args...).Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", file, err)
	}
	rows := map[int][]string{}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		for len(f) < len(fields) {
			f = append(f, "")
		}
		n, err := strconv.Atoi(f[0])
		if err != nil {
			t.Fatalf("tshark row %q", line)
		}
		rows[n] = f
	}
	return rows
}

// hexList parses tshark's "0x1301,0x1302" (or decimal "43,10") lists.
func hexList(t *testing.T, s string) []uint16 {
	if s == "" {
		return nil
	}
	var out []uint16
	for _, v := range strings.Split(s, ",") {
		n, err := strconv.ParseUint(v, 0, 16)
		if err != nil {
			t.Fatalf("value %q: %v", v, err)
		}
		out = append(out, uint16(n))
	}
	return out
}

// sigAlgs13 picks the signature algorithms of the signature_algorithms
// extension (13) out of tshark's tls.handshake.sig_hash_alg values, which
// also holds those of signature_algorithms_cert (50) and
// delegated_credentials (34), in extension order; lens are the lists'
// byte lengths (tls.handshake.sig_hash_alg_len). JA4 uses extension 13's
// list only, as FoxIO's implementation does.
func sigAlgs13(types []uint16, lens string, all []uint16) []uint16 {
	var idx []int
	for _, l := range strings.Split(lens, ",") {
		if n, err := strconv.Atoi(l); err == nil {
			idx = append(idx, n/2)
		}
	}
	at, k := 0, 0
	for _, typ := range types {
		if typ != 13 && typ != 50 && typ != 34 {
			continue
		}
		if k >= len(idx) || at+idx[k] > len(all) {
			return nil
		}
		if typ == 13 {
			return all[at : at+idx[k]]
		}
		at += idx[k]
		k++
	}
	return nil
}

// referenceJA4 computes JA4 from tshark's fields, written from the FoxIO
// JA4 spec (technical_details/JA4.md) independently of the decoder.
func referenceJA4(proto string, version uint16, supported []uint16, sni bool, ciphers, exts, sigAlgs []uint16, alpn string) string {
	isGrease := func(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }
	clean := func(in []uint16) []uint16 {
		var out []uint16
		for _, v := range in {
			if !isGrease(v) {
				out = append(out, v)
			}
		}
		return out
	}
	if s := clean(supported); len(s) > 0 {
		version = slices.Max(s) // the highest supported_versions value replaces the legacy version
	}
	ver := map[uint16]string{0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3"}[version]
	if ver == "" {
		ver = "00"
	}
	d := "i"
	if sni {
		d = "d"
	}
	a := "00"
	if alpn != "" {
		a = alpn[:1] + alpn[len(alpn)-1:]
		isAlnum := func(c byte) bool {
			return strings.IndexByte("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", c) >= 0
		}
		if !isAlnum(a[0]) || !isAlnum(a[1]) {
			h := hex.EncodeToString([]byte(alpn))
			a = h[:1] + h[len(h)-1:]
		}
	}
	c, e := clean(ciphers), clean(exts)
	hash := func(s string) string {
		h := sha256.Sum256([]byte(s))
		return hex.EncodeToString(h[:])[:12]
	}
	hexs := func(v []uint16) string {
		var parts []string
		for _, x := range v {
			parts = append(parts, fmt.Sprintf("%04x", x))
		}
		return strings.Join(parts, ",")
	}
	sc := slices.Clone(c)
	slices.Sort(sc)
	var se []uint16
	for _, x := range e {
		if x != 0 && x != 16 {
			se = append(se, x)
		}
	}
	slices.Sort(se)
	cs := hexs(se)
	if s := clean(sigAlgs); len(s) > 0 {
		cs += "_" + hexs(s)
	}
	return fmt.Sprintf("%s%s%s%02d%02d%s_%s_%s", proto, ver, d, min(len(c), 99), min(len(e), 99), a, hash(hexs(sc)), hash(cs))
}

// TestClientHelloTshark compares SNI, ALPN, JA3 (string and MD5) with
// tshark 4.0 and JA4 with one computed from tshark's cipher, extension and
// signature algorithm fields, for every ClientHello of the shared captures
// (TLS 1.2 from Chrome 34, the Heartbleed attack's hello, and Chromium's
// QUIC v1 Initial, which tshark decrypts itself).
func TestClientHelloTshark(t *testing.T) {
	fields := []string{"frame.number", "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str",
		"tls.handshake.ja3_full", "tls.handshake.ja3", "tls.handshake.ciphersuite", "tls.handshake.extension.type",
		"tls.handshake.sig_hash_alg", "tls.handshake.extensions.supported_version", "tls.handshake.version", "quic.version",
		"tls.handshake.sig_hash_alg_len"}
	total := 0
	for _, c := range []struct {
		file, proto string
		sni         string // MANIFEST.md
	}{
		{"tls12-clienthello-sni-google-de.pcap", "t", "google.de"},
		{"attack-tls-heartbleed.pcap", "t", ""},
		{"quic-v1-chromium-sni-api-cirrus-ci-com.pcap", "q", "api.cirrus-ci.com"},
	} {
		t.Run(c.file, func(t *testing.T) {
			got := decodeFile(t, c.file)
			rows := tsharkRows(t, c.file, "tls.handshake.type == 1", fields...)
			if len(rows) == 0 {
				t.Fatal("tshark shows no ClientHello")
			}
			for n, r := range rows {
				total++
				g := got[n]
				if g == nil || !g.l7.Hello || g.l7.HelloPartial {
					t.Fatalf("frame %d: no whole ClientHello decoded: %+v", n, g)
				}
				l := g.l7
				if l.TLSSNI != r[1] || l.TLSSNI != c.sni {
					t.Errorf("frame %d: SNI %q, tshark %q, MANIFEST %q", n, l.TLSSNI, r[1], c.sni)
				}
				if strings.Join(l.TLSALPN, ",") != r[2] {
					t.Errorf("frame %d: ALPN %q, tshark %q", n, l.TLSALPN, r[2])
				}
				if l.JA3Full != r[3] || l.JA3 != r[4] {
					t.Errorf("frame %d: JA3 %q %s, tshark %q %s", n, l.JA3Full, l.JA3, r[3], r[4])
				}
				ver := hexList(t, r[9])
				alpn := ""
				if len(l.TLSALPN) > 0 {
					alpn = strings.Split(r[2], ",")[0]
				}
				exts := hexList(t, r[6])
				want := referenceJA4(c.proto, ver[0], hexList(t, r[8]), r[1] != "", hexList(t, r[5]), exts,
					sigAlgs13(exts, r[11], hexList(t, r[7])), alpn)
				if l.JA4 != want {
					t.Errorf("frame %d: JA4 %q, from tshark's fields %q", n, l.JA4, want)
				}
				t.Logf("frame %d: sni %q alpn %q ja3 %s ja4 %s", n, l.TLSSNI, l.TLSALPN, l.JA3, l.JA4)
			}
		})
	}
	if total < 3 {
		t.Errorf("%d ClientHellos compared, want 3", total)
	}
}

// TestQUICVersionTshark: the version of every QUIC long header packet is
// tshark's (the first packet of a coalesced datagram), 0 for short headers.
func TestQUICVersionTshark(t *testing.T) {
	const file = "quic-v1-chromium-sni-api-cirrus-ci-com.pcap"
	got := decodeFile(t, file)
	rows := tsharkRows(t, file, "udp", "frame.number", "quic.version")
	long := 0
	for n, r := range rows {
		want := uint32(0)
		if r[1] != "" {
			v, err := strconv.ParseUint(strings.Split(r[1], ",")[0], 0, 32)
			if err != nil {
				t.Fatal(err)
			}
			want = uint32(v)
			long++
		}
		if got[n].l7.QUICVersion != want {
			t.Errorf("frame %d: QUIC version %#x, tshark %#x", n, got[n].l7.QUICVersion, want)
		}
	}
	if long != 3 { // frames 1-3 by tshark: client Initial, server Initial+Handshake, client Initial+Handshake
		t.Errorf("%d long header frames, want 3", long)
	}
}

// TestARPTshark compares every ARP/RARP frame of the shared captures with
// tshark: op, sender and target MAC and IPv4 address, VLAN, the Ethernet
// source (none on SLL/SLL2 captures), gratuitous = sender IP == target IP.
func TestARPTshark(t *testing.T) {
	total := 0
	for _, file := range []string{"arp-who-has-and-reply.pcap", "linux-sll-arp.pcap", "linux-sll2-icmp-icmpv6-arp.pcap",
		"attack-arp-poisoning-mitm.pcapng", "attack-recon-nmap-arp-sweep-and-version-probe.pcap"} {
		t.Run(file, func(t *testing.T) {
			got := decodeFile(t, file)
			rows := tsharkRows(t, file, "arp", "frame.number", "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4",
				"arp.dst.hw_mac", "arp.dst.proto_ipv4", "vlan.id", "eth.src")
			if len(rows) == 0 {
				t.Fatal("tshark shows no ARP")
			}
			for n := range got {
				if got[n].p.ARP.OK && rows[n] == nil {
					t.Errorf("frame %d: ARP decoded, tshark shows none", n)
				}
			}
			for n, r := range rows {
				total++
				a := got[n].p.ARP
				if !a.OK || got[n].p.Network != NetARP || got[n].p.Kind != KindNonIP {
					t.Errorf("frame %d: not an ARP summary: %+v", n, got[n].p)
					continue
				}
				vlan := "0"
				if r[6] != "" {
					vlan = strings.Split(r[6], ",")[0]
				}
				ethSrc := ""
				if a.HasEthSrc {
					ethSrc = net.HardwareAddr(a.EthSrc[:]).String()
				}
				g := []string{strconv.Itoa(int(a.Op)), net.HardwareAddr(a.SenderMAC[:]).String(), net.IP(a.SenderIP[:]).String(),
					net.HardwareAddr(a.TargetMAC[:]).String(), net.IP(a.TargetIP[:]).String(), strconv.Itoa(int(got[n].p.VLAN)), ethSrc}
				w := []string{r[1], r[2], r[3], r[4], r[5], vlan, r[7]}
				if !slices.Equal(g, w) {
					t.Errorf("frame %d: %q, tshark %q", n, g, w)
				}
				if a.Gratuitous() != (r[3] == r[5]) {
					t.Errorf("frame %d: gratuitous %v, sender %s target %s", n, a.Gratuitous(), r[3], r[5])
				}
			}
		})
	}
	if total != 2+12+2+4+503 { // tshark -Y arp counts, see the captures' MANIFEST kinds
		t.Errorf("%d ARP frames compared", total)
	}
}

// TestMDNSLLMNRTshark compares every mDNS and LLMNR frame of the shared
// captures that hold them with tshark's DNS dissection of the same frame:
// the application (mdns on UDP 5353, llmnr on 5355), the first question
// name (dns.qry.name), the response flag (dns.flags.response) and the A /
// AAAA addresses read from the answer section, which must be among tshark's
// dns.a / dns.aaaa (those also cover the additional section, which the
// agent does not read). An mDNS response holds no question (RFC 6762 §6):
// its answers must still be read (gemini.local in frames 2 and 3 of the
// Wikipedia capture).
func TestMDNSLLMNRTshark(t *testing.T) {
	answered := 0
	for _, c := range []struct {
		file  string
		mdns  int // frames tshark dissects as mDNS
		llmnr int
	}{{"eth-ipv4-dns-http-browsing-wikipedia.pcap", 4, 8}, {"lab/lab-nmap-udp-scan.pcap", 8, 0}} {
		got := decodeFile(t, c.file)
		rows := tsharkRows(t, c.file, "mdns or llmnr", "frame.number", "udp.port", "dns.qry.name", "dns.flags.response",
			"dns.a", "dns.aaaa")
		var mdns, llmnr int
		for n, r := range rows {
			want := AppLLMNR
			if strings.Contains(r[1], "5353") {
				want = AppMDNS
				mdns++
			} else {
				llmnr++
			}
			g := got[n].l7
			if g.App != want {
				t.Errorf("%s frame %d: app %q, want %q (udp ports %s)", c.file, n, g.App, want, r[1])
				continue
			}
			if q, _, _ := strings.Cut(r[2], ","); g.DNSQuery != q {
				t.Errorf("%s frame %d: query %q, tshark %q", c.file, n, g.DNSQuery, q)
			}
			if g.DNSResponse != (r[3] == "1" || r[3] == "True") {
				t.Errorf("%s frame %d: response %v, tshark %q", c.file, n, g.DNSResponse, r[3])
			}
			addrs := strings.Split(r[4]+","+r[5], ",")
			for _, a := range g.DNSAnswers {
				if a.Type != 1 && a.Type != 28 {
					continue
				}
				answered++
				if s := net.IP(a.Addr).String(); !slices.Contains(addrs, s) {
					t.Errorf("%s frame %d: answer %s %s not among tshark's %v", c.file, n, a.Name, s, addrs)
				}
			}
		}
		if mdns != c.mdns || llmnr != c.llmnr {
			t.Errorf("%s: tshark dissects %d mDNS and %d LLMNR frames, want %d and %d", c.file, mdns, llmnr, c.mdns, c.llmnr)
		}
	}
	if answered < 4 { // frames 2 and 3: gemini.local AAAA and A in the answers
		t.Errorf("%d A/AAAA answers read from the mDNS responses, want at least 4", answered)
	}
}
