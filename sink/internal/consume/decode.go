package consume

import (
	"errors"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"netwatch/sink/internal/store"
)

// errBadWire is a message that is not protobuf at all.
var errBadWire = errors.New("malformed protobuf wire data")

// unmarshal decodes b into m. Go's protobuf rejects a proto3 string field
// holding invalid UTF-8, which would lose the whole message (a batch of
// flows) for one bad DNS name or user agent; such a message is decoded again
// after its string fields are repaired by the sink's text rule (each byte of
// invalid UTF-8 becomes \xNN, store.Text). repaired reports that.
func unmarshal(b []byte, m proto.Message) (repaired bool, err error) {
	err = proto.Unmarshal(b, m)
	if err == nil {
		return false, nil
	}
	fixed, changed, ferr := fixStrings(b, m.ProtoReflect().Descriptor(), 0)
	if ferr != nil || !changed {
		return false, err
	}
	proto.Reset(m)
	if err2 := proto.Unmarshal(fixed, m); err2 != nil {
		return false, err
	}
	return true, nil
}

// fixStrings copies the wire message b of type md with every string field
// (in nested messages and map entries too) that is not valid UTF-8 replaced
// by store.Text of it. Unknown fields and other types are copied as they are.
func fixStrings(b []byte, md protoreflect.MessageDescriptor, depth int) ([]byte, bool, error) {
	if depth > 100 {
		return nil, false, errBadWire
	}
	out := make([]byte, 0, len(b)+16)
	changed := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false, errBadWire
		}
		tag := b[:n]
		b = b[n:]
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return nil, false, errBadWire
			}
			out = append(out, tag...)
			out = append(out, b[:m]...)
			b = b[m:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return nil, false, errBadWire
		}
		b = b[m:]
		if fd := md.Fields().ByNumber(num); fd != nil {
			switch fd.Kind() {
			case protoreflect.StringKind:
				if !utf8.Valid(v) {
					v = []byte(store.Text(string(v)))
					changed = true
				}
			case protoreflect.MessageKind, protoreflect.GroupKind:
				sub, c, err := fixStrings(v, fd.Message(), depth+1)
				if err != nil {
					return nil, false, err
				}
				v, changed = sub, changed || c
			}
		}
		out = append(out, tag...)
		out = protowire.AppendBytes(out, v)
	}
	return out, changed, nil
}
