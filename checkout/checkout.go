// Package checkout materialises an image's merged root filesystem from the store into a
// directory: layers in order, whiteouts and opaque directories applied, file contents reflinked,
// copied or hardlinked from store objects. It never writes outside the target directory: every
// path is resolved with openat2(RESOLVE_IN_ROOT) and the last component is never followed.
package checkout

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"unsafe"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// LinkMode says how file contents get from the store into the checkout.
type LinkMode string

const (
	// LinkAuto reflinks (FICLONE) where the file system supports it, else copies.
	LinkAuto LinkMode = "auto"
	// LinkHardlink hardlinks to one store-side copy per (content, mode, owner, mtime, xattrs),
	// so files share inodes across checkouts yet each keeps its metadata. Editing such a file in
	// place changes every checkout that shares it.
	LinkHardlink LinkMode = "hardlink"
	// LinkReflink requires reflinks.
	LinkReflink LinkMode = "reflink"
	// LinkCopy always copies.
	LinkCopy LinkMode = "copy"
)

// ParseLinkMode checks a --link value.
func ParseLinkMode(s string) (LinkMode, error) {
	switch m := LinkMode(s); m {
	case LinkAuto, LinkHardlink, LinkReflink, LinkCopy:
		return m, nil
	}
	return "", fmt.Errorf("link mode %q: want auto, hardlink, reflink or copy: %w", s, errdefs.ErrInvalid)
}

// Options for Checkout.
type Options struct {
	Link LinkMode
	// SkipDevices leaves out device nodes instead of failing where mknod is not permitted.
	SkipDevices bool
}

// Stats counts what a checkout did.
type Stats struct {
	Files, Dirs, Symlinks, Hardlinks, Devices, Whiteouts int
	Reflinked, Copied, Linked                            int
}

// Checkout materialises img into dir, which must be empty or absent. It holds the store's
// shared lock while it runs.
func Checkout(ctx context.Context, s *store.Store, img store.Image, dir string, opts Options) (Stats, error) {
	if opts.Link == "" {
		opts.Link = LinkAuto
	}
	if _, err := ParseLinkMode(string(opts.Link)); err != nil {
		return Stats{}, err
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Stats{}, err
	}
	defer unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Stats{}, fmt.Errorf("checkout: %w", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Stats{}, fmt.Errorf("checkout: %w", err)
	}
	if len(ents) != 0 {
		return Stats{}, fmt.Errorf("checkout: %s is not empty: %w", dir, errdefs.ErrInvalid)
	}
	rootfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("checkout: opening %s: %w", dir, err)
	}
	defer unix.Close(rootfd)
	c := &checkout{ctx: ctx, s: s, root: rootfd, opts: opts, dirs: map[string]chunked.Entry{}, parents: map[string]int{}}
	defer c.dropParents()
	c.reflink = opts.Link == LinkAuto || opts.Link == LinkReflink
	for _, l := range img.Layers {
		toc, err := s.LayerTOC(ctx, l)
		if err != nil {
			return c.stats, fmt.Errorf("checkout: %w", err)
		}
		if err := c.layer(toc); err != nil {
			return c.stats, fmt.Errorf("checkout of layer %s: %w", l, err)
		}
	}
	if err := c.finishDirs(); err != nil {
		return c.stats, fmt.Errorf("checkout: %w", err)
	}
	return c.stats, nil
}

type checkout struct {
	ctx     context.Context
	s       *store.Store
	root    int
	opts    Options
	reflink bool // still worth trying FICLONE
	stats   Stats
	// dirs holds the metadata of every directory entry, applied at the end (children first) so
	// that read-only modes and times survive the creation of their contents.
	dirs map[string]chunked.Entry
	// parents caches open directory fds by clean path; dropped on any removal, since removing
	// can change what a path resolves to.
	parents map[string]int
}

func (c *checkout) dropParents() {
	for _, fd := range c.parents {
		unix.Close(fd)
	}
	clear(c.parents)
}

// layer applies one layer: first its whiteouts (which concern lower layers only, as the OCI spec
// says), then its entries in order.
func (c *checkout) layer(toc *chunked.TOC) error {
	type item struct {
		name string
		e    *chunked.Entry
	}
	var items []item
	for i := range toc.Entries {
		e := &toc.Entries[i]
		if e.Type == chunked.TypeChunk {
			continue
		}
		name, err := layer.CleanName(e.Name)
		if err != nil {
			return err
		}
		base := path.Base(name)
		switch {
		case base == layer.OpaqueMarker:
			if err := c.clearDir(path.Dir(name)); err != nil {
				return fmt.Errorf("opaque directory %q: %w", path.Dir(name), err)
			}
			c.stats.Whiteouts++
		case strings.HasPrefix(base, layer.WhiteoutPrefix):
			target := path.Join(path.Dir(name), strings.TrimPrefix(base, layer.WhiteoutPrefix))
			if err := c.remove(target); err != nil {
				return fmt.Errorf("whiteout %q: %w", name, err)
			}
			delete(c.dirs, target)
			c.stats.Whiteouts++
		default:
			items = append(items, item{name, e})
		}
	}
	for _, it := range items {
		if err := c.ctx.Err(); err != nil {
			return err
		}
		if err := c.entry(it.name, it.e); err != nil {
			return fmt.Errorf("%q: %w", it.e.Name, err)
		}
	}
	return nil
}

// parent opens the directory that will hold name, creating missing directories (mode 0755, as
// tar does). Resolution stays inside the root whatever symlinks earlier entries made.
func (c *checkout) parent(name string) (int, string, error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if base == "" || base == "." || base == ".." {
		return -1, "", fmt.Errorf("bad name %q: %w", name, errdefs.ErrInvalid)
	}
	fd, err := c.openDir(dir)
	return fd, base, err
}

func (c *checkout) openDir(dir string) (int, error) {
	if dir == "" || dir == "." {
		return c.root, nil
	}
	if fd, ok := c.parents[dir]; ok {
		return fd, nil
	}
	fd, err := unix.Openat2(c.root, dir, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) {
		pfd, base, perr := c.parent(dir)
		if perr != nil {
			return -1, perr
		}
		if err := unix.Mkdirat(pfd, base, 0o755); errors.Is(err, unix.EEXIST) {
			// Something that is not a directory is there: a symlink pointing nowhere inside the
			// root (possibly to the host, which never counts).
			return -1, fmt.Errorf("parent %q is a symlink that leads nowhere inside the tree: %w", dir, errdefs.ErrInvalid)
		} else if err != nil {
			return -1, fmt.Errorf("creating directory %q: %w", dir, err)
		}
		fd, err = unix.Openat2(c.root, dir, &unix.OpenHow{
			Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
		})
	}
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) {
			return -1, fmt.Errorf("parent %q is not a directory: %w", dir, errdefs.ErrInvalid)
		}
		return -1, fmt.Errorf("opening directory %q: %w", dir, err)
	}
	c.parents[dir] = fd
	return fd, nil
}

// lstat reports what sits at base in pfd (0 mode when nothing).
func lstat(pfd int, base string) (unix.Stat_t, bool, error) {
	var st unix.Stat_t
	err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW)
	if errors.Is(err, unix.ENOENT) {
		return st, false, nil
	}
	return st, err == nil, err
}

// remove deletes name (recursively) if it exists; a missing name or parent is fine.
func (c *checkout) remove(name string) error {
	dir, base := path.Split(name)
	fd, err := c.existingDir(strings.TrimSuffix(dir, "/"))
	if err != nil || fd < 0 {
		return err
	}
	defer c.closeUncached(fd)
	c.dropParents()
	return removeAllAt(fd, base)
}

// clearDir empties an existing directory (opaque marker): what lower layers put there goes.
func (c *checkout) clearDir(dir string) error {
	fd, err := c.existingDir(dir)
	if err != nil || fd < 0 {
		return err
	}
	defer c.closeUncached(fd)
	c.dropParents()
	names, err := readDirNames(fd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeAllAt(fd, n); err != nil {
			return err
		}
		delete(c.dirs, path.Join(dir, n))
	}
	return nil
}

// existingDir opens dir without creating anything; -1 when it does not exist.
func (c *checkout) existingDir(dir string) (int, error) {
	if dir == "" || dir == "." {
		return c.root, nil
	}
	fd, err := unix.Openat2(c.root, dir, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("opening %q: %w", dir, err)
	}
	return fd, nil
}

func (c *checkout) closeUncached(fd int) {
	if fd != c.root {
		unix.Close(fd)
	}
}

func readDirNames(fd int) ([]string, error) {
	dfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(dfd), "dir")
	defer f.Close()
	return f.Readdirnames(-1)
}

// removeAllAt removes base in dirfd and, for a directory, everything below it, without following
// symlinks.
func removeAllAt(dirfd int, base string) error {
	err := unix.Unlinkat(dirfd, base, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("removing %q: %w", base, err)
	}
	fd, err := unix.Openat(dirfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("removing %q: %w", base, err)
	}
	names, err := readDirNames(fd)
	if err == nil {
		for _, n := range names {
			if err = removeAllAt(fd, n); err != nil {
				break
			}
		}
	}
	unix.Close(fd)
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, base, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing directory %q: %w", base, err)
	}
	return nil
}

// entry creates one non-whiteout entry.
func (c *checkout) entry(name string, e *chunked.Entry) error {
	if name == "." {
		if e.Type != chunked.TypeDir {
			return fmt.Errorf("the root is not a directory: %w", errdefs.ErrInvalid)
		}
		c.dirs["."] = *e
		return nil
	}
	pfd, base, err := c.parent(name)
	if err != nil {
		return err
	}
	st, found, err := lstat(pfd, base)
	if err != nil {
		return err
	}
	if found {
		if e.Type == chunked.TypeDir && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			c.dirs[name] = *e // an existing directory only gets new metadata
			return nil
		}
		if e.Type == chunked.TypeLink {
			if t, err := layer.CleanName(e.Linkname); err == nil && t == name {
				return fmt.Errorf("hardlink to itself: %w", errdefs.ErrInvalid)
			}
		}
		// A later entry replaces an earlier one, a directory with all its contents.
		err := removeAllAt(pfd, base)
		c.dropParents() // cached fds may name what was just removed
		if err != nil {
			return err
		}
		delete(c.dirs, name)
		if pfd, base, err = c.parent(name); err != nil {
			return err
		}
	}
	switch e.Type {
	case chunked.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return err
		}
		c.dirs[name] = *e
		c.stats.Dirs++
		return nil
	case chunked.TypeReg:
		c.stats.Files++
		return c.regular(pfd, base, e)
	case chunked.TypeSymlink:
		if e.Linkname == "" || len(e.Linkname) > unix.PathMax {
			return fmt.Errorf("symlink target empty or over PATH_MAX: %w", errdefs.ErrInvalid)
		}
		if err := unix.Symlinkat(e.Linkname, pfd, base); err != nil {
			return err
		}
		c.stats.Symlinks++
		return setMeta(pfd, base, -1, e, true)
	case chunked.TypeLink:
		c.stats.Hardlinks++
		return c.hardlink(pfd, base, e)
	case chunked.TypeChar, chunked.TypeBlock, chunked.TypeFifo:
		mode := uint32(e.Mode & 0o7777)
		switch e.Type {
		case chunked.TypeChar:
			mode |= unix.S_IFCHR
		case chunked.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		err := unix.Mknodat(pfd, base, mode, int(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor))))
		if errors.Is(err, unix.EPERM) {
			if c.opts.SkipDevices {
				return nil
			}
			return fmt.Errorf("creating device node: %v: %w", err, errdefs.ErrPermission)
		}
		if err != nil {
			return err
		}
		c.stats.Devices++
		return setMeta(pfd, base, -1, e, false)
	}
	return fmt.Errorf("entry type %q: %w", e.Type, errdefs.ErrUnsupported)
}

func (c *checkout) hardlink(pfd int, base string, e *chunked.Entry) error {
	target, err := layer.CleanName(e.Linkname)
	if err != nil {
		return fmt.Errorf("hardlink target: %w", err)
	}
	tdir, tbase := path.Split(target)
	tfd, err := c.existingDir(strings.TrimSuffix(tdir, "/"))
	if err != nil {
		return err
	}
	if tfd < 0 {
		return fmt.Errorf("hardlink target %q does not exist: %w", e.Linkname, errdefs.ErrInvalid)
	}
	defer c.closeUncached(tfd)
	st, found, err := lstat(tfd, tbase)
	if err != nil {
		return err
	}
	if !found || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return fmt.Errorf("hardlink target %q is missing or a directory: %w", e.Linkname, errdefs.ErrInvalid)
	}
	// No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself, as tar does.
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hardlink to %q: %w", e.Linkname, err)
	}
	return nil
}

// regular creates a regular file from its object.
func (c *checkout) regular(pfd int, base string, e *chunked.Entry) error {
	if e.Size == 0 {
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return setMeta(pfd, base, fd, e, false)
	}
	d, err := digest.Parse(e.Digest)
	if err != nil {
		return fmt.Errorf("digest %q: %w", e.Digest, errdefs.ErrInvalid)
	}
	if c.opts.Link == LinkHardlink {
		return c.linkVariant(pfd, base, d, e)
	}
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := c.fill(fd, d, e.Size); err != nil {
		return err
	}
	return setMeta(pfd, base, fd, e, false)
}

// fill puts the object's content into the open file fd: FICLONE when possible, else a copy
// (copy_file_range under the hood).
func (c *checkout) fill(fd int, d digest.Digest, size int64) error {
	src, err := c.s.Open(c.ctx, d)
	if err != nil {
		return err
	}
	defer src.Close()
	if fi, err := src.Stat(); err != nil || fi.Size() != size {
		return fmt.Errorf("object %s has the wrong size for this entry: %w", d, errdefs.ErrDigestMismatch)
	}
	if c.reflink {
		err := unix.IoctlFileClone(fd, int(src.Fd()))
		if err == nil {
			c.stats.Reflinked++
			return nil
		}
		if c.opts.Link == LinkReflink {
			return fmt.Errorf("reflink: %v: %w", err, errdefs.ErrUnsupported)
		}
		c.reflink = false // the file system cannot; stop asking
	}
	if err := copyFD(fd, src, size); err != nil {
		return fmt.Errorf("copying object %s: %w", d, err)
	}
	c.stats.Copied++
	return nil
}

// variantKey digests content and every piece of metadata a hardlink shares.
func variantKey(d digest.Digest, e *chunked.Entry) digest.Digest {
	h := sha256.New()
	fmt.Fprintf(h, "kura-variant-1\x00%s\x00%o\x00%d\x00%d\x00", d, e.Mode&0o7777, e.UID, e.GID)
	if e.ModTime != nil {
		fmt.Fprintf(h, "%d", e.ModTime.UnixNano())
	}
	keys := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "\x00%s=%s", k, e.Xattrs[k])
	}
	return digest.NewDigest(digest.SHA256, h)
}

// linkVariant hardlinks base to the store-side variant of d with e's metadata, creating it first
// if needed (temp file, metadata, then rename: a variant is never seen half made).
func (c *checkout) linkVariant(pfd int, base string, d digest.Digest, e *chunked.Entry) error {
	vp, err := c.s.VariantPath(variantKey(d, e))
	if err != nil {
		return err
	}
	err = unix.Linkat(unix.AT_FDCWD, vp, pfd, base, 0)
	if errors.Is(err, unix.ENOENT) {
		if err := c.makeVariant(vp, d, e); err != nil {
			return err
		}
		err = unix.Linkat(unix.AT_FDCWD, vp, pfd, base, 0)
	}
	if errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("hardlink checkout needs the store and the target on one file system: %w", errdefs.ErrUnsupported)
	}
	if errors.Is(err, unix.EMLINK) {
		// Too many links to one inode: this file gets its own copy.
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := c.fill(fd, d, e.Size); err != nil {
			return err
		}
		return setMeta(pfd, base, fd, e, false)
	}
	if err != nil {
		return err
	}
	c.stats.Linked++
	return nil
}

func (c *checkout) makeVariant(vp string, d digest.Digest, e *chunked.Entry) error {
	if err := os.MkdirAll(filepath.Dir(vp), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(c.s.TempDir(), "variant-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op once renamed
	defer f.Close()
	if err := c.fill(int(f.Fd()), d, e.Size); err != nil {
		return err
	}
	dfd, err := unix.Open(filepath.Dir(tmp), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dfd)
	if err := setMeta(dfd, filepath.Base(tmp), int(f.Fd()), e, false); err != nil {
		return err
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, vp, unix.RENAME_NOREPLACE)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("placing variant: %w", err)
	}
	return nil
}

// setMeta applies owner, mode, xattrs and times, in that order (chown clears set-id bits and
// file capabilities, so it goes first; times go last). fd is the open file, or -1 to work on
// base in pfd without following a symlink.
func setMeta(pfd int, base string, fd int, e *chunked.Entry, symlink bool) error {
	var err error
	if fd >= 0 {
		err = unix.Fchown(fd, e.UID, e.GID)
	} else {
		err = unix.Fchownat(pfd, base, e.UID, e.GID, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil && !(errors.Is(err, unix.EPERM) && os.Geteuid() != 0) {
		return fmt.Errorf("chown: %w", err)
	}
	if !symlink {
		mode := uint32(e.Mode & 0o7777)
		if fd >= 0 {
			err = unix.Fchmod(fd, mode)
		} else {
			err = unix.Fchmodat(pfd, base, mode, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for k, v := range e.Xattrs {
		val, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("xattr %s: %v: %w", k, err, errdefs.ErrInvalid)
		}
		if fd >= 0 {
			err = unix.Fsetxattr(fd, k, val, 0)
		} else {
			err = unix.Lsetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base), k, val, 0)
		}
		if err != nil {
			return fmt.Errorf("xattr %s: %w", k, err)
		}
	}
	return setTimes(pfd, base, fd, e)
}

func setTimes(pfd int, base string, fd int, e *chunked.Entry) error {
	if e.ModTime == nil {
		return nil
	}
	mt := unix.NsecToTimespec(e.ModTime.UnixNano())
	at := mt
	if e.AccessTime != nil {
		at = unix.NsecToTimespec(e.AccessTime.UnixNano())
	}
	ts := [2]unix.Timespec{at, mt}
	var err error
	if fd >= 0 {
		// utimensat(fd, NULL, ...) is futimens: the open file itself.
		_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if errno != 0 {
			err = errno
		}
	} else {
		err = unix.UtimesNanoAt(pfd, base, ts[:], unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// copyFD copies size bytes of src into the new, empty file dst, in the kernel when it can, and
// keeps src's holes holes: dst is sized first, then only the data extents src reports
// (SEEK_DATA/SEEK_HOLE) are copied, at their offsets. A zeros chunk stored as a hole stays one in
// every checkout (copy_file_range alone fills holes on most file systems).
func copyFD(dst int, src *os.File, size int64) error {
	if err := unix.Ftruncate(dst, size); err != nil {
		return err
	}
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // the rest is a hole
		}
		end := size
		if err != nil {
			data = off // no hole support: everything is data
		} else if hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE); err == nil {
			end = min(hole, size)
		}
		if data >= end {
			return nil
		}
		if err := copyRange(dst, sfd, data, end-data); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyRange copies n bytes at off from src to the same offset of dst.
func copyRange(dst, src int, off, n int64) error {
	soff, doff := off, off
	for end := off + n; soff < end; {
		k, err := unix.CopyFileRange(src, &soff, dst, &doff, int(min(end-soff, 1<<30)), 0)
		if err != nil {
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
				return copySlow(dst, src, soff, end-soff)
			}
			return err
		}
		if k == 0 {
			return fmt.Errorf("object shorter than %d bytes: %w", end, errdefs.ErrDigestMismatch)
		}
	}
	return nil
}

// copySlow copies n bytes at off from src to the same offset of dst through a buffer.
func copySlow(dst, src int, off, n int64) error {
	buf := make([]byte, 256<<10)
	for n > 0 {
		k, err := unix.Pread(src, buf[:min(int64(len(buf)), n)], off)
		if err != nil {
			return err
		}
		if k == 0 {
			return fmt.Errorf("object too short: %w", errdefs.ErrDigestMismatch)
		}
		for p := buf[:k]; len(p) > 0; {
			w, werr := unix.Pwrite(dst, p, off)
			if werr != nil {
				return werr
			}
			p, off = p[w:], off+int64(w)
		}
		n -= int64(k)
	}
	return nil
}

// finishDirs applies directory metadata deepest first, after all contents exist.
func (c *checkout) finishDirs() error {
	names := make([]string, 0, len(c.dirs))
	for n := range c.dirs {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		di, dj := strings.Count(names[i], "/"), strings.Count(names[j], "/")
		if names[i] == "." || names[j] == "." {
			return names[j] == "."
		}
		if di != dj {
			return di > dj
		}
		return names[i] < names[j]
	})
	c.dropParents()
	for _, n := range names {
		e := c.dirs[n]
		var fd int
		var err error
		if n == "." {
			fd, err = unix.Dup(c.root)
		} else {
			fd, err = unix.Openat2(c.root, n, &unix.OpenHow{
				Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
				Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
			})
		}
		if err != nil {
			continue // replaced or removed by a later layer
		}
		err = setMeta(-1, "", fd, &e, false)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("directory %q: %w", n, err)
		}
	}
	return nil
}
