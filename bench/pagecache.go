package main

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// cachedDelta drops the page cache, runs fn and returns how much Cached in
// /proc/meminfo grew. Other processes on the machine add noise; residentBytes
// is the precise figure for one store.
func cachedDelta(fn func() error) (int64, error) {
	if err := dropCaches(); err != nil {
		return 0, err
	}
	before, err := meminfoCached()
	if err != nil {
		return 0, err
	}
	if err := fn(); err != nil {
		return 0, err
	}
	after, err := meminfoCached()
	if err != nil {
		return 0, err
	}
	return after - before, nil
}

func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200); err != nil {
		return fmt.Errorf("dropping page cache: %w", err)
	}
	return nil
}

// meminfoCached returns the Cached line of /proc/meminfo in bytes.
func meminfoCached() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "Cached:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) < 1 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parsing meminfo Cached: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no Cached line in /proc/meminfo")
}

// Residency is the page cache one group of readers left behind, measured
// from dropped caches.
type Residency struct {
	Readers     int   `json:"readers"`
	CachedDelta int64 `json:"cachedDelta"` // /proc/meminfo Cached after - before
	Resident    int64 `json:"resident"`    // mincore of the store's files
	// ResidentBy splits Resident by part of the store (kura: objects,
	// composefs images, other).
	ResidentBy map[string]int64 `json:"residentBy,omitempty"`
	Error      string           `json:"error,omitempty"`
}

// measureResidency drops the page cache, runs the readers, and takes the
// store's resident pages, split by classify when it is not nil.
func measureResidency(readers int, read func() error, root string, classify func(rel string) string) Residency {
	r := Residency{Readers: readers}
	delta, err := cachedDelta(read)
	r.CachedDelta = delta
	if err != nil {
		r.Error = err.Error()
		return r
	}
	by, err := residentBytesBy(root, classify)
	if err != nil {
		r.Error = err.Error()
	}
	for k, n := range by {
		r.Resident += n
		if classify == nil {
			continue
		}
		if r.ResidentBy == nil {
			r.ResidentBy = map[string]int64{}
		}
		r.ResidentBy[k] += n
	}
	return r
}

// residentBytes sums, with mincore(2), the page-cache-resident bytes of every
// regular file under root, each inode once: the page cache that belongs to
// this store, whatever else the machine is doing.
func residentBytes(root string) (int64, error) {
	by, err := residentBytesBy(root, nil)
	return by[""], err
}

// residentBytesBy is residentBytes split by classify(path relative to root);
// with a nil classify everything is under "".
func residentBytesBy(root string, classify func(rel string) string) (map[string]int64, error) {
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	page := int64(os.Getpagesize())
	total := map[string]int64{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) || os.IsPermission(err) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil || fi.Size() == 0 {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		key := inode{uint64(st.Dev), st.Ino}
		if seen[key] {
			return nil
		}
		seen[key] = true
		n, err := residentInFile(p, fi.Size())
		if err != nil {
			return nil // a file that vanished or cannot be mapped holds no cache we can see
		}
		class := ""
		if classify != nil {
			rel, _ := filepath.Rel(root, p)
			class = classify(filepath.ToSlash(rel))
		}
		total[class] += n * page
		return nil
	})
	return total, err
}

func residentInFile(path string, size int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOATIME, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(m)
	page := int64(os.Getpagesize())
	vec := make([]byte, (size+page-1)/page)
	// x/sys/unix has no Mincore wrapper.
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, e
	}
	var n int64
	for _, v := range vec {
		n += int64(v & 1)
	}
	return n, nil
}

// readTrees reads every regular file under the given directories of root.
func readTrees(root string, dirs []string) error {
	buf := make([]byte, 1<<20)
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(root, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = io.CopyBuffer(io.Discard, f, buf)
			return err
		})
		if err != nil {
			return fmt.Errorf("reading %s: %w", root, err)
		}
	}
	return nil
}

// readFiles reads the named files (slash paths relative to root).
func readFiles(root string, files []string) error {
	buf := make([]byte, 1<<20)
	for _, name := range files {
		f, err := os.Open(filepath.Join(root, filepath.FromSlash(name)))
		if err != nil {
			return fmt.Errorf("reading %s: %w", root, err)
		}
		_, err = io.CopyBuffer(io.Discard, f, buf)
		f.Close()
		if err != nil {
			return fmt.Errorf("reading %s/%s: %w", root, name, err)
		}
	}
	return nil
}
