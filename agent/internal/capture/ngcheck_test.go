package capture

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// TestPcapngFirstInterfaceChecked: a pcapng file whose first interface has
// a link type the decoder rejects (802.11) is an error at open, like a
// classic pcap of that type; an Ethernet first interface passes and its
// first frame is still returned by Next.
func TestPcapngFirstInterfaceChecked(t *testing.T) {
	onlyEthernet := func(l layers.LinkType) error {
		if l != layers.LinkTypeEthernet {
			return fmt.Errorf("unsupported link type %d", l)
		}
		return nil
	}
	for _, tc := range []struct {
		link layers.LinkType
		ok   bool
	}{{layers.LinkTypeIEEE802_11, false}, {layers.LinkTypeEthernet, true}} {
		file := filepath.Join(t.TempDir(), "one.pcapng")
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		w, err := pcapgo.NewNgWriter(f, tc.link)
		if err != nil {
			t.Fatal(err)
		}
		frame := make([]byte, 60)
		frame[0] = 0xab
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: 60, Length: 60}, frame); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		f.Close()
		r, err := Open(file, onlyEthernet)
		if !tc.ok {
			if err == nil || !strings.Contains(err.Error(), "unsupported link type 105") {
				t.Errorf("link %d: open error %v, want unsupported link type 105", tc.link, err)
			}
			if err == nil {
				r.Close()
			}
			continue
		}
		if err != nil {
			t.Fatalf("link %d: %v", tc.link, err)
		}
		data, _, link, err := r.Next()
		if err != nil || len(data) != 60 || data[0] != 0xab || link != layers.LinkTypeEthernet {
			t.Errorf("first frame: %d bytes, link %v, err %v", len(data), link, err)
		}
		r.Close()
	}
}
