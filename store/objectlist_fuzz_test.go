package store

import (
	"bytes"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzObjectList: any bytes in a layer's list file are either refused or read back as records
// that encode to exactly those bytes (no panic, no list accepted that the writer would not write).
func FuzzObjectList(f *testing.F) {
	good, err := encodeObjectList([]ObjectRef{
		{digest.FromString("a"), 1}, {digest.FromString("b"), 1 << 40}, {digest.FromString("c"), 7},
	})
	if err != nil {
		f.Fatal(err)
	}
	empty, _ := encodeObjectList(nil)
	f.Add(good)
	f.Add(empty)
	f.Add([]byte(objListMagic))
	f.Add(good[:len(good)-1])
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := objectListRecords(b)
		if err != nil {
			return
		}
		refs := recordRefs(recs)
		for i := 1; i < len(refs); i++ {
			if refs[i-1].Digest >= refs[i].Digest {
				t.Fatalf("accepted records out of order: %v", refs)
			}
		}
		again, err := encodeObjectList(refs)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("accepted %x, which encodes as %x (%v)", b, again, err)
		}
	})
}
