package flow

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"

	"netwatch/schema/pb"
)

// Pos is a packet's place in its bucket's input: the stream sequence of
// the message that carried it and its index in that message's batch.
// Positions of one (sensor, bucket) grow with the stream order.
type Pos struct {
	Seq uint64 `json:"seq"`
	Idx uint32 `json:"idx"`
}

// Less reports whether p comes before q.
func (p Pos) Less(q Pos) bool { return p.Seq < q.Seq || p.Seq == q.Seq && p.Idx < q.Idx }

// Checkpoint is a flow's state after a published record, so that a table
// rebuilding the flow from a replayed suffix of its bucket's messages gives
// the records the ids (flow_start_ns, record_index) and contents the first
// table gave them. Key is the flow key's hash (hex, 32 characters; a
// key-value store key token), Data the FlowState as JSON.
type Checkpoint struct {
	Key  string
	Data []byte
}

// FlowState is a checkpoint's content. For an interim record (Done false)
// Pos is the position of the packet that started the open record and the
// fields are the flow's state just before that packet; a replay skips the
// flow's packets before Pos and continues the flow at Pos. For a final
// record (Done true) Pos is the flow's last packet; a replay skips the
// flow's packets up to and including Pos (a later packet of the same key
// is a new flow).
type FlowState struct {
	Epoch     int64        `json:"epoch,omitempty"` // Config.Epoch of the table that made it
	Pos       Pos          `json:"pos"`
	Done      bool         `json:"done,omitempty"`
	Key       Key          `json:"key"`
	OrigIsA   bool         `json:"orig_is_a,omitempty"`
	Guessed   bool         `json:"guessed,omitempty"`
	Flipped   bool         `json:"flipped,omitempty"`
	FlowStart int64        `json:"flow_start_ns"`
	RecStart  int64        `json:"rec_start_ns"`
	Last      int64        `json:"last_ns"`
	RecIndex  uint32       `json:"record_index"`
	AllFlags  [2]uint32    `json:"all_flags"`
	Letters   [2]uint8     `json:"letters"`
	Hist      string       `json:"history"`
	ICMPType  uint8        `json:"icmp_type,omitempty"`
	ICMPCode  uint8        `json:"icmp_code,omitempty"`
	ICMPOrig  bool         `json:"icmp_orig,omitempty"`
	App       string       `json:"app,omitempty"`
	Server    string       `json:"server,omitempty"`
	JA3       string       `json:"ja3,omitempty"`
	JA4       string       `json:"ja4,omitempty"`
	UserAgent string       `json:"user_agent,omitempty"`
	DNSQtype  uint16       `json:"dns_qtype,omitempty"`
	DNSRcode  uint8        `json:"dns_rcode,omitempty"`
	DNSResp   bool         `json:"dns_resp,omitempty"`
	CIDSum    []byte       `json:"cid_sum"`
	CID       string       `json:"cid,omitempty"`
	Direction string       `json:"direction,omitempty"`
	RespAny   bool         `json:"resp_any,omitempty"`
	Closing   bool         `json:"closing,omitempty"`
	CloseAt   int64        `json:"close_at_ns,omitempty"`
	Reason    pb.EndReason `json:"reason,omitempty"`
	InitWin   [2]uint32    `json:"init_win,omitempty"`
	WinSet    [2]bool      `json:"win_set,omitempty"`
}

// KeyHash is the hex SHA-256 (first 16 bytes) of a flow key: the last
// token of its checkpoint's key-value key.
func KeyHash(k Key) string {
	h := sha256.New()
	_ = binary.Write(h, binary.BigEndian, k) // fixed-size struct: cannot fail
	s := h.Sum(nil)
	return hex.EncodeToString(s[:16])
}

// checkpoint returns e's checkpoint at pos.
func (t *Table) checkpoint(e *entry, pos Pos, done bool) *Checkpoint {
	st := FlowState{Epoch: t.cfg.Epoch, Pos: pos, Done: done, Key: e.key}
	if !done {
		st.OrigIsA, st.Guessed, st.Flipped = e.origIsA, e.guessed, e.flipped
		st.FlowStart, st.RecStart, st.Last, st.RecIndex = e.flowStart, e.recStart, e.last, e.recIndex
		st.AllFlags, st.Letters, st.Hist = e.allFlags, e.letters, string(e.hist[:e.histLen])
		st.ICMPType, st.ICMPCode, st.ICMPOrig = e.icmpType, e.icmpCode, e.icmpOrig
		st.App, st.Server, st.JA3, st.JA4, st.UserAgent = e.app, e.server, e.ja3, e.ja4, e.userAgent
		st.DNSQtype, st.DNSRcode, st.DNSResp = e.dnsQtype, e.dnsRcode, e.dnsResp
		st.CIDSum, st.CID, st.Direction, st.RespAny = e.cidSum[:], e.cid, e.direction, e.respAny
		st.Closing, st.CloseAt, st.Reason = e.closing, e.closeAt, e.reason
		if e.st != nil {
			for d := range e.st.dir {
				st.InitWin[d], st.WinSet[d] = e.st.dir[d].initWin, e.st.dir[d].winSet
			}
		}
	}
	data, _ := json.Marshal(&st) // plain values: cannot fail
	t.Checkpoints++
	return &Checkpoint{Key: KeyHash(e.key), Data: data}
}

// ParseFlowState decodes a Checkpoint's Data.
func ParseFlowState(data []byte) (*FlowState, error) {
	var st FlowState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Resume makes the table continue flows from checkpoints while it is fed a
// replayed suffix of its bucket's messages (AddAt): a flow's packets before
// its checkpoint's position are skipped (counted in Replayed), an interim
// checkpoint's flow continues at its position with the record index and
// flow start it had. Call it before the first AddAt.
func (t *Table) Resume(states []*FlowState) {
	if len(states) == 0 {
		return
	}
	if t.resume == nil {
		t.resume = make(map[Key]*FlowState, len(states))
	}
	for _, st := range states {
		if old := t.resume[st.Key]; old == nil || old.Pos.Less(st.Pos) {
			t.resume[st.Key] = st
		}
	}
}

// restore opens the flow of an interim checkpoint.
func (t *Table) restore(st *FlowState) *entry {
	if l := t.cfg.Limit; l != nil {
		if l.Max > 0 && l.Open >= l.Max && len(t.flows) > 0 {
			t.evict()
		}
		l.Open++
	}
	e := new(entry)
	*e = entry{key: st.Key, origIsA: st.OrigIsA, guessed: st.Guessed, flipped: st.Flipped,
		flowStart: st.FlowStart, recStart: st.RecStart, recLast: st.RecStart, last: st.Last, recIndex: st.RecIndex,
		allFlags: st.AllFlags, letters: st.Letters, icmpType: st.ICMPType, icmpCode: st.ICMPCode, icmpOrig: st.ICMPOrig,
		app: st.App, server: st.Server, ja3: st.JA3, ja4: st.JA4, userAgent: st.UserAgent, cid: st.CID,
		dnsQtype: st.DNSQtype, dnsRcode: st.DNSRcode, dnsResp: st.DNSResp,
		direction: st.Direction, respAny: st.RespAny, closing: st.Closing, closeAt: st.CloseAt, reason: st.Reason,
		class: classOf(st.Key.Proto)}
	e.histLen = uint8(copy(e.hist[:], st.Hist))
	copy(e.cidSum[:], st.CIDSum)
	if t.cfg.Features {
		e.st = new(stats)
		for d := range e.st.dir {
			e.st.dir[d].initWin, e.st.dir[d].winSet = st.InitWin[d], st.WinSet[d]
		}
	}
	t.idle[e.class].pushBack(e)
	if e.closing {
		t.closing.pushBack(e)
	}
	t.flows[st.Key] = e
	return e
}
