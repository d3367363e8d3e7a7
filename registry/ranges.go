package registry

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/verify"
	"github.com/kura-oci/kura/source"
)

// ErrRangesUnsupported: the registry refused range requests even one range at a time. The
// caller should pull the blob whole: it wraps errdefs.ErrNeedFull, and errors carrying it also
// wrap errdefs.ErrUnsupported.
var ErrRangesUnsupported = fmt.Errorf("registry does not serve byte ranges of this blob: %w", errdefs.ErrNeedFull)

// WholeBlobError: the registry ignored Range and answered the first request of a GetRanges
// call with the whole blob (200), and the caller asked for it with HandOverWholeBlob. Body
// streams the blob from its first byte, verified and resumed as FetchBlob's reader is; whoever
// receives the error must close it. It wraps errdefs.ErrNeedFull.
type WholeBlobError struct{ Body io.ReadCloser }

func (e *WholeBlobError) Error() string {
	return "the registry ignores Range and is sending the whole blob"
}

func (e *WholeBlobError) Unwrap() error { return errdefs.ErrNeedFull }

// RangeOption configures one GetRanges call.
type RangeOption func(*rangeOptions)

type rangeOptions struct {
	handOver bool
}

// HandOverWholeBlob makes GetRanges return a *WholeBlobError carrying the open body when its
// first answer is the whole blob, instead of cutting the ranges out of that stream. A caller
// that would read the blob whole anyway (a puller: the metadata sits at the blob's end, so the
// cut reads nearly all of it) then downloads it once.
func HandOverWholeBlob() RangeOption { return func(o *rangeOptions) { o.handOver = true } }

// errHandOver ends a job whose first answer is handed over (rangeJob.whole).
var errHandOver = errors.New("whole blob handed over")

// GetRanges fetches byte ranges of a blob and calls fn once per range with a reader of exactly
// that range's bytes. Ranges may come in any order but must not overlap and must lie within
// blob.Size. Within one request ranges arrive in ascending offset order; requests run in
// parallel (WithParallel), so fn is called concurrently unless WithParallel(1), in which case
// all calls come in ascending offset order. fn need not read its reader to the end.
//
// Ranges are merged (MergeRanges) and sent up to WithRangesPerRequest per request. A 200
// answer is used as the whole blob (RangesIgnored), or handed over (HandOverWholeBlob) if it
// is the first; 400/416/501 halve the ranges per request,
// and a refusal of a single range returns ErrRangesUnsupported; lost connections, 5xx and 429
// are retried, resuming a partly received range. A 206 whose Content-Range differs from what
// was asked is an error wrapping errdefs.ErrInvalid. The caller verifies the content (the
// digests of the files it extracts); GetRanges only guarantees the offsets.
func (c *Client) GetRanges(ctx context.Context, repo imageref.Repository, blob ocispec.Descriptor, ranges []source.Range, fn func(source.Range, io.Reader) error, opts ...RangeOption) (source.Fetched, error) {
	var ro rangeOptions
	for _, o := range opts {
		o(&ro)
	}
	rep := source.Fetched{Ranges: len(ranges)}
	if err := checkDescriptor(blob); err != nil {
		return rep, fmt.Errorf("ranges of a blob in %s: %w", repo, err)
	}
	if err := checkRanges(ranges, blob.Size); err != nil {
		return rep, fmt.Errorf("ranges of blob %s: %w", blob.Digest, err)
	}
	if len(ranges) == 0 {
		return rep, nil
	}
	spans := MergeRanges(ranges, c.opts.mergeGap, c.opts.maxSpans)
	// Requests side by side where there is enough to share: a cold pull's adjacent ranges make
	// one span, which one request, and one goroutine decompressing it, would fetch alone.
	parallel := max(int(min(int64(c.opts.parallel), spanBytes(spans)/minParallelBytes)), 1)
	spans = splitSpans(spans, parallel)
	rep.Spans = len(spans)
	rc, err := c.repo(ctx, repo, false)
	if err != nil {
		return rep, err
	}
	cc := &callCounters{}
	ctx, cancel := context.WithCancel(withCall(ctx, cc))
	handedOver := false
	defer func() {
		if !handedOver { // a handed-over body's Close cancels
			cancel()
		}
	}()
	j := &rangeJob{c: c, ctx: ctx, client: rc.client, url: rc.url(repo, "blobs", blob.Digest.String()), size: blob.Size, fn: fn,
		parallel: parallel, handOver: ro.handOver}
	j.limit.Store(int64(c.opts.rangesPerRequest))

	err = j.run(spans, cancel)
	rep.Requests, rep.BytesReceived, rep.Retries = cc.requests.Load(), cc.bytesReceived.Load(), cc.retries.Load()
	rep.BytesRequested, rep.Splits, rep.RangesIgnored = j.bytesRequested.Load(), j.splits.Load(), j.ignored.Load()
	if errors.Is(err, errHandOver) && j.whole != nil {
		handedOver = true
		err = &WholeBlobError{Body: j.wholeBlob(blob, cancel)}
	}
	if err != nil {
		return rep, fmt.Errorf("ranges of blob %s in %s: %w", blob.Digest, repo, err)
	}
	return rep, nil
}

// wholeBlob is the handed-over 200 body as FetchBlob's reader: resumed after a failure,
// verified at EOF. Closing it ends the job (cancel).
func (j *rangeJob) wholeBlob(blob ocispec.Descriptor, cancel func()) io.ReadCloser {
	r := &resumingReader{ctx: j.ctx, c: j.c, client: j.client, url: j.url, size: j.size, body: j.whole}
	return verify.NewReader(r, cancelCloser{r, cancel}, blob.Size, blob.Digest)
}

// cancelCloser closes, then cancels the context the reads ran under.
type cancelCloser struct {
	io.Closer
	cancel func()
}

func (c cancelCloser) Close() error {
	err := c.Closer.Close()
	c.cancel()
	return err
}

func checkRanges(ranges []source.Range, size int64) error {
	sorted := slices.Clone(ranges)
	slices.SortFunc(sorted, func(a, b source.Range) int { return cmp.Compare(a.Offset, b.Offset) })
	for i, r := range sorted {
		if r.Offset < 0 || r.Length <= 0 || r.Length > size || r.Offset > size-r.Length {
			return fmt.Errorf("range %d+%d outside a blob of %d bytes: %w", r.Offset, r.Length, size, errdefs.ErrInvalid)
		}
		if i > 0 && sorted[i-1].End() > r.Offset {
			return fmt.Errorf("ranges %d+%d and %d+%d overlap: %w", sorted[i-1].Offset, sorted[i-1].Length, r.Offset, r.Length, errdefs.ErrInvalid)
		}
	}
	return nil
}

// rangeJob is one GetRanges call, shared by its workers.
type rangeJob struct {
	c      *Client
	ctx    context.Context
	client *http.Client
	url    string
	size   int64
	fn     func(source.Range, io.Reader) error

	parallel       int          // batches of about equal bytes, fetched side by side
	limit          atomic.Int64 // ranges per request, halved on refusals
	bytesRequested atomic.Int64
	splits         atomic.Int64
	ignored        atomic.Bool
	answered       atomic.Bool // some request had an answer (206 or 200)

	handOver bool          // HandOverWholeBlob
	whole    io.ReadCloser // the handed-over body, set before the first worker returns
}

// minParallelBytes is the least a request of several side by side should carry: fewer, larger
// requests cost the registry less (some bill per request), and a few megabytes gain nothing from
// being split.
const minParallelBytes = 4 << 20

// spanBytes is the number of bytes the spans ask for.
func spanBytes(spans []Span) int64 {
	var n int64
	for _, s := range spans {
		n += s.Length
	}
	return n
}

// splitSpans cuts spans between their ranges so that none holds much more than 1/n of the
// bytes. The ranges of a span never overlap (GetRanges refuses overlapping ranges), so the
// pieces do not either.
func splitSpans(spans []Span, n int) []Span {
	target := spanBytes(spans) / int64(n)
	if n <= 1 || target <= 0 {
		return spans
	}
	out := make([]Span, 0, len(spans)+n)
	for _, s := range spans {
		for s.Length > target+target/2 && len(s.Ranges) > 1 {
			cut := 0 // the last range of the first piece
			for cut < len(s.Ranges)-2 && s.Ranges[cut].End()-s.Offset < target {
				cut++
			}
			out = append(out, Span{Offset: s.Offset, Length: s.Ranges[cut].End() - s.Offset, Ranges: s.Ranges[:cut+1]})
			next := s.Ranges[cut+1].Offset
			s = Span{Offset: next, Length: s.End() - next, Ranges: s.Ranges[cut+1:]}
		}
		out = append(out, s)
	}
	return out
}

// batches groups consecutive spans for the workers: about 1/parallel of the bytes each, and at
// most limit spans (a worker sends more requests for a longer batch).
func batches(spans []Span, limit, parallel int) [][]Span {
	target := max(spanBytes(spans)/int64(parallel), 1)
	var out [][]Span
	start, acc := 0, int64(0)
	for i, s := range spans {
		acc += s.Length
		if i+1-start >= limit || acc >= target {
			out = append(out, spans[start:i+1])
			start, acc = i+1, 0
		}
	}
	if start < len(spans) {
		out = append(out, spans[start:])
	}
	return out
}

// run sends the first batch alone: its answer tells whether the server honours ranges. If it
// answered 200, that one stream serves every range; if 206, the other batches go in parallel,
// beside the rest of the first.
func (j *rangeJob) run(spans []Span, cancel func()) error {
	all := batches(spans, int(j.limit.Load()), j.parallel)
	first, rest := all[0], all[1:]
	answered := make(chan bool, 1) // not read through w: the worker clears its field
	w := &worker{j: j, answered: answered}
	firstDone := make(chan error, 1)
	go func() {
		err := w.run(first)
		if err != nil && !errors.Is(err, errHandOver) {
			cancel()
		}
		firstDone <- err
	}()
	var (
		full     bool
		err      error
		finished bool
	)
	select {
	case full = <-answered:
	case err = <-firstDone:
		finished, full = true, w.full
	}
	if full || (finished && err != nil) || len(rest) == 0 {
		if !finished {
			err = <-firstDone
		}
		for _, b := range rest {
			if err != nil {
				break
			}
			err = w.run(b) // a 200: the same whole-blob stream, read on
		}
		w.close()
		return err
	}
	perr := j.runParallel(rest, cancel, max(j.c.opts.parallel-1, 1))
	if !finished {
		err = <-firstDone
	}
	w.close()
	if err == nil {
		err = perr
	}
	return err
}

// runParallel reads batches on up to n workers; the first error cancels the others.
func (j *rangeJob) runParallel(rest [][]Span, cancel func(), n int) error {
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	work := make(chan []Span)
	for range min(n, len(rest)) {
		wg.Go(func() {
			w := &worker{j: j}
			defer w.close()
			for b := range work {
				if err := w.run(b); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				w.close()
			}
		})
	}
feed:
	for _, b := range rest {
		select {
		case work <- b:
		case <-j.ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil && j.ctx.Err() != nil {
		firstErr = j.ctx.Err()
	}
	return firstErr
}

// worker reads spans in order from a sequence of range requests, reopening after failures.
type worker struct {
	j    *rangeJob
	todo []Span // todo[0] is being read
	pos  int64  // next blob offset wanted

	src      *rangeSource
	full     bool // the open source is a 200 whole-blob answer
	part     io.Reader
	partPos  int64 // blob offset of the part's next byte
	partEnd  int64
	failures int   // consecutive failures without progress
	progress int64 // bytes since the last failure
	err      error // sticky: a stream failure fn might have swallowed
	// answered, if not nil, is told once whether the first answer was the whole blob (200)
	// rather than ranges (206).
	answered chan bool
	discard  []byte // skipTo's buffer, made on the first skip and reused by the worker's spans
}

func (w *worker) tellAnswer(full bool) {
	if w.answered != nil {
		w.answered <- full
		w.answered = nil
	}
}

func (w *worker) run(spans []Span) error {
	w.todo = spans
	for len(w.todo) > 0 {
		sp := w.todo[0]
		w.pos = max(w.pos, sp.Offset)
		for _, r := range sp.Ranges {
			if err := w.skipTo(r.Offset); err != nil {
				return err
			}
			lr := &io.LimitedReader{R: w, N: r.Length}
			err := w.j.fn(r, lr)
			if w.err != nil {
				return w.err
			}
			if err != nil {
				return fmt.Errorf("handling range %d+%d: %w", r.Offset, r.Length, err)
			}
			if err := w.skipTo(r.End()); err != nil {
				return err
			}
		}
		if err := w.endSpan(); err != nil {
			return err
		}
	}
	return nil
}

// skipTo reads and discards up to blob offset off within the current span. Its buffer belongs
// to the worker: a fresh one per call (it escapes through Read) cost a partial pull 32 KiB of new
// memory per span, even for the many spans with nothing to skip.
func (w *worker) skipTo(off int64) error {
	if w.pos < off && w.discard == nil {
		w.discard = make([]byte, 32<<10)
	}
	for w.pos < off {
		if _, err := w.Read(w.discard[:min(int64(len(w.discard)), off-w.pos)]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

func (w *worker) endSpan() error {
	w.todo = w.todo[1:]
	if w.full || w.src == nil {
		return nil
	}
	// A part longer than its Content-Range is as wrong as a shorter one.
	if w.src.mr != nil {
		var b [1]byte
		if n, _ := w.part.Read(b[:]); n > 0 {
			w.err = protocolError("multipart part for bytes ending at %d carries more bytes than its Content-Range", w.partEnd)
			return w.err
		}
	}
	w.part = nil
	if w.src.exhausted() {
		w.closeSrc()
	}
	return nil
}

// Read reads the current span from w.pos, resuming after transient failures.
func (w *worker) Read(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	end := w.todo[0].End()
	if w.pos >= end {
		return 0, io.EOF
	}
	if int64(len(p)) > end-w.pos {
		p = p[:end-w.pos]
	}
	for {
		n, err := w.readSome(p)
		if n > 0 {
			w.failures = resetFailures(w.failures, &w.progress, n)
			return n, nil
		}
		if err == nil {
			continue
		}
		var perr errProtocol
		if errors.As(err, &perr) || !isTransient(w.j.ctx, err) || w.failures+1 >= w.j.c.opts.retries {
			w.err = err
			return 0, err
		}
		w.closeSrc()
		w.failures++
		w.progress = 0
		w.j.c.stats.retries.Add(1)
		if cc := callOf(w.j.ctx); cc != nil {
			cc.retries.Add(1)
		}
		if err := sleep(w.j.ctx, backoff(&w.j.c.opts, w.failures-1)); err != nil {
			w.err = err
			return 0, err
		}
	}
}

// readSome reads at most len(p) bytes at w.pos from the open part, opening what is needed.
func (w *worker) readSome(p []byte) (int, error) {
	if w.src == nil {
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	if w.part == nil {
		part, start, end, err := w.src.nextPart()
		if err != nil {
			return 0, err
		}
		w.part, w.partPos, w.partEnd = part, start, end
	}
	if w.partPos > w.pos || w.pos >= w.partEnd {
		return 0, protocolError("answer part covers %d-%d, need offset %d", w.partPos, w.partEnd, w.pos)
	}
	if w.partPos < w.pos { // a whole-blob answer: skip the bytes between ranges
		n, err := io.CopyN(io.Discard, w.part, w.pos-w.partPos)
		w.partPos += n
		if err != nil {
			return 0, w.partEOF(err)
		}
	}
	if avail := w.partEnd - w.partPos; int64(len(p)) > avail {
		p = p[:avail]
	}
	n, err := w.part.Read(p)
	w.partPos += int64(n)
	w.pos += int64(n)
	if n > 0 {
		return n, nil
	}
	return 0, w.partEOF(err)
}

// partEOF classifies the end of a part before the bytes it promised: a multipart part that
// ends at its boundary is short (a wrong answer); a body that ends early was cut (retry).
func (w *worker) partEOF(err error) error {
	if err == nil {
		return nil
	}
	if err == io.EOF {
		if w.src.mr != nil {
			return protocolError("multipart part ended at %d before its Content-Range end %d", w.partPos, w.partEnd)
		}
		return io.ErrUnexpectedEOF
	}
	return err
}

// open sends a request for the rest of the current span and as many following spans as the
// ranges-per-request limit allows.
func (w *worker) open() error {
	j := w.j
	for {
		n := min(int(j.limit.Load()), len(w.todo))
		want := make([]contentRange, n)
		var hdr strings.Builder
		hdr.WriteString("bytes=")
		var asked int64
		for i := range n {
			start := w.todo[i].Offset
			if i == 0 {
				start = w.pos
			}
			want[i] = contentRange{start: start, end: w.todo[i].End() - 1, total: j.size}
			if i > 0 {
				hdr.WriteByte(',')
			}
			hdr.WriteString(strconv.FormatInt(want[i].start, 10) + "-" + strconv.FormatInt(want[i].end, 10))
			asked += want[i].end - want[i].start + 1
		}
		req, err := http.NewRequestWithContext(j.ctx, http.MethodGet, j.url, nil)
		if err != nil {
			return errProtocol{err}
		}
		req.Header.Set("Range", hdr.String())
		j.bytesRequested.Add(asked)
		j.c.stats.bytesRequested.Add(asked)
		resp, err := j.client.Do(req)
		if err != nil {
			return errProtocol{fmt.Errorf("requesting %d ranges: %w", n, err)} // the transport retried already
		}
		switch resp.StatusCode {
		case http.StatusPartialContent:
			j.answered.Store(true)
			src, err := newRangeSource(resp.Header.Get("Content-Type"), resp.Header.Get("Content-Range"), resp.Body, want, j.size)
			if err != nil {
				resp.Body.Close()
				return err
			}
			w.src, w.full = src, false
			w.tellAnswer(false)
			return nil
		case http.StatusOK:
			if !j.ignored.Swap(true) {
				j.c.stats.rangesIgnored.Add(1)
			}
			if first := !j.answered.Swap(true); first && j.handOver {
				j.whole = resp.Body
				return errProtocol{errHandOver}
			}
			w.src, w.full = &rangeSource{body: resp.Body, size: j.size, full: true}, true
			w.tellAnswer(true)
			return nil
		case http.StatusBadRequest, http.StatusRequestedRangeNotSatisfiable, http.StatusNotImplemented:
			err := newHTTPError(resp)
			if n == 1 {
				j.c.stats.rangesUnsupported.Add(1)
				return errProtocol{fmt.Errorf("%w (a single range was refused: %v): %w", ErrRangesUnsupported, err, errdefs.ErrUnsupported)}
			}
			// Fewer ranges per request from now on, for every worker of this blob.
			for {
				cur := j.limit.Load()
				if cur <= int64(n/2) || j.limit.CompareAndSwap(cur, int64(max(1, n/2))) {
					break
				}
			}
			j.splits.Add(1)
			j.c.stats.rangeSplits.Add(1)
		default:
			return errProtocol{fmt.Errorf("requesting %d ranges: %w", n, newHTTPError(resp))}
		}
	}
}

func (w *worker) closeSrc() {
	if w.src != nil {
		w.src.close()
	}
	w.src, w.part, w.full = nil, nil, false
}

func (w *worker) close() { w.closeSrc() }
