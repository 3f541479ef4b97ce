package e2e

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// PcapRecord is where one packet record of a classic pcap file lies.
type PcapRecord struct {
	Offset int64 // byte offset of the 16-byte record header
	Len    int   // captured length (incl_len)
}

// PcapRecords lists the records of a classic pcap file (either byte order,
// µs or ns magic).
func PcapRecords(b []byte) (binary.ByteOrder, []PcapRecord, error) {
	if len(b) < 24 {
		return nil, nil, errors.New("shorter than a pcap header")
	}
	var bo binary.ByteOrder
	switch binary.LittleEndian.Uint32(b) {
	case 0xa1b2c3d4, 0xa1b23c4d:
		bo = binary.LittleEndian
	case 0xd4c3b2a1, 0x4d3cb2a1:
		bo = binary.BigEndian
	default:
		return nil, nil, fmt.Errorf("not a classic pcap file (magic %x)", b[:4])
	}
	var recs []PcapRecord
	for off := int64(24); off < int64(len(b)); {
		if off+16 > int64(len(b)) {
			return bo, recs, fmt.Errorf("record header at %d cut short", off)
		}
		n := int(bo.Uint32(b[off+8:]))
		recs = append(recs, PcapRecord{Offset: off, Len: n})
		off += 16 + int64(n)
	}
	return bo, recs, nil
}

// Damage describes a damaged copy of a capture.
type Damage struct {
	Damaged string // the damaged file
	Prefix  string // a valid file with the packets before the damage
	Packet  int    // 1-based number of the damaged packet
	Offset  int64  // byte offset of its record header
}

// Truncate writes a copy of src cut in the middle of packet n's data, and
// the intact prefix of packets 1..n-1.
func Truncate(src, dir string, n int) (Damage, error) {
	return damage(src, dir, n, "truncated", func(b []byte, bo binary.ByteOrder, r PcapRecord) []byte {
		return b[:r.Offset+16+int64(r.Len/2)]
	})
}

// CorruptLength writes a copy of src whose packet n has a record header
// claiming 0x7ffffff0 captured bytes (far over any snaplen), and the prefix.
func CorruptLength(src, dir string, n int) (Damage, error) {
	return damage(src, dir, n, "badlen", func(b []byte, bo binary.ByteOrder, r PcapRecord) []byte {
		c := append([]byte(nil), b...)
		bo.PutUint32(c[r.Offset+8:], 0x7ffffff0)
		return c
	})
}

func damage(src, dir string, n int, kind string, f func([]byte, binary.ByteOrder, PcapRecord) []byte) (Damage, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return Damage{}, err
	}
	bo, recs, err := PcapRecords(b)
	if err != nil {
		return Damage{}, fmt.Errorf("%s: %w", src, err)
	}
	if n < 2 || n > len(recs) {
		return Damage{}, fmt.Errorf("%s has %d packets, cannot damage packet %d", src, len(recs), n)
	}
	r := recs[n-1]
	d := Damage{Damaged: fmt.Sprintf("%s/%s-%d.pcap", dir, kind, n), Prefix: fmt.Sprintf("%s/%s-%d-prefix.pcap", dir, kind, n), Packet: n, Offset: r.Offset}
	if err := os.WriteFile(d.Damaged, f(b, bo, r), 0o644); err != nil {
		return d, err
	}
	return d, os.WriteFile(d.Prefix, b[:r.Offset], 0o644)
}
