package store

import (
	"bytes"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// FuzzParseImageSummaries: any bytes in the summaries file are either refused (the listing then
// reads the records) or rows that, written back, parse to the same values; never a panic.
func FuzzParseImageSummaries(f *testing.F) {
	created := time.Date(2026, 12, 8, 1, 2, 3, 456, time.FixedZone("", 3600))
	f.Add(formatImageSummaries([]ImageSummary{
		{ID: digest.FromString("a"), Created: created, Layers: 3, Logical: 12345},
		{ID: digest.FromString("b"), Layers: 0, Logical: 0},
	}))
	f.Add(formatImageSummaries(nil))
	f.Add([]byte("kura-image-summaries 1\nsha256:zz - 1 2\nend 1\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseImageSummaries(b)
		if err != nil {
			return
		}
		sums := make([]ImageSummary, 0, len(m))
		for _, line := range bytes.Split(b, []byte("\n"))[1 : len(m)+1] {
			sum, err := parseImageSummary(line)
			if err != nil || !sameSummary(m[sum.ID], sum) {
				t.Fatalf("row %q: %v, or not what the file gave", line, err)
			}
			sums = append(sums, sum)
		}
		again, err := parseImageSummaries(formatImageSummaries(sums))
		if err != nil || len(again) != len(m) {
			t.Fatalf("rows written back do not parse: %v", err)
		}
		for id, sum := range m {
			if got := again[id]; !sameSummary(got, sum) {
				t.Fatalf("row %s written back as %+v, was %+v", id, got, sum)
			}
		}
	})
}

func sameSummary(a, b ImageSummary) bool {
	return a.ID == b.ID && a.Created.Equal(b.Created) && a.Layers == b.Layers && a.Logical == b.Logical
}
