package stage

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"netwatch/schema/pb"
)

// fullFlow sets every field the descriptor of pb.Flow lists to a value
// derived from i (so a field added to schema/proto is set here without
// editing the test).
func fullFlow(i int) *pb.Flow {
	f := &pb.Flow{}
	m := f.ProtoReflect()
	fds := m.Descriptor().Fields()
	for j := 0; j < fds.Len(); j++ {
		fd := fds.Get(j)
		v := i*100 + j + 1
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(protoreflect.ValueOfString("k1").MapKey(), protoreflect.ValueOfFloat64(float64(v)+0.5))
			mp.Set(protoreflect.ValueOfString("k2").MapKey(), protoreflect.ValueOfFloat64(-1))
			continue
		case fd.Kind() == protoreflect.StringKind:
			m.Set(fd, protoreflect.ValueOfString(string(rune('a'+j%26))+"é-"+string(rune('A'+i%26))))
		case fd.Kind() == protoreflect.BytesKind:
			m.Set(fd, protoreflect.ValueOfBytes([]byte{10, byte(j), byte(i), byte(v)}))
		case fd.Kind() == protoreflect.BoolKind:
			m.Set(fd, protoreflect.ValueOfBool(true))
		case fd.Kind() == protoreflect.EnumKind:
			vals := fd.Enum().Values()
			m.Set(fd, protoreflect.ValueOfEnum(vals.Get(vals.Len()-1).Number()))
		case fd.Kind() == protoreflect.Uint32Kind:
			m.Set(fd, protoreflect.ValueOfUint32(uint32(v)))
		case fd.Kind() == protoreflect.Uint64Kind:
			m.Set(fd, protoreflect.ValueOfUint64(uint64(v)<<33))
		case fd.Kind() == protoreflect.Int64Kind:
			m.Set(fd, protoreflect.ValueOfInt64(-int64(v)<<40))
		case fd.Kind() == protoreflect.Int32Kind:
			m.Set(fd, protoreflect.ValueOfInt32(-int32(v)))
		case fd.Kind() == protoreflect.DoubleKind:
			m.Set(fd, protoreflect.ValueOfFloat64(float64(v)/3))
		default:
			panic("fullFlow: kind " + fd.Kind().String() + " of " + string(fd.Name()) + " not handled: add it to the test and to decoder.flow")
		}
	}
	return f
}

// TestDecoderMatchesProto: batches of flows with every field set decode
// as proto.Unmarshal decodes them, across a growth of the reused flows
// (300 > 256) and a smaller batch after a larger one (no field left over).
func TestDecoderMatchesProto(t *testing.T) {
	var d decoder
	for _, n := range []int{300, 3, 0, 257} {
		b := &pb.FlowBatch{Sensor: "s1"}
		for i := 0; i < n; i++ {
			f := fullFlow(i)
			if i%2 == 1 {
				f = &pb.Flow{Proto: 6, StartNs: int64(i)} // sparse flows after full ones
			}
			b.Flows = append(b.Flows, f)
		}
		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		var want pb.FlowBatch
		if err := proto.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		sensor, flows, err := d.decode(data)
		if err != nil {
			t.Fatalf("%d flows: %v", n, err)
		}
		if sensor != "s1" || len(flows) != n {
			t.Fatalf("sensor %q, %d flows, want s1, %d", sensor, len(flows), n)
		}
		for i, f := range flows {
			if !proto.Equal(f, want.Flows[i]) {
				t.Fatalf("batch of %d, flow %d:\n got %v\nwant %v", n, i, f, want.Flows[i])
			}
		}
	}
	// Malformed input is an error, never a panic.
	good, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1", Flows: []*pb.Flow{fullFlow(1)}})
	for cut := 1; cut < len(good); cut += 7 {
		_, _, err := d.decode(good[:cut])
		var p pb.FlowBatch
		if perr := proto.Unmarshal(good[:cut], &p); (perr == nil) != (err == nil) {
			t.Errorf("cut at %d: decoder error %v, proto.Unmarshal error %v", cut, err, perr)
		}
	}
	bad := []byte{0x12, 0x03, 0x0a, 0x01, 0xff} // flow with id = "\xff": invalid UTF-8
	if _, _, err := d.decode(bad); err == nil {
		t.Error("invalid UTF-8 accepted")
	}
}

// FuzzDecoder: whatever the input, no panic; when both the decoder and
// proto.Unmarshal accept it, they agree.
func FuzzDecoder(f *testing.F) {
	good, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1", Flows: []*pb.Flow{fullFlow(1), {Proto: 17}}})
	f.Add(good)                           // a full flow and a sparse one
	f.Add([]byte{0xff, 0xff, 0xff})       // the stage test's garbage message
	f.Add([]byte{0x12, 0x02, 0x08})       // truncated varint inside a flow
	f.Add([]byte{0x12, 0x02, 0xa2, 0x02}) // features entry cut short
	f.Fuzz(func(t *testing.T, data []byte) {
		var d decoder
		sensor, flows, err := d.decode(data)
		var p pb.FlowBatch
		if perr := proto.Unmarshal(data, &p); perr != nil || err != nil {
			return
		}
		if sensor != p.GetSensor() || len(flows) != len(p.GetFlows()) {
			t.Fatalf("sensor %q/%q, flows %d/%d", sensor, p.GetSensor(), len(flows), len(p.GetFlows()))
		}
		for i, f := range flows {
			g := proto.Clone(f).(*pb.Flow)
			w := proto.Clone(p.Flows[i]).(*pb.Flow)
			w.ProtoReflect().SetUnknown(nil)
			if !proto.Equal(g, w) {
				t.Fatalf("flow %d: %v, want %v", i, g, w)
			}
		}
	})
}
