package store

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// FuzzParseUsage: any bytes in the totals file are either refused (the totals are then unknown)
// or read as a base and close records whose sum is what the parser returns; never a panic.
func FuzzParseUsage(f *testing.F) {
	base := encodeUsageRecord(usageBase, 0, Totals{3, 300, 4096})
	open := encodeUsageRecord(usageOpen, 7, Totals{})
	closed := encodeUsageRecord(usageClose, 7, Totals{1, 10, 4096})
	f.Add(base)
	f.Add(append(append(bytes.Clone(base), open...), closed...))
	f.Add(append(bytes.Clone(base), open...))
	f.Add(append(bytes.Clone(base), closed...))
	f.Add(append(bytes.Clone(base), "KUS1"...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseUsage(b)
		if err != nil {
			return
		}
		if len(b)%usageRecLen != 0 || b[4] != usageBase {
			t.Fatalf("accepted %d bytes starting %q", len(b), b[:min(len(b), 5)])
		}
		var want Totals
		for i := 0; i < len(b); i += usageRecLen {
			r := b[i : i+usageRecLen]
			want = want.plus(Totals{int64(binary.LittleEndian.Uint64(r[16:])), int64(binary.LittleEndian.Uint64(r[24:])),
				int64(binary.LittleEndian.Uint64(r[32:]))}) // an open record's are zero
		}
		if got != want || got.Objects < 0 || got.Bytes < 0 || got.Allocated < 0 {
			t.Fatalf("parsed %+v, records sum to %+v", got, want)
		}
	})
}
