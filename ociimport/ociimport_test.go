package ociimport_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	kuratestdata "github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// The test binary doubles as the importing process for the crash and concurrency tests:
// KURA_TEST_IMPORT="ROOT|DIR|TAG|NAME" makes it import and exit.
func TestMain(m *testing.M) {
	if spec := os.Getenv("KURA_TEST_IMPORT"); spec != "" {
		p := strings.Split(spec, "|")
		s, err := store.Open(p[0])
		if err == nil {
			_, err = ociimport.Import(context.Background(), s, p[1], p[2], p[3])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func testdata(t testing.TB, rel string) string { return kuratestdata.Dir(t, rel) }

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeLayout writes an OCI layout holding one image (gzip layers) tagged tag.
func writeLayout(t testing.TB, dir, tag string, tars ...[]byte) {
	t.Helper()
	blobs := filepath.Join(dir, "blobs", "sha256")
	os.MkdirAll(blobs, 0o755)
	put := func(b []byte) ocispec.Descriptor {
		d := digest.FromBytes(b)
		if err := os.WriteFile(filepath.Join(blobs, d.Encoded()), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}
	}
	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	for _, tb := range tars {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		zw.Write(tb)
		zw.Close()
		d := put(buf.Bytes())
		d.MediaType = ocispec.MediaTypeImageLayerGzip
		layers = append(layers, d)
		diffIDs = append(diffIDs, digest.FromBytes(tb))
	}
	created := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	config, _ := json.Marshal(ocispec.Image{Created: &created, Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}})
	cd := put(config)
	cd.MediaType = ocispec.MediaTypeImageConfig
	manifest, _ := json.Marshal(ocispec.Manifest{Versioned: specsVersioned(), MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: layers})
	md := put(manifest)
	md.MediaType = ocispec.MediaTypeImageManifest
	md.Annotations = map[string]string{ocispec.AnnotationRefName: tag}
	idx, _ := json.Marshal(ocispec.Index{Versioned: specsVersioned(), Manifests: []ocispec.Descriptor{md}})
	os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644)
	os.WriteFile(filepath.Join(dir, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`), 0o644)
}

// exportAll rebuilds every layer of the image and returns their sha256s (must be the DiffIDs).
func checkImage(t testing.TB, s *store.Store, name string) store.Image {
	t.Helper()
	ctx := context.Background()
	img, err := s.ResolveImage(ctx, name)
	if err != nil {
		t.Fatalf("image %s: %v", name, err)
	}
	for _, l := range img.Layers {
		h := sha256.New()
		if err := layer.Export(ctx, s, l, h); err != nil {
			t.Fatalf("image %s: %v", name, err)
		}
	}
	return img
}

func fsckClean(t testing.TB, s *store.Store) store.FsckReport {
	t.Helper()
	r, err := s.Fsck(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if !r.Clean() {
		t.Fatalf("fsck: %s", strings.Join(r.Problems, "\n"))
	}
	return r
}

func TestImportSkopeoLayout(t *testing.T) {
	dir := testdata(t, "zstd-chunked/skopeo-1.9/oci-layout")
	mixed := readFile(t, testdata(t, "zstd-chunked/mixed.tar"))
	s := teststore.Open(t, teststore.Synced())
	ctx := context.Background()
	res, err := ociimport.Import(ctx, s, dir, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "zc" || res.NewLayers != 1 {
		t.Fatalf("result %+v", res)
	}
	img := checkImage(t, s, "zc")
	if img.Layers[0] != digest.FromBytes(mixed) {
		t.Fatalf("DiffID %s, want sha256(mixed.tar)", img.Layers[0])
	}
	var out bytes.Buffer
	if err := layer.Export(ctx, s, img.Layers[0], &out); err != nil || !bytes.Equal(out.Bytes(), mixed) {
		t.Fatalf("export differs from mixed.tar: %v", err)
	}
	// A second import under another name stores nothing new.
	res2, err := ociimport.Import(ctx, s, dir, "zc", "again")
	if err != nil || res2.NewLayers != 0 || res2.Image.ID != res.Image.ID {
		t.Fatalf("re-import: %+v %v", res2, err)
	}
	fsckClean(t, s)
	if _, err := ociimport.Import(ctx, s, dir, "nope", ""); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("unknown tag: %v", err)
	}
}

func TestImportRejectsTamperedBlobs(t *testing.T) {
	mixed := readFile(t, testdata(t, "zstd-chunked/mixed.tar"))
	for _, what := range []string{"config", "layer"} {
		t.Run(what, func(t *testing.T) {
			dir := t.TempDir()
			writeLayout(t, dir, "x", mixed)
			var idx ocispec.Index
			json.Unmarshal(readFile(t, filepath.Join(dir, "index.json")), &idx)
			var m ocispec.Manifest
			json.Unmarshal(readFile(t, filepath.Join(dir, "blobs/sha256", idx.Manifests[0].Digest.Encoded())), &m)
			target := m.Config
			if what == "layer" {
				target = m.Layers[0]
			}
			p := filepath.Join(dir, "blobs/sha256", target.Digest.Encoded())
			b := readFile(t, p)
			if what == "config" {
				b = bytes.Replace(b, []byte("amd64"), []byte("arm64"), 1)
			} else {
				// Recompress differently: same tar (same DiffID), different blob digest.
				var buf bytes.Buffer
				zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
				zw.Write(mixed)
				zw.Close()
				b = buf.Bytes()
				m.Layers[0].Size = int64(len(b)) // keep the size plausible: only the digest is wrong
			}
			os.WriteFile(p, b, 0o644)
			s := teststore.Open(t, teststore.Synced())
			_, err := ociimport.Import(context.Background(), s, dir, "x", "")
			if !errors.Is(err, errdefs.ErrDigestMismatch) {
				t.Fatalf("err = %v, want ErrDigestMismatch", err)
			}
			if refs, _ := s.Refs(context.Background()); len(refs) != 0 {
				t.Fatalf("refs after a failed import: %v", refs)
			}
		})
	}
}

// tarDir makes a tar of a host directory with GNU tar.
func tarDir(t testing.TB, out string, dirs ...string) []byte {
	t.Helper()
	args := append([]string{"-c", "--numeric-owner", "-f", out, "-C", "/"}, dirs...)
	if b, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		t.Fatalf("tar of %v: %v %s", dirs, err, b)
	}
	return readFile(t, out)
}

func importProc(t testing.TB, root, dir, tag, name string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "KURA_TEST_IMPORT="+strings.Join([]string{root, dir, tag, name}, "|"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// TestCrashDuringImport kills an importing process with SIGKILL at random points; after each
// kill fsck is clean and a re-import gives the same image, layer by layer bit-exact.
func TestCrashDuringImport(t *testing.T) {
	if testing.Short() {
		testkit.Skip(t, "-short")
	}
	work := t.TempDir()
	big := tarDir(t, filepath.Join(work, "src.tar"), "usr/local/go/src/net")
	mixed := readFile(t, testdata(t, "zstd-chunked/mixed.tar"))
	layout := filepath.Join(work, "layout")
	writeLayout(t, layout, "v1", mixed, big)

	// Reference run, timed, to spread the kill points over the whole import.
	refRoot := filepath.Join(work, "ref")
	start := time.Now()
	if err := importProc(t, refRoot, layout, "v1", "img").Wait(); err != nil {
		t.Fatal(err)
	}
	full := time.Since(start)
	want := checkImage(t, teststore.Open(t, teststore.At(refRoot), teststore.Synced()), "img")
	t.Logf("full import takes %v", full)

	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	const rounds = 16
	var killedEarly int
	for i := range rounds {
		root := filepath.Join(work, fmt.Sprintf("s%d", i))
		cmd := importProc(t, root, layout, "v1", "img")
		at := time.Duration(rng.Int63n(int64(full)))
		// A random kill point is the point of this test; it is not synchronisation.
		time.Sleep(at)
		cmd.Process.Signal(syscall.SIGKILL)
		died := cmd.Wait() != nil
		if died {
			killedEarly++
		}
		s := teststore.Open(t, teststore.At(root), teststore.Synced())
		r := fsckClean(t, s)
		if err := importProc(t, root, layout, "v1", "img").Wait(); err != nil {
			t.Fatalf("round %d (killed at %v): re-import: %v", i, at, err)
		}
		got := checkImage(t, s, "img")
		if got.ID != want.ID || fmt.Sprint(got.Layers) != fmt.Sprint(want.Layers) {
			t.Fatalf("round %d: image %+v, want %+v", i, got, want)
		}
		for _, l := range want.Layers {
			a, _ := s.LayerTOC(context.Background(), l)
			b, _ := teststore.Open(t, teststore.At(refRoot), teststore.Synced()).LayerTOC(context.Background(), l)
			ja, _ := json.Marshal(a)
			jb, _ := json.Marshal(b)
			if !bytes.Equal(ja, jb) {
				t.Fatalf("round %d: TOC of %s differs from the reference run", i, l)
			}
		}
		fsckClean(t, s)
		rr, err := s.Fsck(context.Background(), true)
		if err != nil || !rr.Clean() {
			t.Fatalf("fsck --repair: %v %v", rr.Problems, err)
		}
		t.Logf("round %d: killed at %v (died: %v, temp files left: %d)", i, at, died, r.TempFiles)
		os.RemoveAll(root)
	}
	if killedEarly == 0 {
		t.Fatal("no round killed the import before it finished")
	}
}

// TestConcurrentImportsAndGC runs two importing processes with overlapping images while gc runs
// over and over; the store ends consistent with both images whole.
func TestConcurrentImportsAndGC(t *testing.T) {
	work := t.TempDir()
	mixed := readFile(t, testdata(t, "zstd-chunked/mixed.tar"))
	real := readFile(t, testdata(t, "zstd-chunked/real.tar"))
	net := tarDir(t, filepath.Join(work, "net.tar"), "usr/local/go/src/net/http")
	la, lb := filepath.Join(work, "a"), filepath.Join(work, "b")
	writeLayout(t, la, "a", mixed, real)
	writeLayout(t, lb, "b", mixed, net)
	root := filepath.Join(work, "store")
	s := teststore.Open(t, teststore.At(root), teststore.Synced())
	// Something for gc to collect: an image that loses its name.
	if _, err := ociimport.Import(context.Background(), s, testdata(t, "zstd-chunked/skopeo-1.9/oci-layout"), "", "old"); err != nil {
		t.Fatal(err)
	}
	func() {
		unlock, _ := s.RLock(context.Background())
		defer unlock()
		s.DeleteRef(context.Background(), "old")
	}()

	for round := range 3 {
		cmds := []*exec.Cmd{
			importProc(t, root, la, "a", fmt.Sprintf("a%d", round)),
			importProc(t, root, lb, "b", fmt.Sprintf("b%d", round)),
		}
		var wg sync.WaitGroup
		done := make(chan struct{})
		var gcs int
		var gcErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				if _, err := s.GC(context.Background()); err != nil {
					gcErr = err
					return
				}
				gcs++
			}
		}()
		for i, c := range cmds {
			if err := c.Wait(); err != nil {
				t.Fatalf("round %d: importer %d: %v %s", round, i, err, c.Stderr)
			}
		}
		close(done)
		wg.Wait()
		if gcErr != nil {
			t.Fatal(gcErr)
		}
		t.Logf("round %d: %d gc runs during the imports", round, gcs)
		checkImage(t, s, fmt.Sprintf("a%d", round))
		checkImage(t, s, fmt.Sprintf("b%d", round))
		fsckClean(t, s)
	}
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, iu := range u.Images {
		ids = append(ids, strings.Join(iu.Names, ","))
	}
	sort.Strings(ids)
	if len(u.Images) != 2 {
		t.Fatalf("images after gc: %v", ids)
	}
	fsckClean(t, s)
}

func specsVersioned() specs.Versioned { return specs.Versioned{SchemaVersion: 2} }
