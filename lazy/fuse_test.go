package lazy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
)

// overlayOverFUSE mounts an overlay whose metadata layer holds one metacopy file per content
// (sparse, redirected to the object's name, as composefs's EROFS image does) over two data-only
// layers: the store's objects/ (lacking them) and the FUSE server's directory. It returns the
// mount's directory; the files are named f0, f1, ….
func overlayOverFUSE(t *testing.T, s *store.Store, srv *FUSEServer, contents [][]byte) string {
	t.Helper()
	meta, data, target := t.TempDir(), t.TempDir(), t.TempDir()
	var entries []layerfs.Entry
	for i, c := range contents {
		d := digest.FromBytes(c)
		entries = append(entries, layerfs.Entry{Type: layerfs.TypeReg, Digest: d, Size: int64(len(c))})
		name, err := s.ObjectName(d)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(meta, fmt.Sprintf("f%d", i))
		if err := os.WriteFile(f, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f, int64(len(c))); err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{"trusted.overlay.metacopy": "", "trusted.overlay.redirect": "/" + name} {
			if err := unix.Setxattr(f, k, []byte(v), 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := srv.serveDir(data, digest.FromString("layer"), entries); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Kill() })
	opts := "metacopy=on,redirect_dir=on,lowerdir=" + meta + "::" + s.ObjectsDir() + "::" + data
	if err := unix.Mount("overlay", target, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("overlayfs refuses a FUSE directory as a data-only layer: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) })
	return target
}

// TestOverlayOverFUSEDataLayer: what this kernel does with a FUSE directory as overlay's last
// data-only layer (the FUSE fallback of lazy pulls): overlay takes it; stat shows the final
// size before any fill; the first open fills through the FillFunc once and the reader gets the
// bytes, read by the kernel from the store's object file (passthrough, no read reaches the
// server); a failed fill fails the read with EIO; once the server is killed, opens fail with
// ENOTCONN, never zeros.
func TestOverlayOverFUSEDataLayer(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting needs root")
	}
	s := teststore.Open(t)
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	contents := make([][]byte, 3)
	for i := range contents {
		contents[i] = make([]byte, 300<<10+i)
		rand.New(rand.NewSource(int64(i))).Read(contents[i])
	}
	var fills atomic.Int32
	fill := func(ctx context.Context, _, obj digest.Digest) error {
		fills.Add(1)
		if obj == digest.FromBytes(contents[1]) {
			return errors.New("the registry is down")
		}
		for _, c := range contents {
			if digest.FromBytes(c) == obj {
				_, err := store.WriteObject(ctx, s, bytes.NewReader(c), obj, int64(len(c)))
				return err
			}
		}
		return errors.New("unknown object")
	}
	srv := NewFUSEServer(context.Background(), s, Stored(fill), 0, slog.Default())
	target := overlayOverFUSE(t, s, srv, contents)
	st, err := os.Stat(filepath.Join(target, "f0"))
	if err != nil || st.Size() != int64(len(contents[0])) || fills.Load() != 0 {
		t.Fatalf("stat before any fill: %v, %v, %d fills", st, err, fills.Load())
	}
	for range 2 {
		if b, err := os.ReadFile(filepath.Join(target, "f0")); err != nil || !bytes.Equal(b, contents[0]) {
			t.Fatalf("read through overlay over FUSE: %d bytes, %v", len(b), err)
		}
	}
	if fills.Load() != 1 {
		t.Fatalf("%d fills for one object read twice", fills.Load())
	}
	if n := srv.sh.reads.Load(); n != 0 { // this kernel and go-fuse agree on FUSE passthrough
		t.Fatalf("the server answered %d reads itself; want all through passthrough", n)
	}
	if b, err := os.ReadFile(filepath.Join(target, "f1")); !errors.Is(err, syscall.EIO) || len(b) != 0 {
		t.Fatalf("read of an object whose fill failed: %d bytes, %v; want EIO", len(b), err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"f0", "f2"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); !errors.Is(err, syscall.ENOTCONN) || len(b) != 0 {
			t.Fatalf("%s with the server killed: %d bytes, %v; want ENOTCONN", name, len(b), err)
		}
	}
}
