package reliability

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/asm"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/iocount"
	"github.com/kura-oci/kura/internal/testkit/tartest"
)

// handLayer is a zstd:chunked layer assembled by hand, so that every part can lie: the data frames
// (one per file content, one for the tar bytes between contents), the TOC, the tar-split, and the
// annotations. The product's writer refuses hostile trees, hence this test-only builder.
type handLayer struct {
	tar      []byte
	frames   [][]byte // compressed frames; their concatenation is the data part of the blob
	toc      chunked.TOC
	tarSplit []byte // uncompressed tar-split JSON lines
	diffID   digest.Digest
	// tocJSON, if set, replaces the encoded TOC (for TOCs that are not a chunked.TOC).
	tocJSON []byte
	// tocUncompressedLen, if set, is what the annotation claims the TOC expands to.
	tocUncompressedLen int64
	// contentFrame maps an entry index of toc.Entries to the index of its content frame.
	contentFrame map[int]int
}

var encoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))

func compress(b []byte) []byte { return encoder.EncodeAll(b, nil) }

// newHandLayer cuts a tar into frames exactly where the format wants them (each regular file's
// content is its own frame) and writes an honest TOC and tar-split for it. Names are not checked:
// hostile trees go through.
func newHandLayer(t testing.TB, tarBytes []byte) *handLayer {
	t.Helper()
	h := &handLayer{tar: tarBytes, toc: chunked.TOC{Version: 1}, contentFrame: map[int]int{}}
	sum := sha256.Sum256(tarBytes)
	h.diffID = digest.NewDigestFromBytes(digest.SHA256, sum[:])
	cr := &iocount.Reader{R: bytes.NewReader(tarBytes)}
	tr := tar.NewReader(cr)
	var last, compressed int64
	addFrame := func(b []byte) (int64, int64) {
		z := compress(b)
		h.frames = append(h.frames, z)
		start := compressed
		compressed += int64(len(z))
		return start, compressed
	}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // no entry, as in the writers' TOCs; its bytes join the next frame
		}
		e, err := chunked.EntryFromHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			pos := cr.N // tar.Reader reads exactly up to the payload of a plain file
			addFrame(tarBytes[last:pos])
			content := tarBytes[pos : pos+hdr.Size]
			e.Digest = digest.FromBytes(content).String()
			h.contentFrame[len(h.toc.Entries)] = len(h.frames)
			e.Offset, e.EndOffset = addFrame(content)
			last = pos + hdr.Size
		}
		h.toc.Entries = append(h.toc.Entries, e)
	}
	addFrame(tarBytes[last:])
	h.tarSplit = rawTarSplit(t, tarBytes)
	return h
}

// loosePacker writes tar-split JSON lines like the reference packer but without its duplicate-name
// check, so that layers with duplicate names can be described.
type loosePacker struct {
	enc *json.Encoder
	pos int
}

func (p *loosePacker) AddEntry(e storage.Entry) (int, error) {
	e.Position = p.pos
	p.pos++
	return e.Position, p.enc.Encode(e)
}

func rawTarSplit(t testing.TB, tarBytes []byte) []byte {
	t.Helper()
	var ts bytes.Buffer
	r, err := asm.NewInputTarStream(bytes.NewReader(tarBytes), &loosePacker{enc: json.NewEncoder(&ts)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	return ts.Bytes()
}

// entry returns the TOC entry named name.
func (h *handLayer) entry(t testing.TB, name string) (int, *chunked.Entry) {
	t.Helper()
	for i := range h.toc.Entries {
		if h.toc.Entries[i].Name == name && h.toc.Entries[i].Type != chunked.TypeChunk {
			return i, &h.toc.Entries[i]
		}
	}
	t.Fatalf("no TOC entry %q", name)
	return 0, nil
}

// replaceContent puts other bytes in the content frame of entry name and shifts the offsets of
// everything after it, so the TOC stays self-consistent about where frames are.
func (h *handLayer) replaceContent(t testing.TB, name string, frame []byte) {
	t.Helper()
	i, _ := h.entry(t, name)
	fi := h.contentFrame[i]
	delta := int64(len(frame) - len(h.frames[fi]))
	h.frames[fi] = frame
	for j := range h.toc.Entries {
		e := &h.toc.Entries[j]
		if j == i {
			e.EndOffset += delta
		} else if j > i && e.Offset != 0 {
			e.Offset += delta
			e.EndOffset += delta
		}
	}
}

func skippable(payload []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 0x184D2A50)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// blob assembles the layer: data frames, TOC, tar-split and footer skippable frames, and the
// annotations locating them (TOC digest recomputed, so the TOC is "authentic").
func (h *handLayer) blob(t testing.TB) ([]byte, ocispec.Descriptor) {
	t.Helper()
	var b bytes.Buffer
	for _, f := range h.frames {
		b.Write(f)
	}
	tsZ := compress(h.tarSplit)
	toc := h.toc
	toc.TarSplitDigest = digest.FromBytes(tsZ).String()
	tocJSON := h.tocJSON
	if tocJSON == nil {
		var err error
		if tocJSON, err = json.Marshal(toc); err != nil {
			t.Fatal(err)
		}
	}
	tocZ := compress(tocJSON)
	tocLen := int64(len(tocJSON))
	if h.tocUncompressedLen != 0 {
		tocLen = h.tocUncompressedLen
	}
	tocOff := int64(b.Len()) + 8
	b.Write(skippable(tocZ))
	tsOff := int64(b.Len()) + 8
	b.Write(skippable(tsZ))
	var footer []byte
	for _, v := range []int64{tocOff, int64(len(tocZ)), tocLen, 1, tsOff, int64(len(tsZ)), int64(len(h.tarSplit))} {
		footer = binary.LittleEndian.AppendUint64(footer, uint64(v))
	}
	footer = append(footer, "GNUlInUx"...)
	b.Write(skippable(footer))
	tocPos := fmt.Sprintf("%d:%d:%d:1", tocOff, len(tocZ), tocLen)
	desc := ocispec.Descriptor{MediaType: chunked.MediaTypeLayer, Digest: digest.FromBytes(b.Bytes()), Size: int64(b.Len()),
		Annotations: map[string]string{
			chunked.AnnotationTOCDigest:        digest.FromBytes(tocZ).String(),
			chunked.AnnotationTOCPosition:      tocPos,
			chunked.AnnotationTarSplitPosition: fmt.Sprintf("%d:%d:%d", tsOff, len(tsZ), len(h.tarSplit)),
		}}
	return b.Bytes(), desc
}

// tarEntry is one entry of a hand-written tar.
type tarEntry = tartest.Entry

var mtime = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

func reg(name string, mode int64, content string) tarEntry {
	return tartest.File(name, content).Mode(mode).Time(mtime)
}
func dir(name string) tarEntry { return tartest.Dir(name).Time(mtime) }
func symlink(name, target string) tarEntry {
	return tartest.Symlink(name, target).Time(mtime)
}
func hardlink(name, target string) tarEntry {
	return tartest.Hardlink(name, target).Time(mtime)
}
func device(name string, typ byte, major, minor int64) tarEntry {
	return tartest.Device(name, typ, major, minor).Time(mtime)
}
