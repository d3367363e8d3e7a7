package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
)

// Objects is the content-addressed role of the store: files named by the sha256 of their
// content under objects/, and the hardlink-checkout variants of them under variants/. It owns
// the on-disk layout (objectName encodes it; objectFromName and isFan read it back); everything outside the store
// names an object by digest and, where a path is unavoidable (composefs, mounts, tests that
// damage an object on purpose), asks ObjectPath or ObjectsDir. Ingest and Batch (ingest.go)
// write objects; they are methods of Store because they need its lock and sync settings.
//
// HasObject, Stat and Open are the one way to look an object up; OpenObjectDir gives the same
// lookups relative to a descriptor of objects/, a fast path for bulk work that the caller scopes
// (Close) because an open descriptor pins the file system (it could not be unmounted).
//
// An Objects comes with a Store (Open); the zero value names no directory.
type Objects struct {
	dir      string // <root>/objects
	variants string // <root>/variants
}

func newObjects(root string) Objects {
	return Objects{dir: filepath.Join(root, dirObjects), variants: filepath.Join(root, dirVariants)}
}

// Info describes one stored object.
type Info struct {
	Digest digest.Digest
	Size   int64
	// Allocated is the disk the object takes (st_blocks): less than Size where it has holes.
	// Walk fills it in; Stat leaves it zero.
	Allocated int64
}

// objectName is the object's name below objects/: "xx/rest" of its hex digest, the layout
// composefs expects of its data-only lower directory (so objects/ is mounted as it is). It is the
// one function that encodes the layout; objectFromName reverses it.
func objectName(d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	h := d.Encoded()
	return h[:2] + "/" + h[2:], nil
}

// objectFromName is the digest an entry name of objects/<fan>/ stands for; ok is false for a
// name that is no object's (fsck reports those as stray).
func objectFromName(fan, name string) (d digest.Digest, ok bool) {
	if !isFan(fan) {
		return "", false
	}
	d = digest.NewDigestFromEncoded(digest.SHA256, fan+name)
	return d, d.Validate() == nil
}

// isFan says whether name can be a fan-out directory of objectName's layout (its first part).
func isFan(name string) bool { return len(name) == 2 }

// checkDigest accepts only well-formed sha256 digests, the only kind the store names things by.
func checkDigest(d digest.Digest) error {
	if digests.IsSHA256(d) {
		return nil
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v: %w", d, err, errdefs.ErrInvalid)
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("digest %q: only sha256 is stored: %w", d, errdefs.ErrUnsupported)
	}
	return nil
}

// ObjectsDir is the objects directory: the data-only lower layer of a composefs mount, whose
// redirects name objects relative to it.
func (o *Objects) ObjectsDir() string { return o.dir }

// ObjectName is the object's path relative to ObjectsDir (whether or not it exists): the
// redirect a composefs image records for it, with ObjectsDir as the mount's data-only lower.
func (o *Objects) ObjectName(d digest.Digest) (string, error) { return objectName(d) }

// ObjectPath is where the object with digest d lives (whether or not it exists): ObjectsDir
// joined with ObjectName. Checkout and composefs use it to reflink or reference the file
// directly; tests use it to damage an object.
func (o *Objects) ObjectPath(d digest.Digest) (string, error) {
	rel, err := objectName(d)
	if err != nil {
		return "", err
	}
	return filepath.Join(o.dir, rel), nil
}

// Stat returns the object's info, or an error wrapping errdefs.ErrNotFound.
func (o *Objects) Stat(ctx context.Context, d digest.Digest) (Info, error) {
	p, err := o.ObjectPath(d)
	if err != nil {
		return Info{}, err
	}
	n, err := sizeAt(unix.AT_FDCWD, p, d)
	if err != nil {
		return Info{}, err
	}
	return Info{Digest: d, Size: n}, nil
}

// HasObject says whether object d is stored (one stat). It is the one way to ask; an ingest
// within a Batch also counts the batch's pending objects.
func (o *Objects) HasObject(d digest.Digest) bool {
	_, err := o.Stat(context.Background(), d)
	return err == nil
}

// Open opens the object read-only, or fails with an error wrapping errdefs.ErrNotFound. It is
// the one way to open an object; a Batch also opens its pending ones (Batch.OpenPending).
func (o *Objects) Open(ctx context.Context, d digest.Digest) (*os.File, error) {
	p, err := o.ObjectPath(d)
	if err != nil {
		return nil, err
	}
	fd, err := openAt(unix.AT_FDCWD, p, d)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), p), nil
}

// sizeAt stats object d, named name relative to dirfd (its path and AT_FDCWD, or its
// ObjectName and a descriptor of objects/): its size, or an error wrapping ErrNotFound. Anything
// but a regular file (a planted symlink) is refused.
func sizeAt(dirfd int, name string, d digest.Digest) (int64, error) {
	var st unix.Stat_t
	var err error
	for {
		err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, objectErr(d, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("object %s is not a regular file: %w", d, errdefs.ErrInvalid)
	}
	return st.Size, nil
}

// openAt opens object d, named name relative to dirfd as for sizeAt, and returns the bare
// descriptor; a symlink is refused.
func openAt(dirfd int, name string, d digest.Digest) (int, error) {
	fd, err := openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW)
	if err != nil {
		return -1, objectErr(d, err)
	}
	return fd, nil
}

// openat is openat(2) with O_CLOEXEC, retried when a signal interrupts it (as os.Open does: FUSE
// and network file systems return EINTR under the runtime's preemption signals).
func openat(dirfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, flags|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func objectErr(d digest.Digest, err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
	}
	return fmt.Errorf("object %s: %w", d, err)
}

// Walk calls fn for every object, in no particular order: walkNames, then an lstat per object
// for its sizes.
func (o *Objects) Walk(ctx context.Context, fn func(Info) error) error {
	return o.walkNames(ctx, func(d digest.Digest) error {
		i, ok, err := o.lstatInfo(d)
		if err != nil || !ok {
			return err
		}
		return fn(i)
	})
}

// lstatInfo is a listed object's sizes; ok is false if it is gone since it was listed.
func (o *Objects) lstatInfo(d digest.Digest) (i Info, ok bool, err error) {
	p, err := o.ObjectPath(d)
	if err != nil {
		return Info{}, false, err
	}
	fi, err := os.Lstat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, false, nil
	}
	if err != nil {
		return Info{}, false, fmt.Errorf("object %s: %w", d, err)
	}
	return Info{Digest: d, Size: fi.Size(), Allocated: allocated(fi)}, true, nil
}

// Delete removes object d. Only under the exclusive lock: a concurrent import may be about to
// reference the object.
func (x *Exclusive) Delete(ctx context.Context, d digest.Digest) error {
	if err := x.check(); err != nil {
		return err
	}
	return x.Objects.delete(d)
}

func (o *Objects) delete(d digest.Digest) error {
	p, err := o.ObjectPath(d)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
		}
		return fmt.Errorf("deleting object %s: %w", d, err)
	}
	return nil
}

// VariantPath is where a hardlink checkout keeps the copy of object obj that carries one set of
// metadata: variants/<obj's object name>-<key hex>, where key digests content and metadata (see
// package checkout). The name carries the object so that fsck can check a variant's content.
// gc removes variants that no checkout links to any more.
func (o *Objects) VariantPath(obj, key digest.Digest) (string, error) {
	rel, err := objectName(obj)
	if err != nil {
		return "", err
	}
	if err := checkDigest(key); err != nil {
		return "", err
	}
	return filepath.Join(o.variants, rel+"-"+key.Encoded()), nil
}

// parseVariantName returns the object a variant file in variants/<fan>/ holds, from its name.
// ok is false for anything else, including the variants of older stores (named by key alone),
// whose object cannot be known.
func parseVariantName(fan, name string) (obj digest.Digest, ok bool) {
	rest, key, found := strings.Cut(name, "-")
	if !found || !digests.IsSHA256(digest.NewDigestFromEncoded(digest.SHA256, key)) {
		return "", false
	}
	obj, ok = objectFromName(fan, rest)
	return obj, ok && digests.IsSHA256(obj)
}

// allocated is the disk a file takes, from st_blocks (512-byte units whatever the block size).
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
