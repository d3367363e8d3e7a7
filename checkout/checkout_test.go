package checkout_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

func unixTime(sec int64) time.Time { return time.Unix(sec, 0) }

func TestMain(m *testing.M) {
	code := m.Run()
	if rootfsOnce.path != "" {
		os.RemoveAll(filepath.Dir(rootfsOnce.path))
	}
	os.Exit(code)
}

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root (owners, device nodes)")
	}
}

func readTar(t *testing.T, name string) []byte {
	b, err := os.ReadFile(testdata(t, "zstd-chunked/"+name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// upper is a second layer exercising whiteouts, opaque directories and replacements over
// mixed.tar.
func upper(t *testing.T) []byte {
	return tarOf(t,
		tartest.Whiteout("etc/motd"),                          // whiteout of a file
		tartest.Opaque("usr/share"),                           // opaque: lower contents go
		tartest.File("usr/share/new.txt", "only in upper\n"),  // ...and new ones come
		tartest.Dir("usr/bin/big-text"),                       // a file becomes a directory
		tartest.File("usr/bin/big-text/inside", "x"),          //
		tartest.Symlink("dev", "usr"),                         // a directory becomes a symlink
		tartest.File("etc/hostname", "changed\n").Mode(0o600), // new content and mode
		tartest.File("etc/cap", "cap").Xattr("user.kura", "v1"),
		tartest.File("etc/setuid", "s").Mode(0o4755).Owner(1, 2),
	)
}

func TestCheckoutMatchesGNUTar(t *testing.T) {
	needRoot(t)
	mixed, real := readTar(t, "mixed.tar"), readTar(t, "real.tar")
	cases := []struct {
		name   string
		layers [][]byte
		single bool
	}{
		{"mixed", [][]byte{mixed}, true},
		{"real", [][]byte{real}, true},
		{"mixed+upper+real", [][]byte{mixed, upper(t), real}, false},
	}
	for _, c := range cases {
		for _, mode := range []checkout.LinkMode{checkout.LinkCopy, checkout.LinkAuto} {
			t.Run(c.name+"/"+string(mode), func(t *testing.T) {
				s := teststore.Open(t)
				img := teststore.Image(t, s, c.layers...)
				ref := t.TempDir()
				referenceExtract(t, ref, c.layers...)
				got := filepath.Join(t.TempDir(), "rootfs")
				if _, err := checkout.Checkout(context.Background(), s, img, got, checkout.Options{Link: mode}); err != nil {
					t.Fatal(err)
				}
				compareTrees(t, got, ref, compareOpts{hardlinks: true})
				if c.single {
					checkDirTimes(t, got, c.layers[0])
				}
			})
		}
	}
}

func TestCheckoutRealRootfs(t *testing.T) {
	needRoot(t)
	if testing.Short() {
		testkit.Skip(t, "-short: skipping the real root filesystem")
	}
	tarPath := rootfsTar(t)
	b, err := os.ReadFile(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	s := teststore.Open(t)
	img := teststore.Image(t, s, b)
	ref := t.TempDir()
	referenceExtract(t, ref, b)
	got := filepath.Join(t.TempDir(), "rootfs")
	st, err := checkout.Checkout(context.Background(), s, img, got, checkout.Options{Link: checkout.LinkAuto})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rootfs tar %d MiB: %+v", len(b)>>20, st)
	compareTrees(t, got, ref, compareOpts{hardlinks: true})
}

func TestCheckoutHardlinkMode(t *testing.T) {
	needRoot(t)
	mixed := readTar(t, "mixed.tar")
	variants := tarOf(t,
		tartest.File("a", "same bytes"),
		tartest.File("b", "same bytes"),             // same content and metadata as a: shares a's inode
		tartest.File("c", "same bytes").Mode(0o600), // other mode: its own inode
		tartest.File("d", "same bytes").Owner(7, 0), // other owner: its own inode
		tartest.File("e", "same bytes").Xattr("user.k", "v"),
	)
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(filepath.Join(root, "store")))
	img := teststore.Image(t, s, mixed, variants)
	ref := t.TempDir()
	referenceExtract(t, ref, mixed, variants)
	var outs []string
	for i := range 2 {
		out := filepath.Join(root, "co", string(rune('0'+i)))
		st, err := checkout.Checkout(context.Background(), s, img, out, checkout.Options{Link: checkout.LinkHardlink})
		if err != nil {
			t.Fatal(err)
		}
		if st.Linked == 0 {
			t.Fatalf("nothing hardlinked: %+v", st)
		}
		// Metadata and content are right file by file (hardlink groups differ by design).
		compareTrees(t, out, ref, compareOpts{})
		outs = append(outs, out)
	}
	ino := func(p string) uint64 {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	o0, o1 := outs[0], outs[1]
	if ino(filepath.Join(o0, "a")) != ino(filepath.Join(o1, "a")) {
		t.Error("a is not shared between the two checkouts")
	}
	if ino(filepath.Join(o0, "a")) != ino(filepath.Join(o0, "b")) {
		t.Error("a and b (same content and metadata) do not share an inode")
	}
	for _, other := range []string{"c", "d", "e"} {
		if ino(filepath.Join(o0, "a")) == ino(filepath.Join(o0, other)) {
			t.Errorf("a and %s differ in metadata but share an inode", other)
		}
	}
	if ino(filepath.Join(o0, "usr/bin/big-text")) != ino(filepath.Join(o1, "usr/bin/big-text")) {
		t.Error("big-text not shared between checkouts")
	}
	// gc keeps variants in use and removes them once no checkout links them.
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(o0, "a")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(root, "co"))
	r, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if r.Variants == 0 {
		t.Errorf("gc removed no unused variants: %+v", r)
	}
}

// TestCheckoutReflinkXFS makes a loop XFS with reflink support and checks that reflink mode
// clones every file (shared extents) and gives the same tree as the reference.
func TestCheckoutReflinkXFS(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("mkfs.xfs"); err != nil {
		testkit.Skip(t, "mkfs.xfs not installed (apt-get install xfsprogs)")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v %s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		testkit.Skip(t, "cannot loop-mount XFS here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	mixed := readTar(t, "mixed.tar")
	s := teststore.Open(t, teststore.At(filepath.Join(mnt, "store")))
	im := teststore.Image(t, s, mixed)
	out := filepath.Join(mnt, "rootfs")
	st, err := checkout.Checkout(context.Background(), s, im, out, checkout.Options{Link: checkout.LinkReflink})
	if err != nil {
		t.Fatal(err)
	}
	if st.Reflinked == 0 || st.Copied != 0 {
		t.Fatalf("reflink mode: %+v", st)
	}
	ref := t.TempDir()
	referenceExtract(t, ref, mixed)
	compareTrees(t, out, ref, compareOpts{hardlinks: true})
	checkDirTimes(t, out, mixed)
	fr, err := exec.Command("filefrag", "-v", filepath.Join(out, "usr/bin/big-text")).CombinedOutput()
	if err == nil && !strings.Contains(string(fr), "shared") {
		t.Errorf("big-text extents not shared after reflink:\n%s", fr)
	}
	// On ext4 (no FICLONE) reflink mode is a clear error and auto mode copies.
	s2 := teststore.Open(t)
	im2 := teststore.Image(t, s2, mixed)
	if _, err := checkout.Checkout(context.Background(), s2, im2, filepath.Join(t.TempDir(), "r"), checkout.Options{Link: checkout.LinkReflink}); err != nil && !errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("reflink on a file system without it: %v, want ErrUnsupported", err)
	}
}

// hostileImage records an image whose single layer has the given TOC, bypassing import checks,
// as a damaged store or a buggy puller could.
func hostileImage(t *testing.T, s *store.Store, tocs ...*chunked.TOC) store.Image {
	t.Helper()
	ctx := context.Background()
	unlock, err := s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	var ids []digest.Digest
	var descs []ocispec.Descriptor
	for i, toc := range tocs {
		id := digest.FromString(t.Name() + string(rune(i)))
		if err := s.PutLayer(ctx, store.Layer{DiffID: id}, toc, nil); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: id, Size: 1})
	}
	return teststore.PutImage(t, s, ids, descs)
}

func putObject(t *testing.T, s *store.Store, data string) string {
	ctx := context.Background()
	unlock, _ := s.RLock(ctx)
	defer unlock()
	d, err := store.WriteObject(ctx, s, strings.NewReader(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestCheckoutHostile(t *testing.T) {
	needRoot(t)
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := teststore.Open(t)
	obj := putObject(t, s, "pwned")
	reg := func(name string) chunked.Entry {
		return chunked.Entry{Type: chunked.TypeReg, Name: name, Mode: 0o644, Size: 5, Digest: obj}
	}
	toc := func(es ...chunked.Entry) *chunked.TOC { return &chunked.TOC{Version: 1, Entries: es} }
	rel := strings.Repeat("../", 20) + strings.TrimPrefix(outside, "/")
	cases := []struct {
		name    string
		layers  []*chunked.TOC
		wantErr error // nil: may succeed, as long as nothing lands outside
	}{
		{"abs-symlink-then-file", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "a", Linkname: outside}), toc(reg("a/pwned"))}, errdefs.ErrInvalid},
		{"rel-symlink-then-file", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "a", Linkname: rel}, reg("a/pwned"))}, errdefs.ErrInvalid},
		{"symlink-final-replaced", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "v", Linkname: victim}), toc(reg("v"))}, nil},
		{"whiteout-through-symlink", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "a", Linkname: outside}), toc(chunked.Entry{Type: chunked.TypeReg, Name: "a/.wh.victim"})}, nil},
		{"opaque-through-symlink", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "a", Linkname: outside}), toc(chunked.Entry{Type: chunked.TypeReg, Name: "a/.wh..wh..opq"})}, nil},
		{"dotdot", []*chunked.TOC{toc(reg("../pwned"))}, errdefs.ErrInvalid},
		{"dotdot-inner", []*chunked.TOC{toc(reg("a/../../pwned"))}, errdefs.ErrInvalid},
		{"absolute", []*chunked.TOC{toc(reg(outside + "/pwned"))}, errdefs.ErrInvalid},
		{"hardlink-outside", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeLink, Name: "h", Linkname: "../../../../" + victim})}, errdefs.ErrInvalid},
		{"hardlink-via-symlink", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeSymlink, Name: "a", Linkname: outside}, chunked.Entry{Type: chunked.TypeLink, Name: "h", Linkname: "a/victim"})}, errdefs.ErrInvalid},
		{"hardlink-missing", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeLink, Name: "h", Linkname: "nothing"})}, errdefs.ErrInvalid},
		{"too-long", []*chunked.TOC{toc(reg(strings.Repeat("d/", 2100) + "f"))}, errdefs.ErrInvalid},
		{"size-mismatch", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeReg, Name: "f", Size: 99, Digest: obj})}, errdefs.ErrDigestMismatch},
		// Issue 13 case 1: whiteouts that name no element of their directory. The checkout's
		// parent (with a sibling) must survive them: the merge refuses them and the checkout
		// removes nothing anyway.
		{"whiteout-dotdot-root", []*chunked.TOC{toc(reg("keep")), toc(chunked.Entry{Type: chunked.TypeReg, Name: "./.wh..."})}, errdefs.ErrInvalid},
		{"whiteout-dotdot-inner", []*chunked.TOC{toc(reg("d/keep")), toc(chunked.Entry{Type: chunked.TypeReg, Name: "d/.wh..."})}, errdefs.ErrInvalid},
		{"whiteout-dot", []*chunked.TOC{toc(reg("keep")), toc(chunked.Entry{Type: chunked.TypeReg, Name: ".wh.."})}, errdefs.ErrInvalid},
		{"whiteout-empty", []*chunked.TOC{toc(reg("d/keep")), toc(chunked.Entry{Type: chunked.TypeReg, Name: "d/.wh."})}, errdefs.ErrInvalid},
		{"whiteout-aufs-meta", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeReg, Name: ".wh..wh.plnk"})}, errdefs.ErrInvalid},
		{"whiteout-as-directory", []*chunked.TOC{toc(reg(".wh.d/pwned"))}, errdefs.ErrInvalid},
		{"owner-over-32-bits", []*chunked.TOC{toc(chunked.Entry{Type: chunked.TypeReg, Name: "f", UID: 1<<32 + 5, GID: 7})}, errdefs.ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img := hostileImage(t, s, c.layers...)
			parent := t.TempDir()
			sibling := filepath.Join(parent, "sibling")
			if err := os.WriteFile(sibling, []byte("keep"), 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(parent, "rootfs")
			_, err := checkout.Checkout(context.Background(), s, img, out, checkout.Options{Link: checkout.LinkCopy})
			if c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Fatalf("err = %v, want %v", err, c.wantErr)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
			ents, _ := os.ReadDir(outside)
			if len(ents) != 1 || ents[0].Name() != "victim" {
				t.Fatalf("something was written outside the target: %v", ents)
			}
			if b, _ := os.ReadFile(victim); string(b) != "keep" {
				t.Fatalf("victim changed: %q", b)
			}
			if b, _ := os.ReadFile(sibling); string(b) != "keep" {
				t.Fatalf("the checkout's sibling changed: %q", b)
			}
		})
	}
}

func TestCheckoutNotEmpty(t *testing.T) {
	s := teststore.Open(t)
	img := teststore.Image(t, s, tarOf(t, tartest.File("f", "x")))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "existing"), nil, 0o644)
	if _, err := checkout.Checkout(context.Background(), s, img, dir, checkout.Options{}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("checkout into a non-empty dir: %v", err)
	}
}

// TestCheckoutDevicesNotPermitted drops CAP_MKNOD from this thread's effective set: device nodes
// then fail with ErrPermission, or are left out with SkipDevices (fifos are still made).
func TestCheckoutDevicesNotPermitted(t *testing.T) {
	needRoot(t)
	s := teststore.Open(t)
	img := teststore.Image(t, s, readTar(t, "mixed.tar"))

	// Capabilities are per thread: lock this goroutine to its thread and run the checkout here
	// (Checkout makes its syscalls on the calling goroutine).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	saved := data
	data[0].Effective &^= 1 << unix.CAP_MKNOD
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		testkit.Skip(t, "capset: %v", err)
	}
	defer unix.Capset(&hdr, &saved[0])

	_, err := checkout.Checkout(context.Background(), s, img, filepath.Join(t.TempDir(), "a"), checkout.Options{Link: checkout.LinkCopy})
	if !errors.Is(err, errdefs.ErrPermission) {
		t.Fatalf("without CAP_MKNOD: err = %v, want ErrPermission", err)
	}
	out := filepath.Join(t.TempDir(), "b")
	if _, err := checkout.Checkout(context.Background(), s, img, out, checkout.Options{Link: checkout.LinkCopy, SkipDevices: true}); err != nil {
		t.Fatalf("SkipDevices: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(out, "dev/null")); !os.IsNotExist(err) {
		t.Fatalf("dev/null exists without CAP_MKNOD: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(out, "dev/fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Fatalf("dev/fifo: %v %v", fi, err)
	}
}
