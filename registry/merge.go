package registry

import (
	"cmp"
	"github.com/kura-oci/kura/source"
	"slices"
)

// Span is a merged range, what is actually requested; Ranges are the caller's ranges inside it,
// in ascending order. The bytes of the span outside Ranges are fetched and thrown away.
type Span struct {
	Offset int64
	Length int64
	Ranges []source.Range
}

// End is the offset just past the span.
func (s Span) End() int64 { return s.Offset + s.Length }

// MergeRanges groups ranges into spans: overlapping and adjacent ranges, and those separated by
// at most gap bytes, share a span; then, while there are more than maxSpans spans (maxSpans > 0),
// the spans separated by the smallest gaps are joined (ties: the earlier gap first). The input
// need not be sorted; it is not modified. Empty ranges are dropped.
func MergeRanges(ranges []source.Range, gap int64, maxSpans int) []Span {
	sorted := make([]source.Range, 0, len(ranges))
	for _, r := range ranges {
		if r.Length > 0 {
			sorted = append(sorted, r)
		}
	}
	slices.SortFunc(sorted, func(a, b source.Range) int {
		return cmp.Or(cmp.Compare(a.Offset, b.Offset), cmp.Compare(a.Length, b.Length))
	})
	var spans []Span
	for _, r := range sorted {
		if n := len(spans); n > 0 && r.Offset-spans[n-1].End() <= gap {
			last := &spans[n-1]
			last.Length = max(last.End(), r.End()) - last.Offset
			last.Ranges = append(last.Ranges, r)
			continue
		}
		spans = append(spans, Span{Offset: r.Offset, Length: r.Length, Ranges: []source.Range{r}})
	}
	if maxSpans <= 0 || len(spans) <= maxSpans {
		return spans
	}
	// gaps[i] separates spans[i] and spans[i+1]; join the len-maxSpans smallest.
	order := make([]int, len(spans)-1)
	for i := range order {
		order[i] = i
	}
	gapAt := func(i int) int64 { return spans[i+1].Offset - spans[i].End() }
	slices.SortFunc(order, func(a, b int) int { return cmp.Or(cmp.Compare(gapAt(a), gapAt(b)), cmp.Compare(a, b)) })
	join := make([]bool, len(spans)-1)
	for _, i := range order[:len(spans)-maxSpans] {
		join[i] = true
	}
	out := make([]Span, 0, maxSpans)
	for i, s := range spans {
		if i > 0 && join[i-1] {
			last := &out[len(out)-1]
			last.Length = s.End() - last.Offset
			last.Ranges = append(last.Ranges, s.Ranges...)
			continue
		}
		out = append(out, s)
	}
	return out
}
