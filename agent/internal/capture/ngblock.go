package capture

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// BlockError is a pcapng block whose framing is corrupt: its leading block
// total length is not a multiple of 4 or below the 12-byte minimum, or its
// trailing block total length differs from the leading one (pcapng,
// draft-ietf-opsawg-pcapng section 3.1: both fields hold the same value).
// Everything before the block was read. Its message leaves the offset to
// the *ReadError (or open error) that carries it.
type BlockError struct {
	Offset   int64  // byte offset of the block in the file (decompressed for gzip)
	Type     uint32 // block type
	Leading  uint32 // leading block total length, bytes
	Trailing uint32 // trailing block total length, bytes; 0 when the leading one was already invalid
}

func (e *BlockError) Error() string {
	if e.Trailing == 0 && (e.Leading < 12 || e.Leading%4 != 0) {
		return fmt.Sprintf("pcapng %s (type 0x%08x): block total length %d is not a multiple of 4 of at least 12: corrupt file",
			blockName(e.Type), e.Type, e.Leading)
	}
	return fmt.Sprintf("pcapng %s (type 0x%08x): trailing block total length %d differs from the leading %d: corrupt file",
		blockName(e.Type), e.Type, e.Trailing, e.Leading)
}

// blockName names the block types of the pcapng specification
// (draft-ietf-opsawg-pcapng section 10.1).
func blockName(t uint32) string {
	switch t {
	case 0x0a0d0d0a:
		return "Section Header Block"
	case 1:
		return "Interface Description Block"
	case 2:
		return "Packet Block"
	case 3:
		return "Simple Packet Block"
	case 4:
		return "Name Resolution Block"
	case 5:
		return "Interface Statistics Block"
	case 6:
		return "Enhanced Packet Block"
	case 0x0a:
		return "Decryption Secrets Block"
	case 0x0bad, 0x40000bad:
		return "Custom Block"
	}
	return "block"
}

// ngCheck hands a pcapng stream through unchanged, block by block, and
// stops with a *BlockError before the trailing length of a block whose
// framing is corrupt, which gopacket's pcapgo.NgReader skips without
// reading. A stream cut short is handed through as it is: the reader
// reports it (io.ErrUnexpectedEOF).
type ngCheck struct {
	r     *bufio.Reader // the file's bytes (decompressed for gzip)
	off   int64         // offset of the next byte handed out
	order binary.ByteOrder
	// the current block: its offset, type and leading total length; pass
	// is how many of its bytes are still to hand out before the next
	// check, trailer whether those are its trailing length (checked)
	start   int64
	typ     uint32
	total   uint32
	pass    int64
	trailer bool
	inBlock bool
	err     *BlockError
}

func newNgCheck(r *bufio.Reader) *ngCheck {
	return &ngCheck{r: r, order: binary.LittleEndian}
}

// Read implements io.Reader. It returns at least one byte or an error, and
// reads from the source more than once only while bytes are buffered, so a
// pipe's data is handed on as it arrives.
func (k *ngCheck) Read(p []byte) (int, error) {
	n, idle := 0, 0
	for n < len(p) {
		if n > 0 && k.r.Buffered() == 0 {
			break
		}
		if m := k.whole(p[n:]); m > 0 {
			n += m
			idle = 0
			continue
		}
		m, err := k.step(p[n:])
		n += m
		if m == 0 && err == nil {
			// a check moves to the next state; more than two in a row
			// means the source gave nothing without an error
			if idle++; idle > 2 {
				if n > 0 {
					return n, nil
				}
				return 0, io.ErrNoProgress
			}
			continue
		}
		idle = 0
		if err != nil {
			if n > 0 {
				return n, nil // the error comes back on the next call
			}
			return 0, err
		}
	}
	return n, nil
}

// whole hands out one whole block at once when it is buffered, fits in p,
// is not a Section Header Block and its framing is right (the common case);
// else it returns 0 and step takes over.
func (k *ngCheck) whole(p []byte) int {
	if k.err != nil || k.inBlock || k.pass > 0 || k.r.Buffered() < 12 {
		return 0
	}
	h, _ := k.r.Peek(8)
	total := int(k.order.Uint32(h[4:8]))
	if k.order.Uint32(h[0:4]) == 0x0a0d0d0a || total < 12 || total%4 != 0 || total > len(p) || total > k.r.Buffered() {
		return 0
	}
	b, _ := k.r.Peek(total)
	if k.order.Uint32(b[total-4:]) != uint32(total) {
		return 0
	}
	copy(p, b)
	_, _ = k.r.Discard(total)
	k.off += int64(total)
	return total
}

// step hands out bytes of one state, or checks a block's framing.
func (k *ngCheck) step(p []byte) (int, error) {
	if k.err != nil {
		return 0, k.err
	}
	if k.pass > 0 {
		m, err := k.r.Read(p[:min(int64(len(p)), k.pass)])
		k.pass -= int64(m)
		k.off += int64(m)
		if k.pass == 0 && k.trailer {
			k.inBlock, k.trailer = false, false
		}
		return m, err
	}
	if k.inBlock { // the block's body was handed out: check its trailing length
		t, err := k.r.Peek(4)
		if len(t) < 4 {
			return k.raw(p, err)
		}
		if tr := k.order.Uint32(t); tr != k.total {
			k.err = &BlockError{Offset: k.start, Type: k.typ, Leading: k.total, Trailing: tr}
			return 0, k.err
		}
		k.pass, k.trailer = 4, true
		return 0, nil
	}
	h, err := k.r.Peek(8)
	if len(h) < 8 {
		return k.raw(p, err)
	}
	typ := k.order.Uint32(h[0:4])
	if typ == 0x0a0d0d0a { // Section Header Block: its byte-order magic sets the order
		s, err := k.r.Peek(12)
		if len(s) < 12 {
			return k.raw(p, err)
		}
		switch binary.LittleEndian.Uint32(s[8:12]) {
		case 0x1a2b3c4d:
			k.order = binary.LittleEndian
		case 0x4d3c2b1a:
			k.order = binary.BigEndian
		default:
			return k.raw(p, nil) // not pcapng: the reader says so
		}
	}
	k.start, k.typ, k.total = k.off, typ, k.order.Uint32(h[4:8])
	if k.total < 12 || k.total%4 != 0 {
		k.err = &BlockError{Offset: k.start, Type: typ, Leading: k.total}
		return 0, k.err
	}
	k.inBlock, k.pass = true, int64(k.total)-4
	return 0, nil
}

// raw hands out what is left without checking it (a stream cut short, or
// not pcapng), then err.
func (k *ngCheck) raw(p []byte, err error) (int, error) {
	m, rerr := k.r.Read(p)
	k.off += int64(m)
	if m > 0 {
		return m, nil
	}
	if rerr != nil {
		return 0, rerr
	}
	return 0, err
}
