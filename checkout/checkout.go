// Package checkout materialises an image's merged root filesystem from the store into an empty
// directory: the tree package merge makes of its layers (the one a mount shows), file contents
// reflinked, copied or hardlinked from store objects. It only creates, never removes, and never
// writes outside the target directory: every path is resolved with openat2(RESOLVE_IN_ROOT) and
// the last component is never followed.
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

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/merge"
	"github.com/kura-oci/kura/store"
)

// LinkMode says how file contents get from the store into the checkout.
type LinkMode string

const (
	// LinkAuto reflinks (FICLONE) where the file system supports it, else copies.
	LinkAuto LinkMode = "auto"
	// LinkHardlink hardlinks to one store-side copy per (content, mode, owner, mtime, xattrs),
	// so files share inodes across checkouts yet each keeps its metadata. Such a checkout is for
	// read-only use, e.g. as an overlay lower directory (as containers/storage's use_hard_links
	// layers are): writing a file in place changes every checkout that shares it. The store
	// defends itself: a changed copy is replaced before it is linked again, so later checkouts
	// get the image's bytes (see linkVariant), and fsck --deep finds and removes changed copies.
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
	// VariantsReplaced counts hardlink-checkout copies found changed (written through an
	// earlier checkout) and replaced by fresh ones.
	VariantsReplaced int
}

// Checkout materialises img into dir, which must be empty or absent. It holds the store's
// shared lock while it runs, and records the checkout as a use of img (store.Use): gc keeps the
// image and rmi refuses it while dir exists (or until store.ReleaseCheckout). A failed checkout
// drops its record. It takes the whole store, not a role: the lock spans the objects it reads
// (through the objects interface below) and the layer and use records.
func Checkout(ctx context.Context, s *store.Store, img store.Image, dir string, opts Options) (_ Stats, err error) {
	if opts.Link == "" {
		opts.Link = LinkAuto
	}
	if _, err := ParseLinkMode(string(opts.Link)); err != nil {
		return Stats{}, err
	}
	if opts.Link == LinkHardlink && s.ReadOnly() {
		return Stats{}, fmt.Errorf("checkout: hardlink checkouts keep their files in the store, and store %s is read-only (use --link copy or reflink): %w", s.Root(), errdefs.ErrPermission)
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
	use, err := s.AddUse(ctx, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: dir})
	if err != nil {
		return Stats{}, fmt.Errorf("checkout: %w", err)
	}
	defer func() {
		if err != nil {
			s.DropUse(use)
		}
	}()
	c := &checkout{ctx: ctx, s: s, root: rootfd, opts: opts, dirs: map[string]layerfs.Entry{}, parents: map[string]int{}, inodes: map[*merge.Inode]string{}}
	defer c.dropParents()
	c.reflink = opts.Link == LinkAuto || opts.Link == LinkReflink
	// The layers are merged in memory first (package merge, the rules a mount shares), so
	// whiteouts never remove anything here: the checkout only creates, in an empty directory.
	tree := merge.New()
	for _, l := range img.Layers {
		entries, err := s.LayerEntries(ctx, l)
		if err != nil {
			return c.stats, fmt.Errorf("checkout: %w", err)
		}
		if err := tree.Apply(entries); err != nil {
			return c.stats, fmt.Errorf("checkout of layer %s: %w", l, err)
		}
		c.stats.Whiteouts += whiteouts(entries)
	}
	if err := tree.Walk(c.node); err != nil {
		return c.stats, fmt.Errorf("checkout: %w", err)
	}
	if err := c.finishDirs(); err != nil {
		return c.stats, fmt.Errorf("checkout: %w", err)
	}
	return c.stats, nil
}

// objects is what writing files needs of the store: objects by digest, and where a hardlink
// checkout keeps the variants of an object (written in the store's temp directory, renamed into
// place). Locks, layer records and use records are Checkout's, through *store.Store.
type objects interface {
	store.Provider
	VariantPath(obj, key digest.Digest) (string, error)
	TempDir() string
}

type checkout struct {
	ctx     context.Context
	s       objects
	root    int
	opts    Options
	reflink bool // still worth trying FICLONE
	stats   Stats
	// dirs holds the metadata of every directory entry, applied at the end (children first) so
	// that read-only modes and times survive the creation of their contents.
	dirs map[string]layerfs.Entry
	// parents caches open directory fds by clean path.
	parents map[string]int
	// inodes holds the path under which each hard-linked inode was created.
	inodes map[*merge.Inode]string
}

func (c *checkout) dropParents() {
	for _, fd := range c.parents {
		unix.Close(fd)
	}
	clear(c.parents)
}

// whiteouts counts a layer's whiteouts and opaque markers (for Stats).
func whiteouts(entries []layerfs.Entry) int {
	n := 0
	for i := range entries {
		if name, err := layername.Parse(entries[i].Name); err == nil && name.Kind != layername.Plain {
			n++
		}
	}
	return n
}

// node creates one path of the merged tree; its parent exists already (Walk goes top down).
func (c *checkout) node(name string, n *merge.Node) error {
	if err := c.ctx.Err(); err != nil {
		return err
	}
	if name == "." && n.Implied() {
		return nil // no layer names the root: the target keeps its own metadata
	}
	if n.Inode != nil {
		if first, ok := c.inodes[n.Inode]; ok {
			c.stats.Hardlinks++
			return c.hardlink(name, first)
		}
		c.inodes[n.Inode] = name
	}
	if err := c.entry(name, &n.Entry); err != nil {
		return fmt.Errorf("%q: %w", name, err)
	}
	return nil
}

// parent opens the directory that will hold name, creating missing directories (mode 0755, as
// tar does). Resolution stays inside the root whatever symlinks earlier entries made.
func (c *checkout) parent(name string) (int, string, error) {
	dir, base := path.Split(name)
	dir = strings.TrimSuffix(dir, "/")
	if err := layername.Element(base); err != nil {
		return -1, "", fmt.Errorf("%q: %w", name, err)
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

// entry creates one non-whiteout entry.
func (c *checkout) entry(name string, e *layerfs.Entry) error {
	if name == "." {
		if e.Type != layerfs.TypeDir {
			return fmt.Errorf("the root is not a directory: %w", errdefs.ErrInvalid)
		}
		c.dirs["."] = *e
		return nil
	}
	pfd, base, err := c.parent(name)
	if err != nil {
		return err
	}
	switch e.Type {
	case layerfs.TypeDir:
		if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
			return err
		}
		c.dirs[name] = *e
		c.stats.Dirs++
		return nil
	case layerfs.TypeReg:
		c.stats.Files++
		return c.regular(pfd, base, e)
	case layerfs.TypeSymlink:
		if e.Linkname == "" || len(e.Linkname) > unix.PathMax {
			return fmt.Errorf("symlink target empty or over PATH_MAX: %w", errdefs.ErrInvalid)
		}
		if err := unix.Symlinkat(e.Linkname, pfd, base); err != nil {
			return err
		}
		c.stats.Symlinks++
		return setMeta(pfd, base, -1, e, true)
	case layerfs.TypeChar, layerfs.TypeBlock, layerfs.TypeFifo:
		mode := uint32(e.Mode & 0o7777)
		switch e.Type {
		case layerfs.TypeChar:
			mode |= unix.S_IFCHR
		case layerfs.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		err := unix.Mknodat(pfd, base, mode, int(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor))))
		if errors.Is(err, unix.EPERM) {
			if c.opts.SkipDevices {
				return nil
			}
			return fmt.Errorf("creating device node (not permitted here; --skip-devices leaves device nodes out): %v: %w", err, errdefs.ErrPermission)
		}
		if err != nil {
			return err
		}
		c.stats.Devices++
		return setMeta(pfd, base, -1, e, false)
	}
	return fmt.Errorf("entry type %q: %w", e.Type, errdefs.ErrUnsupported)
}

// hardlink makes name another name of the inode already created as first.
func (c *checkout) hardlink(name, first string) error {
	pfd, base, err := c.parent(name)
	if err != nil {
		return err
	}
	tdir, tbase := path.Split(first)
	tfd, err := c.existingDir(strings.TrimSuffix(tdir, "/"))
	if err != nil {
		return err
	}
	if tfd < 0 {
		return fmt.Errorf("hard link %q: the directory of %q is gone: %w", name, first, errdefs.ErrInvalid)
	}
	defer c.closeUncached(tfd)
	// No AT_SYMLINK_FOLLOW: a symlink is linked as the symlink itself, as tar does.
	if err := unix.Linkat(tfd, tbase, pfd, base, 0); err != nil {
		return fmt.Errorf("hard link %q to %q: %w", name, first, err)
	}
	return nil
}

// regular creates a regular file from its object.
func (c *checkout) regular(pfd int, base string, e *layerfs.Entry) error {
	if e.Size == 0 {
		fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return setMeta(pfd, base, fd, e, false)
	}
	d := e.Digest
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
func variantKey(d digest.Digest, e *layerfs.Entry) digest.Digest {
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
		// The value as the TOC spells it (base64): keys of variants made before stay valid.
		fmt.Fprintf(h, "\x00%s=%s", k, base64.StdEncoding.EncodeToString(e.Xattrs[k]))
	}
	return digest.NewDigest(digest.SHA256, h)
}

// linkVariant hardlinks base to the store-side variant of d with e's metadata, creating it first
// if needed (temp file, metadata, then rename: a variant is never seen half made). A hardlink
// checkout is for read-only use (an overlay lower directory), yet a write through one reaches the
// shared inode; so a variant is checked before it is linked again (variantIntact), and one that
// was changed is replaced by a fresh copy of the object: what a checkout writes never reaches a
// later checkout. Objects themselves are never linked into a checkout.
func (c *checkout) linkVariant(pfd int, base string, d digest.Digest, e *layerfs.Entry) error {
	vp, err := c.s.VariantPath(d, variantKey(d, e))
	if err != nil {
		return err
	}
	var st unix.Stat_t
	err = unix.Lstat(vp, &st)
	switch {
	case errors.Is(err, unix.ENOENT):
		err = c.makeVariant(vp, d, e, false)
	case err == nil && !variantIntact(&st, e):
		c.stats.VariantsReplaced++
		err = c.makeVariant(vp, d, e, true)
	}
	if err != nil {
		return err
	}
	err = unix.Linkat(unix.AT_FDCWD, vp, pfd, base, 0)
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

// variantIntact is the cheap check made before a variant is linked into another checkout: the
// metadata a write or chmod through an earlier checkout changes (size, mtime, mode, owner) must
// still be what the variant was made with. A write that restores size and mtime afterwards is
// only found by re-hashing (kura fsck --deep).
func variantIntact(st *unix.Stat_t, e *layerfs.Entry) bool {
	mode, want := st.Mode&0o7777, uint32(e.Mode&0o7777)
	if os.Geteuid() != 0 {
		// Without root, chown to the image's owner fails and the variant keeps ours (see
		// setMeta), and chmod drops setgid for a group we are not in.
		mode, want = mode&^unix.S_ISGID, want&^unix.S_ISGID
	} else if st.Uid != uint32(e.UID) || st.Gid != uint32(e.GID) {
		return false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != e.Size || mode != want {
		return false
	}
	return e.ModTime == nil || st.Mtim == unix.NsecToTimespec(e.ModTime.UnixNano())
}

// makeVariant writes a fresh variant of object d at vp. replace puts it in place of a variant
// that was changed (checkouts linked to the old inode keep it; new ones get the fresh one);
// otherwise a variant another checkout placed first wins.
func (c *checkout) makeVariant(vp string, d digest.Digest, e *layerfs.Entry, replace bool) error {
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
	if replace {
		err = unix.Rename(tmp, vp)
	} else {
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, vp, unix.RENAME_NOREPLACE)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("placing variant: %w", err)
	}
	return nil
}

// setMeta applies owner, mode, xattrs and times, in that order (chown clears set-id bits and
// file capabilities, so it goes first; times go last). fd is the open file, or -1 to work on
// base in pfd without following a symlink.
func setMeta(pfd int, base string, fd int, e *layerfs.Entry, symlink bool) error {
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
	for k, val := range e.Xattrs {
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

func setTimes(pfd int, base string, fd int, e *layerfs.Entry) error {
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
