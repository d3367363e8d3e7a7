package storeimage

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestPageCacheIsShared mounts two versions of an image that share most files and checks that
// reading through one mount fills the page cache of the store objects themselves, which the other
// mount reads too: the second mount adds (close to) nothing.
func TestPageCacheIsShared(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting and drop_caches need root")
	}
	ctx := context.Background()
	s := teststore.Open(t)
	rng := rand.New(rand.NewSource(7))
	var shared []ent
	for i := 0; i < 32; i++ {
		b := make([]byte, 512<<10)
		rng.Read(b)
		shared = append(shared, reg(fmt.Sprintf("data/f%02d", i), string(b), 0o644))
	}
	v1 := importImage(t, s, [][]byte{mkTar(t, append([]ent{dir("data/", 0o755), reg("version", "1\n", 0o644)}, shared...)...)})
	v2 := importImage(t, s, [][]byte{mkTar(t, append([]ent{dir("data/", 0o755), reg("version", "2\n", 0o644)}, shared...)...)})
	if v1.ID == v2.ID {
		t.Fatal("the two versions are the same image")
	}
	var targets []string
	for _, img := range []store.Image{v1, v2} {
		cfs, err := Ensure(ctx, s, img)
		if err != nil {
			t.Fatal(err)
		}
		target := t.TempDir()
		plan, err := mount.NewPlan(cfs, []string{s.ObjectsDir()}, target)
		if err != nil {
			t.Fatal(err)
		}
		if err := mount.Mount(ctx, plan); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mount.Unmount(target) })
		targets = append(targets, target)
	}
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0o200); err != nil {
		testkit.Skip(t, "cannot drop caches: %v", err)
	}
	before := residentObjectPages(t, s)
	if before > 0 {
		t.Logf("%d object pages still cached after drop_caches", before)
	}
	c0 := cachedKiB(t)
	readAll(t, filepath.Join(targets[0], "data"))
	c1 := cachedKiB(t)
	resident := residentObjectPages(t, s)
	readAll(t, filepath.Join(targets[1], "data"))
	c2 := cachedKiB(t)
	const pages = 32 * (512 << 10) / 4096
	if resident-before < pages*9/10 {
		t.Fatalf("reading through the first mount brought only %d of %d object pages into the cache: the mount does not read the objects' page cache", resident-before, pages)
	}
	t.Logf("Cached: first mount +%d KiB, second mount +%d KiB (16 MiB of shared files)", c1-c0, c2-c1)
}

func readAll(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// residentObjectPages counts the pages of all store objects that are in the page cache (mincore).
func residentObjectPages(t *testing.T, s *store.Store) int {
	t.Helper()
	n := 0
	err := filepath.Walk(s.ObjectsDir(), func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		defer unix.Munmap(m)
		vec := make([]byte, (fi.Size()+4095)/4096)
		if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
			return errno
		}
		for _, v := range vec {
			n += int(v & 1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func cachedKiB(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Cached:"); ok {
			v, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return v
		}
	}
	t.Fatal("no Cached line in /proc/meminfo")
	return 0
}
