package capture

import (
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"netwatch/testkit"
)

// order is a byte order that can append.
type order interface {
	binary.ByteOrder
	binary.AppendByteOrder
}

// ngFile builds a pcapng file by hand (pcapng spec sections 4.1, 4.2, 4.3)
// in byte order o: a Section Header Block, an Ethernet Interface Description
// Block and one Enhanced Packet Block per frame. fix may change a block's
// trailing or leading length (index 0 = SHB, 1 = IDB, 2.. = EPBs) before it
// is written. It returns the file and each block's byte offset.
func ngFile(t *testing.T, o order, frames [][]byte, fix func(i int, b []byte)) (string, []int64) {
	t.Helper()
	block := func(typ uint32, body []byte) []byte {
		n := 12 + len(body)
		b := o.AppendUint32(nil, typ)
		b = o.AppendUint32(b, uint32(n))
		b = append(b, body...)
		return o.AppendUint32(b, uint32(n))
	}
	shb := o.AppendUint32(nil, 0x1a2b3c4d)
	shb = o.AppendUint16(shb, 1)
	shb = o.AppendUint16(shb, 0)
	shb = o.AppendUint64(shb, ^uint64(0)) // section length unknown
	idb := o.AppendUint16(nil, 1)         // LINKTYPE_ETHERNET
	idb = o.AppendUint16(idb, 0)
	idb = o.AppendUint32(idb, 0) // snaplen: none
	blocks := [][]byte{block(0x0a0d0d0a, shb), block(1, idb)}
	for i, f := range frames {
		epb := o.AppendUint32(nil, 0)
		ts := uint64(1_700_000_000_000_000 + i) // µs (no if_tsresol)
		epb = o.AppendUint32(epb, uint32(ts>>32))
		epb = o.AppendUint32(epb, uint32(ts))
		epb = o.AppendUint32(epb, uint32(len(f)))
		epb = o.AppendUint32(epb, uint32(len(f)))
		epb = append(epb, f...)
		for len(epb)%4 != 0 {
			epb = append(epb, 0)
		}
		blocks = append(blocks, block(6, epb))
	}
	var out []byte
	var offs []int64
	for i, b := range blocks {
		if fix != nil {
			fix(i, b)
		}
		offs = append(offs, int64(len(out)))
		out = append(out, b...)
	}
	file := filepath.Join(t.TempDir(), "crafted.pcapng")
	if err := os.WriteFile(file, out, 0o644); err != nil {
		t.Fatal(err)
	}
	return file, offs
}

// readAll reads every frame of file through OpenFile/Next (ReadAhead too
// when ahead) and returns the frames' first bytes and the error that ended it.
func readAll(t *testing.T, file string, ahead bool) ([]byte, error) {
	t.Helper()
	r, err := Open(file, nil)
	if err != nil {
		return nil, err
	}
	if ahead {
		r = ReadAhead(r)
	}
	defer r.Close()
	var got []byte
	for {
		data, _, _, err := r.Next()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return got, err
		}
		got = append(got, data[0])
	}
}

// tsharkFrames is how many frames tshark reads from file before it stops,
// and whether it reported the file damaged.
func tsharkFrames(t *testing.T, file string) (int, bool) {
	out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", file, "-T", "fields", "-e", "frame.number").CombinedOutput()
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && l[0] >= '0' && l[0] <= '9' {
			n++
		}
	}
	return n, err != nil || strings.Contains(string(out), "corrupt") || strings.Contains(string(out), "damaged")
}

// TestPcapngBlockLengthMismatch (issue 3): a pcapng block whose trailing
// block total length differs from its leading one, or whose leading one is
// not a multiple of 4, is a corrupt file: the frames before it are read, then
// a *ReadError names the block (type, offset, both lengths) and the packet
// number, in either byte order, with and without read-ahead. gopacket's
// NgReader alone skips the trailing length unread: before the check, the
// first file gave all 3 frames and no error. tshark agrees on each file
// (frames before the block, and "damaged or corrupt").
func TestPcapngBlockLengthMismatch(t *testing.T) {
	frames := [][]byte{make([]byte, 60), make([]byte, 61), make([]byte, 62)}
	for i := range frames {
		frames[i][0] = byte(0xa1 + i)
	}
	for _, tc := range []struct {
		name     string
		order    order
		bad      int // block index, -1 none
		leading  int // added to the leading length of block bad; 0: trailing + 4 instead
		want     int // frames before the error
		packet   uint64
		wantType uint32
	}{
		{"trailing EPB 2 little-endian", binary.LittleEndian, 3, 0, 1, 2, 6},
		{"trailing EPB 2 big-endian", binary.BigEndian, 3, 0, 1, 2, 6},
		{"trailing IDB", binary.LittleEndian, 1, 0, 0, 1, 1},
		{"leading EPB 2 + 8", binary.LittleEndian, 3, 8, 1, 2, 6},
		// tshark 4.0 reads this one whole (its pcapng dissector's expert
		// info says "Block length is not a multiple of 4"); pcapng section
		// 3.1 pads every block to 32 bits
		{"leading EPB 3 - 2, not a multiple of 4", binary.BigEndian, 4, -2, 2, 3, 6},
		{"whole big-endian file", binary.BigEndian, -1, 0, 3, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lead, trail uint32
			file, offs := ngFile(t, tc.order, frames, func(i int, b []byte) {
				switch {
				case i == tc.bad && tc.leading != 0:
					lead = uint32(int(tc.order.Uint32(b[4:8])) + tc.leading)
					tc.order.PutUint32(b[4:8], lead)
				case i == tc.bad:
					lead = tc.order.Uint32(b[4:8])
					trail = lead + 4
					tc.order.PutUint32(b[len(b)-4:], trail)
				case i == tc.bad+1 && tc.leading == 8:
					// read where the trailer should be: the next block's leading length
					trail = tc.order.Uint32(b[4:8])
				}
			})
			if tc.leading >= 0 {
				n, damaged := tsharkFrames(t, file)
				if n != tc.want || damaged != (tc.bad >= 0) {
					t.Fatalf("tshark: %d frames, damaged %v; the test expects %d, %v", n, damaged, tc.want, tc.bad >= 0)
				}
			}
			for _, ahead := range []bool{false, true} {
				got, err := readAll(t, file, ahead)
				if len(got) != tc.want {
					t.Errorf("ahead %v: %d frames %x before the error, want %d", ahead, len(got), got, tc.want)
				}
				for i, b := range got {
					if b != byte(0xa1+i) {
						t.Errorf("ahead %v: frame %d starts %#x", ahead, i+1, b)
					}
				}
				if tc.bad < 0 {
					if err != nil {
						t.Errorf("ahead %v: %v", ahead, err)
					}
					continue
				}
				var re *ReadError
				var be *BlockError
				if !errors.As(err, &re) || !errors.As(err, &be) {
					t.Fatalf("ahead %v: error %v, want a *ReadError with a *BlockError", ahead, err)
				}
				if re.Packet != tc.packet || re.Offset != offs[tc.bad] || be.Offset != offs[tc.bad] || be.Type != tc.wantType ||
					be.Leading != lead || be.Trailing != trail {
					t.Errorf("ahead %v: %v (packet %d, offset %d, block %+v); want packet %d, offset %d, type %d, lengths %d/%d",
						ahead, err, re.Packet, re.Offset, *be, tc.packet, offs[tc.bad], tc.wantType, lead, trail)
				}
				if !strings.Contains(err.Error(), "corrupt file") || !strings.Contains(err.Error(), "pcapng ") {
					t.Errorf("message %q", err)
				}
			}
		})
	}
}
