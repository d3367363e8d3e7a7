package layer_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	kuratestdata "github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
	"github.com/kura-oci/kura/verity"
)

// testdata is testdata/REL at the module root (a missing vector fails the test).
func testdata(t testing.TB, rel string) string { return kuratestdata.Dir(t, rel) }

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gz(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zst(t testing.TB, b []byte) []byte {
	enc, _ := zstd.NewWriter(nil)
	return enc.EncodeAll(b, nil)
}

// sameEntries compares a store TOC with the reference compressor's, ignoring the compressed
// offsets a store has no use for.
func sameEntries(t *testing.T, got, want *chunked.TOC) {
	t.Helper()
	if len(got.Entries) != len(want.Entries) {
		t.Fatalf("TOC has %d entries, reference %d", len(got.Entries), len(want.Entries))
	}
	for i := range want.Entries {
		g, w := got.Entries[i], want.Entries[i]
		w.Offset, w.EndOffset = 0, 0
		gj, _ := json.Marshal(g)
		wj, _ := json.Marshal(w)
		if !bytes.Equal(gj, wj) {
			t.Fatalf("entry %d:\n got %s\nwant %s", i, gj, wj)
		}
	}
}

func TestImportExportTestdata(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"mixed", "real"} {
		t.Run(name, func(t *testing.T) {
			tarBytes := readFile(t, testdata(t, "zstd-chunked/"+name+".tar"))
			var refTOC chunked.TOC
			if err := json.Unmarshal(readFile(t, testdata(t, "zstd-chunked/"+name+".toc.json")), &refTOC); err != nil {
				t.Fatal(err)
			}
			diffID := digest.FromBytes(tarBytes)
			s := teststore.Open(t, teststore.Locked())
			inputs := map[string][]byte{
				"tar":          tarBytes,
				"tar+gzip":     gz(t, tarBytes),
				"tar+zstd":     zst(t, tarBytes),
				"zstd:chunked": readFile(t, testdata(t, "zstd-chunked/"+name+".zstd-chunked")),
			}
			for kind, in := range inputs {
				// A fresh store per kind so that each really ingests.
				s := teststore.Open(t, teststore.Locked())
				l, err := layer.Import(ctx, s, bytes.NewReader(in), layer.Options{DiffID: diffID})
				if err != nil {
					t.Fatalf("%s: %v", kind, err)
				}
				if l.DiffID != diffID || l.TarSize != int64(len(tarBytes)) {
					t.Fatalf("%s: layer %+v, want DiffID %s size %d", kind, l, diffID, len(tarBytes))
				}
				toc, err := s.LayerTOC(ctx, diffID)
				if err != nil {
					t.Fatal(err)
				}
				sameEntries(t, toc, &refTOC)
				var out bytes.Buffer
				if err := layer.Export(ctx, s, diffID, &out); err != nil {
					t.Fatalf("%s: export: %v", kind, err)
				}
				if !bytes.Equal(out.Bytes(), tarBytes) {
					t.Fatalf("%s: exported tar differs from the original", kind)
				}
			}
			// Importing twice stores nothing new.
			if _, err := layer.Import(ctx, s, bytes.NewReader(tarBytes), layer.Options{}); err != nil {
				t.Fatal(err)
			}
			before := countObjects(t, s)
			if _, err := layer.Import(ctx, s, bytes.NewReader(tarBytes), layer.Options{}); err != nil {
				t.Fatal(err)
			}
			if after := countObjects(t, s); after != before {
				t.Fatalf("re-import changed object count %d → %d", before, after)
			}
			if r, err := s.Fsck(ctx, false); err != nil || !r.Clean() {
				t.Fatalf("fsck: %v %v", r.Problems, err)
			}
		})
	}
}

func countObjects(t *testing.T, s *store.Store) int {
	n := 0
	if err := s.Walk(context.Background(), func(store.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestImportWrongDiffID(t *testing.T) {
	s := teststore.Open(t, teststore.Locked())
	tarBytes := readFile(t, testdata(t, "zstd-chunked/mixed.tar"))
	_, err := layer.Import(context.Background(), s, bytes.NewReader(tarBytes), layer.Options{DiffID: digest.FromString("x")})
	if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("err = %v, want ErrDigestMismatch", err)
	}
	if n := countObjects(t, s); n != 0 {
		t.Fatalf("%d objects visible after a failed import", n)
	}
	if ls, _ := s.Layers(context.Background()); len(ls) != 0 {
		t.Fatalf("layers visible after a failed import: %v", ls)
	}
}

type tarEntry struct {
	hdr  tar.Header
	data string
	// short writes only this many payload bytes (a declared size larger than the data).
	short int
}

func makeTar(t testing.TB, entries []tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg && h.Size == 0 {
			h.Size = int64(len(e.data))
		}
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.data))
	}
	if entries != nil && entries[len(entries)-1].short > 0 {
		// Truncated archive: stop in the middle of the last payload.
		return buf.Bytes()[:buf.Len()-int(entries[len(entries)-1].hdr.Size)+entries[len(entries)-1].short-1]
	}
	tw.Close()
	return buf.Bytes()
}

func TestImportHostile(t *testing.T) {
	long := strings.Repeat("a/", 2100) + "f"
	cases := map[string][]tarEntry{
		"absolute":  {{hdr: tar.Header{Name: "/etc/passwd"}, data: "x"}},
		"dotdot":    {{hdr: tar.Header{Name: "a/../../etc/passwd"}, data: "x"}},
		"duplicate": {{hdr: tar.Header{Name: "f"}, data: "1"}, {hdr: tar.Header{Name: "./f"}, data: "2"}},
		"hardlink-out": {
			{hdr: tar.Header{Name: "f"}, data: "1"},
			{hdr: tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}},
		},
		"hardlink-abs": {{hdr: tar.Header{Name: "l", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}}},
		"too-long":     {{hdr: tar.Header{Name: long}, data: "x"}},
		"short-data":   {{hdr: tar.Header{Name: "f", Size: 100000}, data: strings.Repeat("z", 100000), short: 5000}},
		// Issue 13 case 1: a whiteout that names the directory above the layer.
		"whiteout-dotdot":       {{hdr: tar.Header{Name: "./.wh..."}}},
		"whiteout-dotdot-inner": {{hdr: tar.Header{Name: "etc/", Typeflag: tar.TypeDir}}, {hdr: tar.Header{Name: "etc/.wh..."}}},
		"whiteout-dot":          {{hdr: tar.Header{Name: ".wh.."}}},
		"whiteout-empty":        {{hdr: tar.Header{Name: "etc/.wh."}}},
		"whiteout-aufs":         {{hdr: tar.Header{Name: ".wh..wh.plnk/1"}}},
		"whiteout-as-directory": {{hdr: tar.Header{Name: ".wh.etc/passwd"}, data: "x"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			s := teststore.Open(t, teststore.Locked())
			_, err := layer.Import(context.Background(), s, bytes.NewReader(makeTar(t, entries)), layer.Options{})
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if n := countObjects(t, s); n != 0 {
				t.Fatalf("%d objects visible after a rejected layer", n)
			}
			if n, _ := s.TempFiles(); n != 0 {
				t.Fatalf("temp files left: %d", n)
			}
		})
	}
}

// FuzzImport feeds arbitrary bytes as a layer: never a panic, and whatever is accepted exports
// back bit-exactly.
func FuzzImport(f *testing.F) {
	f.Add(readFile(f, testdata(f, "zstd-chunked/mixed.tar"))[:20000])
	f.Add(makeTar(f, []tarEntry{{hdr: tar.Header{Name: "a"}, data: "hello"}}))
	f.Add([]byte{})
	s := teststore.Open(f, teststore.Locked())
	f.Fuzz(func(t *testing.T, in []byte) {
		l, err := layer.Import(context.Background(), s, bytes.NewReader(in), layer.Options{})
		if err != nil {
			return
		}
		h := sha256.New()
		if err := layer.Export(context.Background(), s, l.DiffID, h); err != nil {
			t.Fatalf("accepted layer does not export: %v", err)
		}
	})
}

func TestVerityTable(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	open := func() *store.Store {
		s := teststore.Open(t, teststore.At(root), teststore.With(store.WithVerity()))
		return s
	}
	// check imports a tar through a new store handle (no digests computed by its writers for
	// objects it finds stored) and compares the layer's table with the objects' files.
	check := func(name string, tarBytes []byte) store.Layer {
		t.Helper()
		s := open()
		unlock, _ := s.RLock(ctx)
		defer unlock()
		l, err := layer.Import(ctx, s, bytes.NewReader(tarBytes), layer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.VerityDigests(ctx, l.DiffID)
		if err != nil {
			t.Fatal(err)
		}
		toc, err := s.LayerTOC(ctx, l.DiffID)
		if err != nil {
			t.Fatal(err)
		}
		objs, _ := store.TOCObjects(toc)
		for _, d := range objs {
			p, _ := s.ObjectPath(d)
			want, err := verity.FromFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if m[d] != want {
				t.Errorf("%s: object %s: recorded fs-verity digest %s, file has %s", name, d, m[d], want)
			}
		}
		if len(objs) == 0 || len(m) != len(objs) {
			t.Fatalf("%s: %d objects, %d verity digests", name, len(objs), len(m))
		}
		return l.Layer
	}
	files := func(n int) []tarEntry {
		var es []tarEntry
		for i := range n {
			es = append(es, tarEntry{hdr: tar.Header{Name: fmt.Sprintf("f%d", i), Mode: 0o644}, data: strings.Repeat(fmt.Sprint(i), 100+i)})
		}
		return es
	}
	// Fresh objects: digests from the writers.
	check("mixed", readFile(t, testdata(t, "zstd-chunked/mixed.tar")))
	a := check("a", makeTar(t, files(5)))
	// Stored objects: digests from the other layers' tables, new ones from the writer.
	b := check("b", makeTar(t, files(8)))
	// Damaged tables are not searched: the digests are computed from the files.
	for _, l := range []store.Layer{a, b} {
		tab := filepath.Join(root, "layers", l.DiffID.Encoded(), "verity")
		os.Chmod(tab, 0o644)
		if err := os.WriteFile(tab, []byte("not a table\n"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	check("c", makeTar(t, files(9)))
}

// importExport imports a tar and checks that it exports to its own bytes.
func importExport(t *testing.T, s *store.Store, tarBytes []byte) store.Layer {
	t.Helper()
	l, err := layer.Import(context.Background(), s, bytes.NewReader(tarBytes), layer.Options{DiffID: digest.FromBytes(tarBytes)})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := layer.Export(context.Background(), s, l.DiffID, &out); err != nil || !bytes.Equal(out.Bytes(), tarBytes) {
		t.Fatalf("export: %v (%d bytes, want %d)", err, out.Len(), len(tarBytes))
	}
	return l.Layer
}

// TestImportNamesNotUTF8 (issue 13 case 8/11): names and link targets that are not UTF-8 are
// stored exactly: the stored TOC gives back the very bytes, not U+FFFD.
func TestImportNamesNotUTF8(t *testing.T) {
	s := teststore.Open(t, teststore.Locked())
	tb := makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "caf\xe9"}, data: "x"},
		{hdr: tar.Header{Name: "l\xff", Typeflag: tar.TypeSymlink, Linkname: "caf\xe9"}},
		{hdr: tar.Header{Name: "h\xfe", Typeflag: tar.TypeLink, Linkname: "caf\xe9"}},
	})
	l := importExport(t, s, tb)
	toc, err := s.LayerTOC(context.Background(), l.DiffID)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range toc.Entries {
		got = append(got, e.Name+">"+e.Linkname)
	}
	if want := []string{"caf\xe9>", "l\xff>caf\xe9", "h\xfe>caf\xe9"}; fmt.Sprintf("%q", got) != fmt.Sprintf("%q", want) {
		t.Fatalf("stored names %q, want %q", got, want)
	}
}

// TestImportGitArchive (issue 13 case 11): a pax global header, as git archive writes, is
// accepted; the layer exports to its exact bytes and the header is no entry.
func TestImportGitArchive(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: "pax_global_header",
		PAXRecords: map[string]string{"comment": "0123456789abcdef0123456789abcdef01234567"}})
	tw.WriteHeader(&tar.Header{Name: "repo/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "repo/README", Mode: 0o644, Size: 2})
	tw.Write([]byte("hi"))
	tw.Close()
	s := teststore.Open(t, teststore.Locked())
	l := importExport(t, s, buf.Bytes())
	toc, _ := s.LayerTOC(context.Background(), l.DiffID)
	if len(toc.Entries) != 2 || toc.Entries[0].Name != "repo/" {
		t.Fatalf("entries %+v, want repo/ and repo/README", toc.Entries)
	}
}

// TestImportExtremeMetadata (issue 13 case 11): an mtime after year 9999 is accepted (clamped in
// the TOC, which cannot carry it; exact in the tar-split), and an owner over 32 bits is stored
// exactly, never truncated (checkout and mount refuse it: package merge).
func TestImportExtremeMetadata(t *testing.T) {
	late := time.Date(12000, 1, 2, 3, 4, 5, 0, time.UTC)
	s := teststore.Open(t, teststore.Locked())
	l := importExport(t, s, makeTar(t, []tarEntry{
		{hdr: tar.Header{Name: "late", ModTime: late}, data: "x"},
		{hdr: tar.Header{Name: "owner", Uid: 1<<32 + 7, Gid: 1 << 40}, data: "y"},
	}))
	toc, _ := s.LayerTOC(context.Background(), l.DiffID)
	if mt := toc.Entries[0].ModTime; mt == nil || mt.Year() != 9999 {
		t.Fatalf("late mtime in the TOC: %v, want clamped to 9999", mt)
	}
	if e := toc.Entries[1]; e.UID != 1<<32+7 || e.GID != 1<<40 {
		t.Fatalf("owner %d:%d, want %d:%d", e.UID, e.GID, 1<<32+7, 1<<40)
	}
}
