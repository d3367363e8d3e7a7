package registry

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/kura-oci/kura/source"
)

func r(off, n int64) source.Range { return source.Range{Offset: off, Length: n} }

func TestMergeRanges(t *testing.T) {
	tests := []struct {
		name     string
		in       []source.Range
		gap      int64
		maxSpans int
		want     []Span
	}{
		{"empty", nil, 1024, 1024, nil},
		{"adjacent", []source.Range{r(0, 10), r(10, 5)}, 0, 0, []Span{{0, 15, []source.Range{r(0, 10), r(10, 5)}}}},
		{"unsorted and gap at limit", []source.Range{r(1034, 1), r(0, 10)}, 1024, 0, []Span{{0, 1035, []source.Range{r(0, 10), r(1034, 1)}}}},
		{"gap over limit", []source.Range{r(0, 10), r(1035, 1)}, 1024, 0, []Span{{0, 10, []source.Range{r(0, 10)}}, {1035, 1, []source.Range{r(1035, 1)}}}},
		{"empty ranges dropped", []source.Range{r(5, 0), r(0, 1)}, 0, 0, []Span{{0, 1, []source.Range{r(0, 1)}}}},
		{
			"cap joins smallest gaps first, earliest on ties",
			[]source.Range{r(0, 1), r(100, 1), r(150, 1), r(1000, 1), r(1050, 1)},
			0, 3,
			// gaps: 99, 49, 849, 49 → join the two 49s.
			[]Span{{0, 1, []source.Range{r(0, 1)}}, {100, 51, []source.Range{r(100, 1), r(150, 1)}}, {1000, 51, []source.Range{r(1000, 1), r(1050, 1)}}},
		},
		{
			"cap of one",
			[]source.Range{r(0, 1), r(100, 1), r(5000, 2)},
			0, 1,
			[]Span{{0, 5002, []source.Range{r(0, 1), r(100, 1), r(5000, 2)}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := MergeRanges(tt.in, tt.gap, tt.maxSpans)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("MergeRanges = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestMergeRangesProperties checks invariants on random inputs: every range lies in exactly one
// span, spans are sorted, disjoint, separated by more than gap, at most maxSpans, and tight
// (each starts at its first range and ends at its last).
func TestMergeRangesProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for iter := 0; iter < 500; iter++ {
		var in []source.Range
		off := int64(0)
		for range rng.IntN(300) {
			off += int64(rng.IntN(5000))
			n := int64(1 + rng.IntN(2000))
			in = append(in, r(off, n))
			off += n
		}
		rng.Shuffle(len(in), func(i, j int) { in[i], in[j] = in[j], in[i] })
		gap := int64(rng.IntN(2048))
		maxSpans := rng.IntN(50)
		spans := MergeRanges(in, gap, maxSpans)
		if maxSpans > 0 && len(spans) > maxSpans {
			t.Fatalf("%d spans, cap %d", len(spans), maxSpans)
		}
		count := 0
		for i, s := range spans {
			count += len(s.Ranges)
			if s.Ranges[0].Offset != s.Offset || s.Ranges[len(s.Ranges)-1].End() != s.End() {
				t.Fatalf("span %+v not tight", s)
			}
			for k, x := range s.Ranges {
				if x.Offset < s.Offset || x.End() > s.End() || k > 0 && s.Ranges[k-1].End() > x.Offset {
					t.Fatalf("span %+v: range %+v misplaced", s, x)
				}
			}
			if i > 0 {
				g := s.Offset - spans[i-1].End()
				if g <= gap && (maxSpans == 0 || len(spans) < maxSpans) || g <= 0 {
					t.Fatalf("spans %+v and %+v should have merged (gap %d, limit %d)", spans[i-1], s, g, gap)
				}
			}
		}
		if count != len(in) {
			t.Fatalf("%d ranges in spans, %d given", count, len(in))
		}
	}
}
