package chunked

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	vtar "github.com/vbatts/tar-split/archive/tar"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/iocount"
	"github.com/kura-oci/kura/tarstream"
)

// Descriptor describes a written layer; its JSON form is the OCI descriptor plus the DiffID.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      digest.Digest     `json:"digest"`
	Size        int64             `json:"size"`
	DiffID      digest.Digest     `json:"diffID"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Option configures Convert (and the reader, see ReadOption).
type Option func(*writerOptions)

type writerOptions struct {
	level       int
	concurrency int
}

// defaultWriterOptions holds every writer default.
func defaultWriterOptions() writerOptions {
	return writerOptions{
		level:       DefaultLevel,
		concurrency: runtime.GOMAXPROCS(0),
	}
}

// DefaultLevel is the reference's default zstd level (klauspost's SpeedBestCompression).
const DefaultLevel = 10

// CompressTarSplit compresses a whole tar-split stream exactly as the writer does at level: one
// zstd stream, no content size in the frame header.
func CompressTarSplit(tarSplit []byte, level int) ([]byte, error) {
	enc, err := getEncoder(level)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(tarSplit)/8 + 1024)
	enc.Reset(&buf)
	if _, err := enc.Write(tarSplit); err != nil {
		return nil, fmt.Errorf("compressing tar-split: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("compressing tar-split: %w", err)
	}
	putEncoder(level, enc)
	return buf.Bytes(), nil
}

// WithLevel sets the zstd level (1–22, mapped as klauspost's EncoderLevelFromZstd does).
func WithLevel(level int) Option { return func(o *writerOptions) { o.level = level } }

// WithConcurrency sets how many frames are compressed at once; 0 means GOMAXPROCS. The output does
// not depend on it.
func WithConcurrency(n int) Option { return func(o *writerOptions) { o.concurrency = n } }

// Sizes that bound the writer's memory: frames are batched into jobs of about jobTarget input
// bytes; a frame growing past maxBufferedFrame is compressed as a stream instead of buffered; at
// most 2×concurrency+2 jobs are in flight.
const (
	jobTarget        = 1 << 20
	maxBufferedFrame = 8 << 20
	streamSegment    = 1 << 20
)

// Convert reads a tar stream (plain, gzip or zstd) from r and writes it to w as a zstd:chunked
// blob. It returns the blob's descriptor with the TOC annotations (current and old names).
// Frames are compressed in parallel; the bytes written do not depend on the parallelism. Memory
// stays bounded whatever the layer size, except for the TOC and tar-split, which (as in the
// reference) are held until the end.
func Convert(ctx context.Context, r io.Reader, w io.Writer, opts ...Option) (Descriptor, error) {
	o := defaultWriterOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if o.level < 1 || o.level > 22 {
		return Descriptor{}, fmt.Errorf("zstd level %d not in 1–22: %w", o.level, errdefs.ErrInvalid)
	}
	if o.concurrency <= 0 {
		o.concurrency = runtime.GOMAXPROCS(0)
	}
	in, err := tarstream.Decompress(r)
	if err != nil {
		return Descriptor{}, err
	}
	defer in.Close()

	diffID := sha256.New()
	blobDigest := sha256.New()
	out := &iocount.Writer{W: io.MultiWriter(w, blobDigest)}
	cw := newChunkedWriter(ctx, out, o)
	toc, tarSplit, err := cw.run(io.TeeReader(in, diffID))
	if err != nil {
		return Descriptor{}, err
	}
	ann, err := writeMetadata(out, toc, tarSplit)
	if err != nil {
		return Descriptor{}, err
	}
	return Descriptor{
		MediaType:   MediaTypeLayer,
		Digest:      digest.NewDigest(digest.SHA256, blobDigest),
		Size:        out.N,
		DiffID:      digest.NewDigest(digest.SHA256, diffID),
		Annotations: ann,
	}, nil
}

// newEncoder returns a zstd encoder with the reference's settings. Concurrency 1 gives the same
// bytes as the reference's GOMAXPROCS-concurrent stream (checked by the interop tests) and saves
// memory: at level 10 each encoder holds about 34 MiB of match tables.
func newEncoder(level int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)), zstd.WithEncoderConcurrency(1))
}

// tarSplitBlob is the compressed tar-split with its digest and uncompressed size.
type tarSplitBlob struct {
	enc    *zstd.Encoder // that compressed it, for reuse
	level  int
	data   []byte
	digest digest.Digest
	size   int64
}

// writeMetadata appends the TOC, tar-split and footer skippable frames and returns the
// annotations that locate them.
func writeMetadata(out *iocount.Writer, toc *TOC, ts tarSplitBlob) (map[string]string, error) {
	toc.TarSplitDigest = ts.digest.String()
	tocJSON, err := json.Marshal(toc)
	if err != nil {
		return nil, err
	}
	enc := ts.enc // done with the tar-split; reusing it spares another encoder's tables
	// The stream API, as the reference uses, so multi-block TOCs come out identical too.
	var buf bytes.Buffer
	enc.Reset(&buf)
	if _, err := enc.Write(tocJSON); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	tocZ := buf.Bytes()
	putEncoder(ts.level, enc)

	tocOff := out.N + skippableHeaderSize
	if err := writeSkippable(out, tocZ); err != nil {
		return nil, err
	}
	tsOff := out.N + skippableHeaderSize
	if err := writeSkippable(out, ts.data); err != nil {
		return nil, err
	}
	f := footer{
		tocOffset: uint64(tocOff), tocLen: uint64(len(tocZ)), tocUncompressed: uint64(len(tocJSON)),
		tarSplitOffset: uint64(tsOff), tarSplitLen: uint64(len(ts.data)), tarSplitUncompressed: uint64(ts.size),
	}
	if err := writeSkippable(out, f.marshal()); err != nil {
		return nil, err
	}
	tocDigest := digest.FromBytes(tocZ).String()
	tocPos := fmt.Sprintf("%d:%d:%d:%d", tocOff, len(tocZ), len(tocJSON), manifestTypeCRFS)
	return map[string]string{
		AnnotationTOCDigest:        tocDigest,
		AnnotationTOCPosition:      tocPos,
		AnnotationTarSplitPosition: fmt.Sprintf("%d:%d:%d", tsOff, len(ts.data), ts.size),
		AnnotationOldTOCDigest:     tocDigest,
		AnnotationOldTOCPosition:   tocPos,
	}, nil
}

func writeSkippable(w io.Writer, payload []byte) error {
	var hdr [skippableHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[:4], skippableMagic)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

// The writer pipeline. The main goroutine parses the tar and cuts content into frames, batching
// consecutive frames into jobs; workers compress jobs (each frame independently, so the result
// does not depend on which worker ran it); the collector takes jobs in submission order, writes
// their output and replays their events to build the TOC with compressed offsets.

type eventKind uint8

const (
	evFrame     eventKind = iota // a frame ends; its bytes are written
	evFileBegin                  // the following chunk frames hold the current entry's content
	evEntryEnd                   // the current entry is complete
)

type event struct {
	kind  eventKind
	frame int // evFrame: index in job.frames
	entry Entry
	sum   digest.Digest // evEntryEnd: digest of the content, if any
}

type frame struct {
	start, end int  // input bytes in job.in
	chunk      bool // file content: digest it
	zeros      bool
	// tail: the archive's last frame. The reference Writes its first tailWrite bytes and
	// io.Copies the rest (the encoder's ReadFrom), which flushes a block in between.
	tail      bool
	tailWrite int
	csize     int           // result: compressed size
	digest    digest.Digest // result: digest of the input, for chunks
}

type job struct {
	in     []byte
	frames []frame
	events []event
	out    bytes.Buffer
	err    error
	done   chan struct{}
	// stream, if not nil, makes this a job of a single frame too large to buffer: its input
	// arrives in segments and the collector compresses it straight to the output.
	stream chan []byte
	// tail and tailWrite: as in frame, known before the stream starts.
	tail      bool
	tailWrite int
}

type chunkedWriter struct {
	ctx     context.Context
	out     *iocount.Writer
	o       writerOptions
	ordered chan *job
	work    chan *job
	failed  chan struct{} // closed by the collector on its first error
	failErr error

	cur       *job
	openStart int  // start of the open frame in cur.in
	stream    *job // the open frame is being streamed
	streamBuf []byte
	tailMark  int // ≥ 0 while the tail is read: bytes of the open frame to Write, not ReadFrom

	free      chan *job // finished jobs whose buffers can be reused
	fileHash  hash.Hash
	inFile    bool // the current entry's content started
	collected chan collectResult
}

type collectResult struct {
	entries []Entry
	err     error
}

func newChunkedWriter(ctx context.Context, out *iocount.Writer, o writerOptions) *chunkedWriter {
	inflight := 2*o.concurrency + 2
	cw := &chunkedWriter{
		ctx: ctx, out: out, o: o,
		ordered:   make(chan *job, inflight),
		work:      make(chan *job, inflight),
		failed:    make(chan struct{}),
		fileHash:  sha256.New(),
		collected: make(chan collectResult, 1),
		free:      make(chan *job, inflight+1),
		tailMark:  -1,
	}
	cw.cur = cw.newJob()
	return cw
}

// run converts the tar stream and returns the TOC and the compressed tar-split.
func (cw *chunkedWriter) run(tarStream io.Reader) (*TOC, tarSplitBlob, error) {
	var wg sync.WaitGroup
	for range cw.o.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cw.worker()
		}()
	}
	go cw.collect()

	tsDigest := sha256.New()
	var tsBuf bytes.Buffer
	tsEnc, err := getEncoder(cw.o.level)
	if err != nil {
		return nil, tarSplitBlob{}, err
	}
	tsEnc.Reset(io.MultiWriter(&tsBuf, tsDigest))
	tsCount := &iocount.Writer{W: tsEnc}

	walkErr := tarstream.WalkRaw(tarStream, tsCount, cw.entry, cw.tail)
	if walkErr == nil {
		walkErr = cw.submit()
	}
	if cw.stream != nil {
		close(cw.stream.stream) // aborted mid-frame: let the collector finish
	}
	close(cw.ordered)
	close(cw.work)
	wg.Wait()
	res := <-cw.collected
	if walkErr != nil {
		if res.err != nil && errors.Is(walkErr, errAborted) {
			return nil, tarSplitBlob{}, res.err
		}
		return nil, tarSplitBlob{}, walkErr
	}
	if res.err != nil {
		return nil, tarSplitBlob{}, res.err
	}
	if err := tsEnc.Close(); err != nil {
		return nil, tarSplitBlob{}, err
	}
	return &TOC{Version: 1, Entries: res.entries},
		tarSplitBlob{enc: tsEnc, level: cw.o.level, data: tsBuf.Bytes(), digest: digest.NewDigest(digest.SHA256, tsDigest), size: tsCount.N}, nil
}

var errAborted = errors.New("conversion aborted")

func (cw *chunkedWriter) check() error {
	select {
	case <-cw.failed:
		return errAborted
	default:
	}
	return cw.ctx.Err()
}

// entry handles one tar entry: its raw header bytes join the open frame, its content is cut.
func (cw *chunkedWriter) entry(hdr *vtar.Header, raw []byte, payload io.Reader) error {
	if err := cw.check(); err != nil {
		return err
	}
	if hdr.Typeflag == vtar.TypeXGlobalHeader {
		// A pax global header is no entry (store/layer.Import skips it too): its bytes stay in
		// the stream, so the tar is rebuilt exactly.
		return cw.appendData(raw)
	}
	e, err := EntryFromHeader(tarstream.StdHeader(hdr))
	if err != nil {
		return err
	}
	if err := cw.appendData(raw); err != nil {
		return err
	}
	cw.inFile = false
	cw.fileHash.Reset()
	c := newCutter(cw.emitContent, cw.cut)
	buf := getCopyBuf()
	defer putCopyBuf(buf)
	for {
		n, err := payload.Read(*buf)
		if n > 0 {
			if err := c.write((*buf)[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading %q: %w: %w", hdr.Name, errdefs.ErrInvalid, err)
		}
	}
	if err := c.close(); err != nil {
		return err
	}
	ev := event{kind: evEntryEnd, entry: e}
	if cw.inFile {
		ev.sum = digest.NewDigest(digest.SHA256, cw.fileHash)
	}
	cw.cur.events = append(cw.cur.events, ev)
	return nil
}

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}

func getCopyBuf() *[]byte  { return copyBufPool.Get().(*[]byte) }
func putCopyBuf(b *[]byte) { copyBufPool.Put(b) }

// emitContent receives file content from the cutter.
func (cw *chunkedWriter) emitContent(p []byte) error {
	if !cw.inFile {
		// The reference closes the header frame when the first content byte arrives.
		cw.inFile = true
		if err := cw.closeFrame(false, false); err != nil {
			return err
		}
		cw.cur.events = append(cw.cur.events, event{kind: evFileBegin})
	}
	cw.fileHash.Write(p)
	return cw.appendData(p)
}

func (cw *chunkedWriter) cut(zeros bool) error { return cw.closeFrame(true, zeros) }

// tail receives everything after the last entry's content; it ends the last frame.
func (cw *chunkedWriter) tail(raw []byte, rest io.Reader) error {
	if err := cw.appendData(raw); err != nil {
		return err
	}
	if cw.stream == nil {
		cw.tailMark = len(cw.cur.in) - cw.openStart
	}
	buf := getCopyBuf()
	defer putCopyBuf(buf)
	for {
		n, err := rest.Read(*buf)
		if n > 0 {
			if err := cw.appendData((*buf)[:n]); err != nil {
				return err
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w", err)
		}
	}
	return cw.closeFrame(false, false)
}

// appendData adds bytes to the open frame.
func (cw *chunkedWriter) appendData(p []byte) error {
	if cw.stream != nil {
		return cw.streamData(p)
	}
	cw.cur.in = append(cw.cur.in, p...)
	if len(cw.cur.in)-cw.openStart > maxBufferedFrame {
		return cw.startStream()
	}
	return nil
}

// startStream turns the open frame into a streamed job: the frames before it are submitted as
// they are, its buffered bytes become the first segment.
func (cw *chunkedWriter) startStream() error {
	pending := bytes.Clone(cw.cur.in[cw.openStart:])
	cw.cur.in = cw.cur.in[:cw.openStart]
	if err := cw.submit(); err != nil {
		return err
	}
	st := &job{done: make(chan struct{}), stream: make(chan []byte, 2), tail: cw.tailMark >= 0, tailWrite: cw.tailMark}
	if err := cw.send(cw.ordered, st); err != nil {
		return err
	}
	cw.stream = st
	cw.streamBuf = make([]byte, 0, streamSegment)
	return cw.streamData(pending)
}

func (cw *chunkedWriter) streamData(p []byte) error {
	for len(p) > 0 {
		n := min(len(p), streamSegment-len(cw.streamBuf))
		cw.streamBuf = append(cw.streamBuf, p[:n]...)
		p = p[n:]
		if len(cw.streamBuf) == streamSegment {
			if err := cw.flushStream(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (cw *chunkedWriter) flushStream() error {
	if len(cw.streamBuf) == 0 {
		return nil
	}
	select {
	case cw.stream.stream <- cw.streamBuf:
	case <-cw.failed:
		return errAborted
	case <-cw.ctx.Done():
		return cw.ctx.Err()
	}
	cw.streamBuf = make([]byte, 0, streamSegment)
	return nil
}

// closeFrame ends the open frame (possibly empty: the reference emits empty frames too).
func (cw *chunkedWriter) closeFrame(chunk, zeros bool) error {
	if st := cw.stream; st != nil {
		if err := cw.flushStream(); err != nil {
			return err
		}
		st.frames = []frame{{chunk: chunk, zeros: zeros, tail: st.tail, tailWrite: st.tailWrite}}
		cw.tailMark = -1
		st.events = []event{{kind: evFrame, frame: 0}}
		close(st.stream) // publishes frames and events to the collector
		cw.stream = nil
		cw.openStart = 0
		return nil
	}
	j := cw.cur
	f := frame{start: cw.openStart, end: len(j.in), chunk: chunk, zeros: zeros}
	if cw.tailMark >= 0 {
		f.tail, f.tailWrite = true, cw.tailMark
		cw.tailMark = -1
	}
	j.frames = append(j.frames, f)
	j.events = append(j.events, event{kind: evFrame, frame: len(j.frames) - 1})
	cw.openStart = len(j.in)
	if len(j.in) >= jobTarget {
		return cw.submit()
	}
	return nil
}

// newJob returns an empty job, reusing the buffers of a finished one if there is one.
func (cw *chunkedWriter) newJob() *job {
	select {
	case j := <-cw.free:
		*j = job{done: make(chan struct{}), in: j.in[:0], frames: j.frames[:0], events: j.events[:0], out: j.out}
		j.out.Reset()
		return j
	default:
		return &job{done: make(chan struct{}), in: make([]byte, 0, jobTarget+jobTarget/4)}
	}
}

// recycle offers a written job's buffers for reuse.
func (cw *chunkedWriter) recycle(j *job) {
	select {
	case cw.free <- j:
	default:
	}
}

// submit hands the current job (its closed frames and events) to the workers and collector.
// The open frame must be empty.
func (cw *chunkedWriter) submit() error {
	j := cw.cur
	if len(j.frames) == 0 && len(j.events) == 0 {
		return nil
	}
	cw.cur = cw.newJob()
	cw.openStart = 0
	if err := cw.send(cw.ordered, j); err != nil {
		return err
	}
	return cw.send(cw.work, j)
}

func (cw *chunkedWriter) send(ch chan *job, j *job) error {
	select {
	case ch <- j:
		return nil
	case <-cw.failed:
		return errAborted
	case <-cw.ctx.Done():
		return cw.ctx.Err()
	}
}

func (cw *chunkedWriter) worker() {
	enc, err := getEncoder(cw.o.level)
	for j := range cw.work {
		if err == nil {
			err = compressJob(enc, j)
			j.err = err
		} else {
			j.err = err
		}
		close(j.done)
	}
	if err == nil {
		putEncoder(cw.o.level, enc)
	}
}

func compressJob(enc *zstd.Encoder, j *job) error {
	h := sha256.New()
	for i := range j.frames {
		f := &j.frames[i]
		data := j.in[f.start:f.end]
		before := j.out.Len()
		enc.Reset(&j.out)
		if f.tail {
			if _, err := enc.Write(data[:f.tailWrite]); err != nil {
				return err
			}
			if _, err := enc.ReadFrom(bytes.NewReader(data[f.tailWrite:])); err != nil {
				return err
			}
		} else if _, err := enc.Write(data); err != nil {
			return err
		}
		if err := enc.Close(); err != nil {
			return err
		}
		f.csize = j.out.Len() - before
		if f.chunk {
			h.Reset()
			h.Write(data)
			f.digest = digest.NewDigest(digest.SHA256, h)
		}
	}
	return nil
}

// collect writes jobs in order and builds the TOC entries.
func (cw *chunkedWriter) collect() {
	var (
		entries []Entry
		err     error
		enc     *zstd.Encoder
		inFile  bool
		chunks  []Chunk
		frames  []int64
		fileOff int64
	)
	fail := func(e error) {
		if err == nil {
			err = e
			close(cw.failed)
		}
	}
	for j := range cw.ordered {
		if j.stream != nil {
			if err != nil {
				for range j.stream {
				}
				continue
			}
			if enc == nil {
				var e error
				if enc, e = getEncoder(cw.o.level); e != nil {
					fail(e)
					for range j.stream {
					}
					continue
				}
			}
			if e := cw.compressStream(enc, j); e != nil {
				fail(e)
				for range j.stream {
				}
				continue
			}
		} else {
			select {
			case <-j.done:
			case <-cw.ctx.Done():
				fail(cw.ctx.Err())
			}
			if err != nil {
				continue
			}
			if j.err != nil {
				fail(j.err)
				continue
			}
		}
		off := cw.out.N
		if j.stream == nil {
			if _, e := cw.out.Write(j.out.Bytes()); e != nil {
				fail(e)
				continue
			}
		} else {
			off -= int64(j.frames[0].csize)
		}
		for _, ev := range j.events {
			switch ev.kind {
			case evFrame:
				f := j.frames[ev.frame]
				size := int64(f.end - f.start)
				if inFile && f.chunk && size > 0 {
					chunks = append(chunks, Chunk{Offset: fileOff, Size: size, Digest: f.digest, Zeros: f.zeros})
					frames = append(frames, off)
					fileOff += size
				}
				off += int64(f.csize)
			case evFileBegin:
				inFile = true
			case evEntryEnd:
				if inFile {
					frames = append(frames, off)
					entries = append(entries, ChunkEntries(ev.entry, ev.sum, chunks, frames)...)
				} else {
					entries = append(entries, ev.entry)
				}
				inFile, chunks, frames, fileOff = false, chunks[:0], frames[:0], 0
			}
		}
		if j.stream == nil {
			cw.recycle(j)
		}
	}
	if enc != nil && err == nil {
		putEncoder(cw.o.level, enc)
	}
	cw.collected <- collectResult{entries: entries, err: err}
}

// compressStream compresses a streamed frame straight to the output; it sets the frame's
// compressed size, input size and digest.
func (cw *chunkedWriter) compressStream(enc *zstd.Encoder, j *job) error {
	before := cw.out.N
	h := sha256.New()
	enc.Reset(cw.out)
	sr := &segmentReader{segs: j.stream}
	src := io.TeeReader(sr, h)
	var n int64
	var err error
	if j.tail {
		n, err = io.CopyN(writeOnly{enc}, src, int64(j.tailWrite))
		if err == nil {
			var m int64
			m, err = enc.ReadFrom(src)
			n += m
		}
	} else {
		n, err = io.Copy(writeOnly{enc}, src)
	}
	if err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	f := &j.frames[0]
	f.csize = int(cw.out.N - before)
	f.start, f.end = 0, int(n)
	if f.chunk {
		f.digest = digest.NewDigest(digest.SHA256, h)
	}
	return nil
}

// segmentReader reads the segments of a streamed frame.
type segmentReader struct {
	segs chan []byte
	cur  []byte
}

func (r *segmentReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		seg, ok := <-r.segs
		if !ok {
			return 0, io.EOF
		}
		r.cur = seg
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// writeOnly hides the encoder's ReadFrom so io.Copy goes through Write, as the reference does
// for content.
type writeOnly struct{ w io.Writer }

func (w writeOnly) Write(p []byte) (int, error) { return w.w.Write(p) }
