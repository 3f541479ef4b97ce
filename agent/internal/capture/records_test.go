package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/pcapgo"

	"netwatch/testkit"
)

// TestPCAPRecordsMatchPcapgo reads every shared pcap file (µs and ns, the
// lab captures too) through File's own record reader and through pcapgo's
// reader: the same bytes, times, captured and original lengths, in the
// same order, then io.EOF from both.
func TestPCAPRecordsMatchPcapgo(t *testing.T) {
	dir := testkit.Pcaps(t)
	files, _ := filepath.Glob(filepath.Join(dir, "*.pcap"))
	lab, _ := filepath.Glob(filepath.Join(dir, "lab", "*.pcap"))
	files = append(files, lab...)
	var total, nsec int
	for _, file := range files {
		c, err := OpenFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if c.rec == nil {
			t.Fatalf("%s: not read by the pcap record reader", file)
		}
		if c.rec.factor == 1 {
			nsec++
		}
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		ref, err := pcapgo.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		for n := 1; ; n++ {
			data, ci, _, err := c.Next()
			want, wci, werr := ref.ReadPacketData()
			if werr == io.EOF {
				if err != io.EOF {
					t.Fatalf("%s record %d: %v, pcapgo io.EOF", file, n, err)
				}
				break
			}
			if werr != nil || err != nil {
				t.Fatalf("%s record %d: %v, pcapgo %v", file, n, err, werr)
			}
			if !bytes.Equal(data, want) || !ci.Timestamp.Equal(wci.Timestamp) || ci.CaptureLength != wci.CaptureLength ||
				ci.Length != wci.Length {
				t.Fatalf("%s record %d: %v %d/%d, pcapgo %v %d/%d", file, n, ci.Timestamp, ci.CaptureLength, ci.Length,
					wci.Timestamp, wci.CaptureLength, wci.Length)
			}
			total++
		}
		c.Close()
		f.Close()
	}
	if total < 50000 || nsec == 0 {
		t.Fatalf("%d records in %d files (%d nanosecond files) compared", total, len(files), nsec)
	}
}

// testSnap is the snap length of pcapFile's files: more than the 1 MiB
// buffer of File, so that a record longer than that buffer is read too.
const testSnap = 2000000

// pcapFile builds a pcap file by hand: big-endian when be, nanosecond
// timestamps when ns, the given records (captured bytes; original length
// = captured + extra).
func pcapFile(be, ns bool, extra int, recs ...[]byte) []byte {
	var o binary.AppendByteOrder = binary.LittleEndian
	if be {
		o = binary.BigEndian
	}
	magic := uint32(0xa1b2c3d4)
	if ns {
		magic = 0xa1b23c4d
	}
	b := o.AppendUint32(nil, magic)
	b = o.AppendUint16(b, 2)
	b = o.AppendUint16(b, 4)
	b = append(b, make([]byte, 8)...)
	b = o.AppendUint32(b, testSnap)
	b = o.AppendUint32(b, 1) // Ethernet
	for i, r := range recs {
		b = o.AppendUint32(b, 1700000000+uint32(i))
		b = o.AppendUint32(b, 123456+uint32(i))
		b = o.AppendUint32(b, uint32(len(r)))
		b = o.AppendUint32(b, uint32(len(r)+extra))
		b = append(b, r...)
	}
	return b
}

// TestPCAPRecordsByteOrderAndCuts: big- and little-endian files with µs
// and ns timestamps give the times and lengths written into them; a file
// cut at every byte after its header gives the whole records before the
// cut, then io.EOF at a record boundary and otherwise a *ReadError naming
// the cut record, its offset and io.ErrUnexpectedEOF (also when the record
// header is whole and its data is missing altogether); a record longer than
// the original length or than the snap length is an error.
func TestPCAPRecordsByteOrderAndCuts(t *testing.T) {
	defer func(n int) { prefetchBlockBytes = n }(prefetchBlockBytes)
	dir := t.TempDir()
	for _, big := range []bool{false, true} {
		// big: a first record of 1.1 MB, so that the records after it come
		// out of ReadAhead's blocks (of 7 or 64 bytes) rather than the
		// reader's first buffer
		recs := [][]byte{bytes.Repeat([]byte{1}, 60), bytes.Repeat([]byte{2}, 14), bytes.Repeat([]byte{3}, 100)}
		if big {
			recs = append([][]byte{bytes.Repeat([]byte{9}, 1100000)}, recs...)
		}
		for _, be := range []bool{false, true} {
			for _, ns := range []bool{false, true} {
				if big && (be || ns) {
					continue // the byte orders and resolutions are the small file's business
				}
				file := pcapFile(be, ns, 4, recs...)
				ends := []int{24} // offsets where records end
				for _, r := range recs {
					ends = append(ends, ends[len(ends)-1]+16+len(r))
				}
				from := 24
				if big {
					from = ends[1] - 20
				}
				for cut := from; cut <= len(file); cut++ {
					path := filepath.Join(dir, "f.pcap")
					if err := os.WriteFile(path, file[:cut], 0o644); err != nil {
						t.Fatal(err)
					}
					for _, block := range []int{0, 7, 64} {
						if block > 0 && !big {
							continue
						}
						prefetchBlockBytes = block
						c, err := OpenFile(path)
						if err != nil {
							t.Fatal(err)
						}
						var src Source = c
						if block > 0 {
							src = ReadAhead(c)
						}
						where := fmt.Sprintf("big %v be %v ns %v cut %d block %d", big, be, ns, cut, block)
						readCut(t, where, src, recs, ends, cut, ns)
						src.Close()
					}
				}
			}
		}
	}
	// captured > original, and captured > the snap length bound
	for name, file := range map[string][]byte{
		"capture length exceeds original packet length": pcapFile(false, false, -1, make([]byte, 60)),
		"capture length exceeds snap length":            pcapFile(false, false, 0, make([]byte, testSnap+1)),
	} {
		path := filepath.Join(dir, "bad.pcap")
		if err := os.WriteFile(path, file, 0o644); err != nil {
			t.Fatal(err)
		}
		c, err := OpenFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, _, _, err = c.Next()
		var re *ReadError
		if !errors.As(err, &re) || !strings.Contains(err.Error(), name) || re.Offset != 24 {
			t.Errorf("%s: %v", name, err)
		}
		c.Close()
	}
}

// readCut reads src, the first cut bytes of a file of recs (written by
// pcapFile with 4 extra original bytes, records ending at ends), and checks
// what comes out: every whole record, then io.EOF at a record boundary or
// a *ReadError with io.ErrUnexpectedEOF naming the cut record.
func readCut(t *testing.T, where string, src Source, recs [][]byte, ends []int, cut int, ns bool) {
	t.Helper()
	for n := 0; ; n++ {
		data, ci, _, err := src.Next()
		if err != nil {
			whole := 0
			for whole+1 < len(ends) && ends[whole+1] <= cut {
				whole++
			}
			if n != whole {
				t.Fatalf("%s: %d records, want %d", where, n, whole)
			}
			var re *ReadError
			switch {
			case cut == ends[whole]:
				if err != io.EOF {
					t.Fatalf("%s, at a record boundary: %v, want io.EOF", where, err)
				}
			case !errors.As(err, &re) || !errors.Is(err, io.ErrUnexpectedEOF) || re.Packet != uint64(whole+1) ||
				re.Offset != int64(ends[whole]):
				t.Fatalf("%s: %v, want a ReadError for record %d at offset %d", where, err, whole+1, ends[whole])
			}
			return
		}
		frac := time.Duration(123456 + n)
		if !ns {
			frac *= time.Microsecond
		}
		want := time.Unix(int64(1700000000+n), int64(frac))
		if !bytes.Equal(data, recs[n]) || !ci.Timestamp.Equal(want) || ci.CaptureLength != len(recs[n]) ||
			ci.Length != len(recs[n])+4 {
			t.Fatalf("%s record %d: %v %d/%d", where, n, ci.Timestamp, ci.CaptureLength, ci.Length)
		}
	}
}
