package schema

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// FlowID is a flow record's id and primary key (DESIGN.md: "a flow record:
// sensor, flow key, start, record index"): the first 16 bytes of SHA-256 over
// those fields, as 32 hex characters. flowStartNs is the start of the flow's
// first record, so every record of one flow shares it.
func FlowID(sensor string, proto uint32, origAddr []byte, origPort uint32, respAddr []byte, respPort uint32,
	vlan, innerVlan, tunnelID uint32, flowStartNs int64, recordIndex uint32) string {
	h := sha256.New()
	var b [8]byte
	h.Write([]byte(sensor))
	h.Write([]byte{0, byte(proto), byte(len(origAddr))})
	h.Write(origAddr)
	binary.BigEndian.PutUint32(b[:4], origPort)
	h.Write(b[:4])
	h.Write([]byte{byte(len(respAddr))})
	h.Write(respAddr)
	binary.BigEndian.PutUint32(b[:4], respPort)
	h.Write(b[:4])
	for _, v := range []uint32{vlan, innerVlan, tunnelID, recordIndex} {
		binary.BigEndian.PutUint32(b[:4], v)
		h.Write(b[:4])
	}
	binary.BigEndian.PutUint64(b[:], uint64(flowStartNs))
	h.Write(b[:])
	sum := h.Sum(nil)
	return hex.EncodeToString(sum[:16])
}

// AlertID is an alert's id and primary key (DESIGN.md: "an alert: rule,
// originator, target, window", plus the sensor, so that two sensors that see
// the same attack each keep their alert): 32 hex characters of SHA-256.
// Addresses are in text form, empty when many; the window is in Unix
// nanoseconds.
func AlertID(sensor, rule, orig, target string, windowStartNs int64) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s|%s|%s|%s|%d", sensor, rule, orig, target, windowStartNs)))
	return hex.EncodeToString(sum[:16])
}

// BatchID is the Nats-Msg-Id of a message that carries several records: the
// first 16 bytes of SHA-256 over their ids in order, hex.
func BatchID(ids []string) string {
	h := sha256.New()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// PacketBatchID is the Nats-Msg-Id of a PACKETS message: sensor.boot.seq.
func PacketBatchID(sensor, boot string, seq uint64) string {
	return fmt.Sprintf("%s.%s.%d", sensor, boot, seq)
}
