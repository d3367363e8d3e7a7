package reliability

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/asm"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// Size and count bombs (issue 13, case 5): metadata and content that declare far more than the
// blob's bytes carry. Each is built here, small, and pulled through the in-process registry.

// tocBomb is the base tree whose (authentic) TOC lists n minimal entries: a few KiB of zstd
// that decode, before this fix, into n × ~232 bytes of entries.
func tocBomb(t testing.TB, n int) *handLayer {
	h := newHandLayer(t, tartest.Tar(t, base()...))
	var b strings.Builder
	b.WriteString(`{"version":1,"entries":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"type":"dir","name":"d"}`)
	}
	b.WriteString(`]}`)
	h.tocJSON = []byte(b.String())
	return h
}

// blankLinesBomb is the base tree whose tar-split ends in n blank (whitespace-only) lines, which
// tar-split's reader skips: before this fix they cost n decoded entries and the layer was stored.
func blankLinesBomb(t testing.TB, n int) *handLayer {
	h := newHandLayer(t, tartest.Tar(t, base()...))
	h.tarSplit = append(h.tarSplit, strings.Repeat(" \n", n)...)
	return h
}

// assertNothingStored checks that a failed pull left no image, no layer and no object.
func assertNothingStored(t testing.TB, s *store.Store) {
	t.Helper()
	ctx := context.Background()
	if ids, err := s.Images(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("images after a refused bomb: %v %v", ids, err)
	}
	if ls, err := s.Layers(ctx); err != nil || len(ls) != 0 {
		t.Fatalf("layers after a refused bomb: %v %v", ls, err)
	}
	n := 0
	if err := s.Walk(ctx, func(store.Info) error { n++; return nil }); err != nil || n != 0 {
		t.Fatalf("%d objects after a refused bomb: %v", n, err)
	}
	checkFsck(t, s)
}

// pullBomb pulls repo partially and returns the error and the bytes allocated meanwhile.
func pullBomb(t testing.TB, s *store.Store, host, repo string) (error, uint64) {
	t.Helper()
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	_, err := pullImage(context.Background(), t, s, host, repo)
	runtime.ReadMemStats(&m1)
	return err, (m1.TotalAlloc - m0.TotalAlloc) >> 20
}

// TestBombTOCEntries: a TOC of a million minimal entries in a few KiB of blob is refused as
// hostile (exit 4) while it is decoded, with less than 96 MiB allocated in all (the 26 MB of
// decompressed JSON included); main decoded every entry (over 500 MiB) first.
func TestBombTOCEntries(t *testing.T) {
	reg := registrytest.New(t)
	img := hostileImage{layers: []*handLayer{tocBomb(t, 1<<20)}}
	img.push(t, reg, "tocbomb")
	s := teststore.Open(t)
	err, mib := pullBomb(t, s, reg.Host, "tocbomb")
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "entries") {
		t.Fatalf("pulling the TOC bomb: %v, want ErrInvalid for too many entries", err)
	}
	t.Logf("refused with %d MiB allocated: %v", mib, err)
	if mib > 96 {
		t.Fatalf("refusing the TOC bomb allocated %d MiB", mib)
	}
	assertNothingStored(t, s)
}

// TestBombTarSplitBlankLines: four million blank tar-split lines (a few hundred bytes of zstd)
// are refused before they are decoded; main stored the layer after spending hundreds of MiB.
func TestBombTarSplitBlankLines(t *testing.T) {
	reg := registrytest.New(t)
	img := hostileImage{layers: []*handLayer{blankLinesBomb(t, 4<<20)}}
	img.push(t, reg, "blanklines")
	s := teststore.Open(t)
	err, mib := pullBomb(t, s, reg.Host, "blanklines")
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "entries") {
		t.Fatalf("pulling the blank-lines bomb: %v, want ErrInvalid for too many lines", err)
	}
	t.Logf("refused with %d MiB allocated: %v", mib, err)
	if mib > 64 {
		t.Fatalf("refusing the blank-lines bomb allocated %d MiB", mib)
	}
	assertNothingStored(t, s)
}

// TestBombLayersAcrossJobs: three TOC bombs in one image, pulled by the kura binary with
// --jobs 3. The process's peak RSS (ru_maxrss) stays under 320 MiB; on main each job decoded
// its bomb at once and the peak was several times that. The pull exits 4.
func TestBombLayersAcrossJobs(t *testing.T) {
	reg := registrytest.New(t)
	var img hostileImage
	for i := range 3 {
		h := tocBomb(t, 1<<20)
		h.tocJSON = append(h.tocJSON[:len(h.tocJSON)-2], fmt.Sprintf(`],"x%d":0}`, i)...) // three distinct blobs
		img.layers = append(img.layers, h)
	}
	img.push(t, reg, "threebombs")
	root := t.TempDir()
	// ru_maxrss of a child forked from this process starts at this process's high-water mark
	// (exec records the shared mm's), so GNU time, a small process, forks kura and reports it.
	const gnuTime = "/usr/bin/time"
	if _, err := os.Stat(gnuTime); err != nil {
		t.Fatalf("this test measures peak RSS with GNU time (Debian package time): %v", err)
	}
	rssFile := filepath.Join(t.TempDir(), "maxrss")
	cmd := exec.Command(gnuTime, "-f", "%M", "-o", rssFile, kura(t), "pull", "docker://"+reg.Host+"/threebombs:latest",
		"--creds", registrytest.Username+":"+registrytest.Password, "--tls-verify=false", "--root", root, "--jobs", "3")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != errdefs.ExitInvalid {
		t.Fatalf("pull of three bombs: %v, want exit %d\n%s", err, errdefs.ExitInvalid, out)
	}
	b, err := os.ReadFile(rssFile)
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(b)) // "Command exited with non-zero status 4" then the KiB
	var kib int64
	if len(fields) == 0 {
		t.Fatalf("GNU time wrote %q", b)
	}
	if _, err := fmt.Sscan(fields[len(fields)-1], &kib); err != nil {
		t.Fatalf("GNU time wrote %q: %v", b, err)
	}
	t.Logf("peak RSS %d MiB: %s", kib>>10, bytes.TrimSpace(out))
	if kib>>10 > 160 {
		t.Fatalf("three bombs with --jobs 3 peaked at %d MiB RSS", kib>>10)
	}
	s := teststore.Open(t, teststore.At(root))
	assertNothingStored(t, s)
}

// zerosLayer is a layer of one file "zero" of n zero bytes, declared as a single zeros chunk
// whose frame is frame (n must be a multiple of 512). Its tar-split and DiffID are those of the
// honest tar, computed without holding it: the TOC and tar-split agree, only the frame may lie.
func zerosLayer(t testing.TB, n int64, frame []byte) *handLayer {
	t.Helper()
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "zero", Mode: 0o644, Size: n, ModTime: mtime, Format: tar.FormatUSTAR}
	var hb bytes.Buffer
	if err := tar.NewWriter(&hb).WriteHeader(hdr); err != nil {
		t.Fatal(err)
	}
	end := make([]byte, 1024)
	tarStream := func() io.Reader {
		return io.MultiReader(bytes.NewReader(hb.Bytes()), io.LimitReader(zeroReader{}, n), bytes.NewReader(end))
	}
	h := &handLayer{toc: chunked.TOC{Version: 1}, contentFrame: map[int]int{}}
	d := sha256.New()
	if _, err := io.Copy(d, tarStream()); err != nil {
		t.Fatal(err)
	}
	h.diffID = digest.NewDigest(digest.SHA256, d)
	var ts bytes.Buffer
	r, err := asm.NewInputTarStream(tarStream(), &loosePacker{enc: json.NewEncoder(&ts)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		t.Fatal(err)
	}
	h.tarSplit = ts.Bytes()
	e, err := chunked.EntryFromHeader(hdr)
	if err != nil {
		t.Fatal(err)
	}
	content := digest.Canonical.Digester()
	if _, err := io.Copy(content.Hash(), io.LimitReader(zeroReader{}, n)); err != nil {
		t.Fatal(err)
	}
	e.Digest, e.ChunkType = content.Digest().String(), chunked.ChunkTypeZeros
	h.frames = [][]byte{compress(hb.Bytes()), frame, compress(end)}
	e.Offset = int64(len(h.frames[0]))
	e.EndOffset = e.Offset + int64(len(frame))
	h.toc.Entries = []chunked.Entry{e}
	return h
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestBombDeclaredSize: 256 MiB of zeros declared in a 4 KiB frame (which zstd cannot expand
// past 128 KiB) is refused as hostile before anything is written; main stored a fully
// allocated 256 MiB object and the image with it.
func TestBombDeclaredSize(t *testing.T) {
	reg := registrytest.New(t)
	img := hostileImage{layers: []*handLayer{zerosLayer(t, 256<<20, compress(make([]byte, 4096)))}}
	img.push(t, reg, "declared")
	s := teststore.Open(t)
	err, _ := pullBomb(t, s, reg.Host, "declared")
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("pulling 256 MiB declared in a 4 KiB frame: %v, want ErrInvalid", err)
	}
	assertNothingStored(t, s)
	err = filepath.WalkDir(s.TempDir(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			err = fmt.Errorf("temp file %s after a refused bomb", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestZerosAreHoles: a 64 MiB file of zeros (an honest zeros chunk) pulled partially, pulled
// whole and imported becomes an object with (almost) no allocated blocks; copy and hardlink
// checkouts of it are as sparse, read back right, and df counts the allocation honestly.
func TestZerosAreHoles(t *testing.T) {
	const n = 64 << 20
	const small = 1 << 20 // allocated bytes allowed for a 64 MiB file of zeros
	reg := registrytest.New(t)
	h := zerosLayer(t, n, compress(make([]byte, n)))
	img := hostileImage{layers: []*handLayer{h}}
	img.push(t, reg, "zeros")
	want := h.toc.Entries[0].Digest
	ctx := context.Background()
	modes := []struct {
		name string
		get  func(t *testing.T, s *store.Store)
	}{
		{"partial", func(t *testing.T, s *store.Store) {
			if _, err := pullImage(ctx, t, s, reg.Host, "zeros"); err != nil {
				t.Fatal(err)
			}
		}},
		{"whole", func(t *testing.T, s *store.Store) {
			if _, err := pullImage(ctx, t, s, reg.Host, "zeros", pull.WithoutPartial()); err != nil {
				t.Fatal(err)
			}
		}},
		{"import", func(t *testing.T, s *store.Store) {
			blob, _ := h.blob(t)
			unlock, err := s.RLock(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer unlock()
			if _, err := layer.Import(ctx, s, bytes.NewReader(blob), layer.Options{DiffID: h.diffID}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			s := teststore.Open(t)
			m.get(t, s)
			obj, err := s.ObjectPath(digest.Digest(want))
			if err != nil {
				t.Fatal(err)
			}
			checkSparse(t, "object", obj, want, n, small)
			if m.name == "import" {
				return // no image to check out
			}
			u, err := s.Usage(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if u.ObjectBytes != n || u.ObjectAllocated > small {
				t.Fatalf("df: objects %d bytes, %d allocated; want %d and at most %d", u.ObjectBytes, u.ObjectAllocated, n, small)
			}
			ref, err := s.ResolveImage(ctx, "zeros")
			if err != nil {
				t.Fatal(err)
			}
			for _, link := range []checkout.LinkMode{checkout.LinkCopy, checkout.LinkHardlink} {
				dir := filepath.Join(s.Root(), "..", "co-"+string(link))
				if _, err := checkout.Checkout(ctx, s, ref, dir, checkout.Options{Link: link}); err != nil {
					t.Fatalf("checkout --link %s: %v", link, err)
				}
				checkSparse(t, "checkout --link "+string(link), filepath.Join(dir, "zero"), want, n, small)
			}
		})
	}
}

// checkSparse checks a file's size, content digest and allocated blocks.
func checkSparse(t testing.TB, what, path, want string, size, maxAlloc int64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 > maxAlloc {
		t.Fatalf("%s: %d bytes with %d allocated; want %d with at most %d", what, st.Size, st.Blocks*512, size, maxAlloc)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := digest.Canonical.Digester()
	if _, err := io.Copy(d.Hash(), f); err != nil {
		t.Fatal(err)
	}
	if d.Digest().String() != want {
		t.Fatalf("%s: content %s, want %s", what, d.Digest(), want)
	}
}
