package server_test

import (
	"encoding/hex"
	"strings"
)

// Since sink migration 00011 flows.id is a uuid: the pipeline's ids are 32
// hex digits (schema.FlowID). The tests name their flows with short labels
// ("id3") and store them as tid(label), the label's bytes in hex padded
// with zeros; untid reads a label back from the api's 32-hex id. Both keep
// the labels' order.

// tid is label (at most 16 bytes) as a 32-hex-digit flow id.
func tid(label string) string {
	h := hex.EncodeToString([]byte(label))
	return h + strings.Repeat("0", 32-len(h))
}

// untid is the label of a tid id; any other id as it is.
func untid(id string) string {
	b, err := hex.DecodeString(id)
	if err != nil || len(id) != 32 {
		return id
	}
	return strings.TrimRight(string(b), "\x00")
}
