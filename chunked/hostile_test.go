package chunked

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/tarstream"
)

// sample is a valid blob and its metadata, for tampering.
type sample struct {
	blob []byte
	desc Descriptor
	loc  Location
	toc  *TOC
	ts   []byte // compressed tar-split
}

func newSample(t *testing.T) sample {
	t.Helper()
	in := readTestdata(t, "mixed.tar")
	var out bytes.Buffer
	desc, err := Convert(t.Context(), bytes.NewReader(in), &out)
	if err != nil {
		t.Fatal(err)
	}
	blob := out.Bytes()
	loc, err := LocateFromAnnotations(desc.Annotations, int64(len(blob)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := Parse(loc, blob[loc.TOC.Offset:loc.TOC.End()], blob[loc.TarSplit.Offset:loc.TarSplit.End()])
	if err != nil {
		t.Fatal(err)
	}
	return sample{blob: blob, desc: desc, loc: loc, toc: l.TOC, ts: blob[loc.TarSplit.Offset:loc.TarSplit.End()]}
}

func compress(t *testing.T, b []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(b, nil)
}

// withTOC parses s with its TOC replaced by tocJSON, re-signed so that the digest check passes
// and the rule under test is reached.
func (s sample) withTOC(t *testing.T, tocJSON []byte, opts ...ReadOption) (*Layer, error) {
	t.Helper()
	z := compress(t, tocJSON)
	loc := s.loc
	loc.TOC.Length, loc.TOCUncompressed, loc.TOCDigest = int64(len(z)), int64(len(tocJSON)), digest.FromBytes(z)
	loc.TarSplit.Offset = loc.TOC.End() + skippableHeaderSize // as if the blob were rewritten
	return Parse(loc, z, s.ts, opts...)
}

func (s sample) mutated(t *testing.T, mutate func(*TOC)) (*Layer, error) {
	t.Helper()
	b, _ := json.Marshal(s.toc)
	var toc TOC
	if err := json.Unmarshal(b, &toc); err != nil {
		t.Fatal(err)
	}
	mutate(&toc)
	b, _ = json.Marshal(&toc)
	return s.withTOC(t, b)
}

func find(toc *TOC, typ string) *Entry {
	for i := range toc.Entries {
		if toc.Entries[i].Type == typ {
			return &toc.Entries[i]
		}
	}
	panic("no entry of type " + typ)
}

func findChunked(toc *TOC) int {
	for i := range toc.Entries {
		if toc.Entries[i].Type == TypeChunk {
			return i - 1
		}
	}
	panic("no chunked file")
}

func wantErr(t *testing.T, err, class error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: accepted", what)
	}
	if !errors.Is(err, class) {
		t.Fatalf("%s: error %q is not %v", what, err, class)
	}
}

func TestHostileMetadata(t *testing.T) {
	s := newSample(t)
	// The untampered re-signed TOC passes, so each failure below is the mutation's doing.
	if _, err := s.mutated(t, func(*TOC) {}); err != nil {
		t.Fatal(err)
	}
	later := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := map[string]func(*TOC){
		"type":         func(c *TOC) { find(c, TypeFifo).Type = TypeChar },
		"name":         func(c *TOC) { find(c, TypeDir).Name = "renamed/" },
		"linkName":     func(c *TOC) { find(c, TypeSymlink).Linkname = "elsewhere" },
		"mode":         func(c *TOC) { find(c, TypeDir).Mode = 0o777 },
		"size":         func(c *TOC) { e := find(c, TypeReg); e.Size++ },
		"uid":          func(c *TOC) { find(c, TypeDir).UID = 4242 },
		"gid":          func(c *TOC) { find(c, TypeDir).GID = 4242 },
		"modtime":      func(c *TOC) { find(c, TypeDir).ModTime = &later },
		"accesstime":   func(c *TOC) { find(c, TypeDir).AccessTime = &later },
		"changetime":   func(c *TOC) { find(c, TypeDir).ChangeTime = &later },
		"devMajor":     func(c *TOC) { find(c, TypeChar).Devmajor = 99 },
		"devMinor":     func(c *TOC) { find(c, TypeChar).Devminor = 99 },
		"xattrs":       func(c *TOC) { find(c, TypeDir).Xattrs = map[string]string{"user.x": "eA=="} },
		"missing":      func(c *TOC) { c.Entries = c.Entries[1:] },
		"extra":        func(c *TOC) { c.Entries = append(c.Entries, Entry{Type: TypeDir, Name: "extra/"}) },
		"duplicate":    func(c *TOC) { c.Entries = append(c.Entries, c.Entries[0]) },
		"dotdot":       func(c *TOC) { find(c, TypeDir).Name = "a/../../etc/" },
		"absolute":     func(c *TOC) { find(c, TypeDir).Name = "/etc/" },
		"hardlink out": func(c *TOC) { find(c, TypeLink).Linkname = "../x" },
		"offset outside": func(c *TOC) {
			e := &c.Entries[findChunked(c)+0]
			e.EndOffset = 1 << 40
		},
		"end before start": func(c *TOC) { e := &c.Entries[findChunked(c)]; e.EndOffset = e.Offset },
		"unsorted files": func(c *TOC) {
			var files []int
			for i, e := range c.Entries {
				if e.Type == TypeReg && e.Size > 0 {
					files = append(files, i)
				}
			}
			a, b := &c.Entries[files[0]], &c.Entries[files[1]]
			a.Offset, a.EndOffset, b.Offset, b.EndOffset = b.Offset, b.EndOffset, a.Offset, a.EndOffset
		},
		"chunk gap":       func(c *TOC) { c.Entries[findChunked(c)+1].ChunkOffset++ },
		"chunk overrun":   func(c *TOC) { c.Entries[findChunked(c)+1].ChunkSize = 1 << 40 },
		"chunk short":     func(c *TOC) { i := findChunked(c); c.Entries[i].ChunkSize--; c.Entries[i+1].ChunkOffset-- },
		"orphan chunk":    func(c *TOC) { c.Entries = append([]Entry{{Type: TypeChunk, Name: "x"}}, c.Entries...) },
		"bad digest":      func(c *TOC) { c.Entries[findChunked(c)].Digest = "sha256:zz" },
		"bad chunk type":  func(c *TOC) { c.Entries[findChunked(c)+1].ChunkType = "weird" },
		"unknown type":    func(c *TOC) { find(c, TypeFifo).Type = "socket" },
		"no tar-split":    func(c *TOC) { c.TarSplitDigest = digest.FromString("other").String() },
		"chunk misplaced": func(c *TOC) { i := findChunked(c); c.Entries[i+1].Offset = c.Entries[i].EndOffset + 10 },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := s.mutated(t, mutate)
			if name == "no tar-split" {
				wantErr(t, err, errdefs.ErrDigestMismatch, name)
				return
			}
			wantErr(t, err, errdefs.ErrInvalid, name)
			t.Log(err)
		})
	}
}

func TestHostileBytes(t *testing.T) {
	s := newSample(t)
	tocBlob := s.blob[s.loc.TOC.Offset:s.loc.TOC.End()]

	t.Run("invalid JSON", func(t *testing.T) {
		_, err := s.withTOC(t, []byte(`{"version":1,"entries":[{"type":"dir","name":`))
		wantErr(t, err, errdefs.ErrInvalid, "truncated JSON")
		_, err = s.withTOC(t, []byte(`{"version":1,"entries":[]} {}`))
		wantErr(t, err, errdefs.ErrInvalid, "trailing JSON")
	})
	t.Run("TOC digest", func(t *testing.T) {
		loc := s.loc
		loc.TOCDigest = digest.FromString("x")
		_, err := Parse(loc, tocBlob, s.ts)
		wantErr(t, err, errdefs.ErrDigestMismatch, "TOC digest")
	})
	t.Run("tar-split digest", func(t *testing.T) {
		ts := bytes.Clone(s.ts)
		ts[len(ts)/2] ^= 1
		_, err := Parse(s.loc, tocBlob, ts)
		wantErr(t, err, errdefs.ErrDigestMismatch, "tar-split digest")
	})
	t.Run("size bound", func(t *testing.T) {
		_, err := LocateFromAnnotations(s.desc.Annotations, int64(len(s.blob)), WithMaxMetadataSize(1000))
		wantErr(t, err, errdefs.ErrInvalid, "TOC over the bound")
		_, err = LocateFromAnnotations(s.desc.Annotations, int64(len(s.blob)), WithMaxMetadataSize(3500))
		wantErr(t, err, errdefs.ErrInvalid, "tar-split over the bound")
		loc := s.loc
		loc.TOCUncompressed = 100 // the real TOC decompresses beyond the declared size
		_, err = Parse(loc, tocBlob, s.ts)
		wantErr(t, err, errdefs.ErrInvalid, "TOC larger than declared")
	})
	t.Run("truncated blob", func(t *testing.T) {
		short := s.blob[:len(s.blob)-100]
		_, _, err := Open(bytes.NewReader(short), int64(len(short)), s.desc.Annotations)
		wantErr(t, err, errdefs.ErrInvalid, "truncated with annotations")
		_, _, err = Open(bytes.NewReader(short), int64(len(short)), nil)
		wantErr(t, err, errdefs.ErrInvalid, "truncated without annotations")
		_, _, err = Open(bytes.NewReader(s.blob[:5]), 5, nil)
		wantErr(t, err, errdefs.ErrInvalid, "tiny blob")
	})
	t.Run("footer magic", func(t *testing.T) {
		bad := bytes.Clone(s.blob)
		bad[len(bad)-1] = 'X'
		_, _, err := Open(bytes.NewReader(bad), int64(len(bad)), nil)
		wantErr(t, err, errdefs.ErrInvalid, "bad footer magic")
		bad = bytes.Clone(s.blob)
		bad[len(bad)-72] = 0 // skippable frame magic
		_, _, err = Open(bytes.NewReader(bad), int64(len(bad)), nil)
		wantErr(t, err, errdefs.ErrInvalid, "bad skippable frame")
	})
	t.Run("annotations", func(t *testing.T) {
		for _, v := range []string{"1:2:3", "a:b:c:d", "-1:5:5:1", "99999999:5:5:1"} {
			ann := map[string]string{AnnotationTOCDigest: s.desc.Annotations[AnnotationTOCDigest], AnnotationTOCPosition: v}
			_, err := LocateFromAnnotations(ann, int64(len(s.blob)))
			wantErr(t, err, errdefs.ErrInvalid, "position "+v)
		}
		ann := map[string]string{AnnotationTOCDigest: "md5:x", AnnotationTOCPosition: s.desc.Annotations[AnnotationTOCPosition]}
		_, err := LocateFromAnnotations(ann, int64(len(s.blob)))
		wantErr(t, err, errdefs.ErrInvalid, "bad digest annotation")
		both := map[string]string{AnnotationEstargzTOC: "sha256:x"}
		for k, v := range s.desc.Annotations {
			both[k] = v
		}
		_, err = LocateFromAnnotations(both, int64(len(s.blob)))
		wantErr(t, err, errdefs.ErrInvalid, "estargz and zstd:chunked")
	})
	t.Run("frame content", func(t *testing.T) {
		l, err := s.mutated(t, func(c *TOC) {
			i := findChunked(c)
			c.Entries[i].Digest = digest.FromString("not this").String()
		})
		if err != nil {
			t.Fatal(err)
		}
		f := &l.Files[0]
		for i := range l.Files {
			if len(l.Files[i].Entry.Chunks) > 1 {
				f = &l.Files[i]
				break
			}
		}
		err = ReadFile(bytes.NewReader(s.blob), f, io.Discard)
		wantErr(t, err, errdefs.ErrDigestMismatch, "file digest")
		_, err = l.DiffID(bytes.NewReader(s.blob))
		wantErr(t, err, errdefs.ErrDigestMismatch, "rebuild with a bad file")
		// A corrupted byte inside the frames.
		bad := bytes.Clone(s.blob)
		bad[f.Range.Offset+f.Range.Length/2] ^= 0xff
		err = ReadFile(bytes.NewReader(bad), f, io.Discard)
		if err == nil || !(errors.Is(err, errdefs.ErrInvalid) || errors.Is(err, errdefs.ErrDigestMismatch)) {
			t.Fatalf("corrupt frame: %v", err)
		}
		_, err = Verify(t.Context(), bytes.NewReader(bad), s.desc)
		wantErr(t, err, errdefs.ErrDigestMismatch, "verify of a corrupt blob")
	})
	t.Run("zstd bomb", func(t *testing.T) {
		bomb := compress(t, make([]byte, 64<<20))
		err := DecodeFrames(bytes.NewReader(bomb), 100, digest.FromString("x"), io.Discard)
		wantErr(t, err, errdefs.ErrDigestMismatch, "bomb")
	})
}

func TestVerifyDescriptor(t *testing.T) {
	s := newSample(t)
	if _, err := Verify(t.Context(), bytes.NewReader(s.blob), s.desc); err != nil {
		t.Fatal(err)
	}
	d := s.desc
	d.DiffID = digest.FromString("other")
	_, err := Verify(t.Context(), bytes.NewReader(s.blob), d)
	wantErr(t, err, errdefs.ErrDigestMismatch, "wrong DiffID")
	// Annotations pointing elsewhere than the footer (re-signed so only that differs).
	d = s.desc
	d.Annotations = map[string]string{}
	for k, v := range s.desc.Annotations {
		d.Annotations[k] = v
	}
	d.Annotations[AnnotationTarSplitPosition] = fmt.Sprintf("%d:%d:%d", s.loc.TarSplit.Offset, s.loc.TarSplit.Length, s.loc.TarSplitUncompressed+1)
	_, err = Verify(t.Context(), bytes.NewReader(s.blob), d)
	wantErr(t, err, errdefs.ErrInvalid, "annotations disagreeing with the footer")
	d = s.desc
	d.Digest = digest.FromString("other")
	_, err = Verify(t.Context(), bytes.NewReader(s.blob), d)
	wantErr(t, err, errdefs.ErrDigestMismatch, "wrong digest")
}

// sampleTarSplit returns the sample layer's entries and a function that decodes a fresh copy
// of its tar-split (to be spoilt), having checked that the two agree.
func sampleTarSplit(t *testing.T) ([]layerfs.Entry, func() []storage.Entry) {
	t.Helper()
	s := newSample(t)
	js, err := decompressBounded(s.ts, s.loc.TarSplitUncompressed, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	fresh := func() []storage.Entry {
		es, err := tarstream.DecodeTarSplit(js, tarstream.MaxTarSplitLines)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	entries, err := DecodeEntries(s.toc)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckTarSplitEntries(entries, fresh()); err != nil {
		t.Fatalf("genuine tar-split: %v", err)
	}
	return entries, fresh
}

// TestTarSplitFileEntries: every tar-split header must be followed by its own file entry. The
// rebuilt tar takes content by the file entry's name, so a swapped name would put one file's
// bytes under another's header.
func TestTarSplitFileEntries(t *testing.T) {
	entries, fresh := sampleTarSplit(t)
	var files []int
	es := fresh()
	for i, e := range es {
		if e.Type == storage.FileType && e.Size > 0 {
			files = append(files, i)
		}
	}
	if len(files) < 2 {
		t.Fatal("sample has fewer than two files")
	}
	a, b := files[0], files[1]
	es[a].Name, es[b].Name = es[b].Name, es[a].Name
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "swapped file entry names")
	es = fresh()
	es[a].Size++
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "file entry size")
	es = fresh()
	es = append(es[:a], es[a+1:]...)
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "missing file entry")
	es = fresh()
	es = append(es[:a+1], es[a:]...)
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "doubled file entry")
}

// TestTarSplitHeadersAsReadersSeeThem: the check reads the tar a tar-split rebuilds as a tar
// reader does, so a tar-split cannot hide from it what readers of that tar see: extension
// records split off into a segment of their own still rename the entry that follows, bytes after
// a header are content to a reader, a hard link takes no content whatever its size says, content
// belongs to the header before it only (not to a second file entry), the TOC lists entries in
// the tar's order, and nothing but zeros may follow the end of the archive.
func TestTarSplitHeadersAsReadersSeeThem(t *testing.T) {
	entries, fresh := sampleTarSplit(t)
	// a: the first file with content, whose header is the segment before it.
	a := slices.IndexFunc(fresh(), func(e storage.Entry) bool { return e.Type == storage.FileType && e.Size > 0 })
	if a < 1 {
		t.Fatal("sample has no file with content after a header")
	}
	// before puts entries e before the header of segment i, after the padding it opens with
	// (the previous file's).
	before := func(es []storage.Entry, i int, e ...storage.Entry) []storage.Entry {
		pad := 0
		if i > 0 && es[i-1].Type == storage.FileType {
			pad = int((512 - es[i-1].Size%512) % 512)
		}
		seg := es[i].Payload
		head := storage.Entry{Type: storage.SegmentType, Payload: slices.Clip(seg[:pad])}
		es[i].Payload = seg[pad:]
		if len(e) > 0 && e[0].Type == storage.SegmentType {
			e[0].Payload = append(head.Payload, e[0].Payload...)
			return slices.Insert(es, i, e...)
		}
		return slices.Insert(es, i, append([]storage.Entry{head}, e...)...)
	}

	// PAX records renaming a's entry, in a segment of their own before a's header.
	var pax bytes.Buffer
	tw := tar.NewWriter(&pax)
	renamed := strings.Repeat("r", 120) // too long for a USTAR header: the writer puts it in a PAX record
	if err := tw.WriteHeader(&tar.Header{Name: renamed, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		t.Fatal(err)
	}
	records := pax.Bytes()[:1024] // the 'x' header and its records, not the entry's own header
	es := fresh()
	es = before(es, a-1, storage.Entry{Type: storage.SegmentType, Payload: records})
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "PAX records in a segment of their own")

	// Bytes after a's header, in its segment: a reader takes them for a's content.
	es = fresh()
	es[a-1].Payload = append(slices.Clip(es[a-1].Payload), bytes.Repeat([]byte("A"), 512)...)
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "bytes after a header")

	// A hard link header with a size and a file entry carrying it, as tar-split records such a
	// tar: a reader takes no content after it, so the layer is pulled whole; with content its
	// header does not give, it is hostile.
	var link bytes.Buffer
	tw = tar.NewWriter(&link)
	if err := tw.WriteHeader(&tar.Header{Name: "link", Linkname: es[a].GetName(), Typeflag: tar.TypeLink, Size: 512, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	es = fresh()
	es = before(es, a+1, storage.Entry{Type: storage.SegmentType, Payload: link.Bytes()[:512]},
		storage.Entry{Type: storage.FileType, Name: "link", Size: 512})
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrNeedFull, "a hard link with a size")
	es[a+2].Size = 1024
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "a hard link with content")

	// A second file entry after a file's own: its content, read as headers by a reader of the
	// rebuilt tar (here the header of a file "evil" that no TOC lists), is nobody's to the check.
	var evil bytes.Buffer
	tw = tar.NewWriter(&evil)
	if err := tw.WriteHeader(&tar.Header{Name: "evil", Typeflag: tar.TypeReg, Mode: 0o644, Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	b := tar.Header{Name: "b", Typeflag: tar.TypeReg, Mode: 0o644, Size: 512, ModTime: time.Unix(1700000000, 0), Format: tar.FormatUSTAR}
	var hb bytes.Buffer
	tw = tar.NewWriter(&hb)
	if err := tw.WriteHeader(&b); err != nil {
		t.Fatal(err)
	}
	bEntry, err := HeaderEntry(&b)
	if err != nil {
		t.Fatal(err)
	}
	bEntry.Digest = digest.FromBytes(evil.Bytes()[:512])
	smuggled := []storage.Entry{
		{Type: storage.SegmentType, Payload: hb.Bytes()[:512]},
		{Type: storage.FileType, Name: "b", Size: 512},
		{Type: storage.FileType, Name: "b", Size: 512},
		{Type: storage.SegmentType, Payload: make([]byte, 1024)},
	}
	wantErr(t, CheckTarSplitEntries([]layerfs.Entry{bEntry}, smuggled), errdefs.ErrInvalid, "a second file entry")
	if err := CheckTarSplitEntries([]layerfs.Entry{bEntry}, slices.Delete(slices.Clone(smuggled), 2, 3)); err != nil {
		t.Fatalf("the same tar-split without the second file entry: %v", err)
	}

	// A TOC listing the same entries in another order than the tar: entries apply in order.
	reordered := slices.Clone(entries)
	reordered[0], reordered[1] = reordered[1], reordered[0]
	wantErr(t, CheckTarSplitEntries(reordered, fresh()), errdefs.ErrInvalid, "a TOC out of tar order")

	// Data after the end of the archive.
	es = fresh()
	es = append(es, storage.Entry{Type: storage.SegmentType, Payload: []byte("trailing data")})
	wantErr(t, CheckTarSplitEntries(entries, es), errdefs.ErrInvalid, "data after the end of the archive")
}
