package lazy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/merge"
	"github.com/kura-oci/kura/store"
)

// Tree is the merged tree of a pending pull's image (package merge: the tree a checkout and a
// composefs mount show), with, for each object the store may lack, the pending layer whose TOC
// names it: the layer a fill fetches it from.
type Tree struct {
	*merge.Tree
	from map[digest.Digest]digest.Digest // object → the first pending layer naming it
}

// DiffIDs are the image's layers, bottom first, from the recorded config.
func (p *Pending) DiffIDs() ([]digest.Digest, error) {
	var c struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(p.Config, &c); err != nil {
		return nil, fmt.Errorf("lazy pull %s: config: %v: %w", p.ID, err, errdefs.ErrInvalid)
	}
	return c.RootFS.DiffIDs, nil
}

// IsPending reports whether layer d is one of the pull's pending layers that the store does
// not hold yet.
func (p *Pending) IsPending(s *store.Store, d digest.Digest) bool {
	return slices.Contains(p.Pending, d) && !s.HasLayer(d)
}

// LayerEntries are layer d's entries: from its TOC while it is pending, from the store after.
func (p *Pending) LayerEntries(ctx context.Context, s *store.Store, d digest.Digest) ([]layerfs.Entry, error) {
	if p.IsPending(s, d) {
		return p.Entries(d)
	}
	return s.LayerEntries(ctx, d)
}

// MergedTree merges the pending pull's layers as a checkout would.
func (p *Pending) MergedTree(ctx context.Context, s *store.Store) (*Tree, error) {
	diffIDs, err := p.DiffIDs()
	if err != nil {
		return nil, err
	}
	t := &Tree{Tree: merge.New(), from: map[digest.Digest]digest.Digest{}}
	for _, d := range diffIDs {
		entries, err := p.LayerEntries(ctx, s, d)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", d, err)
		}
		if err := t.Apply(entries); err != nil {
			return nil, fmt.Errorf("layer %s: %w", d, err)
		}
		if p.IsPending(s, d) {
			for _, obj := range layerfs.Objects(entries) {
				if _, ok := t.from[obj]; !ok {
					t.from[obj] = d
				}
			}
		}
	}
	// The tree is served as it is: refuse here what no inode can be (checkouts and composefs
	// refuse it as they make it).
	err = t.Walk(func(p string, n *merge.Node) error {
		if _, ok := typeBits[n.Entry.Type]; !ok {
			return fmt.Errorf("%s: entry type %q: %w", p, n.Entry.Type, errdefs.ErrInvalid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

// TreeServer serves a pending pull's merged tree at a directory as a read-only FUSE file
// system: directories, modes, owners, times, symlinks, hard links, device nodes and xattrs as
// the merge gives them, and each regular file's content from its stored object, fetched,
// verified and stored on its first open by the fill path of the other services (storeObject).
// It needs no root: an unprivileged user's mount goes through fusermount3 (nosuid, nodev, only
// that user may enter it); reads are then answered by the server, as FUSE passthrough needs
// CAP_SYS_ADMIN. There the kernel checks no permissions (no default_permissions): the mount is
// its owner's view of their own store, and a container in their user namespace must read files
// the image gives to owners it does not map. Root's mount is open to every user
// (allow_other), so the kernel checks the image's modes and owners (default_permissions).
type TreeServer struct {
	sh    *fuseShared
	dir   string
	srv   *fuse.Server
	ended chan struct{} // closed once the server's loop ended (unmounted, or the process dies)
}

// MountTree mounts tree at dir. A dead FUSE mount (ENOTCONN: a killed server's) at dir is
// detached first; a live mount there is refused by the mount itself.
func MountTree(ctx context.Context, s *store.Store, tree *Tree, dir string, fill FillFunc, timeout time.Duration, log *slog.Logger) (*TreeServer, error) {
	if err := DetachDeadFUSE(dir); err != nil {
		return nil, err
	}
	if err := checkUserFUSE(); err != nil {
		return nil, err
	}
	shared := NewFUSEServer(ctx, s, fill, timeout, log).sh
	root := &treeNode{sh: shared, tree: tree}
	long := time.Hour // the tree never changes while mounted
	opts := &fs.Options{
		EntryTimeout: &long, AttrTimeout: &long, NegativeTimeout: &long,
		MountOptions: fuse.MountOptions{FsName: "kura-lazy", Name: "kura", DirectMount: true,
			MaxReadAhead: 1 << 20, Options: []string{"ro"}},
	}
	if os.Geteuid() == 0 { // every user may enter root's mount: the kernel checks the image's modes
		opts.AllowOther = true
		opts.Options = append(opts.Options, "default_permissions")
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil { // fusermount3 said why on stderr
		return nil, fmt.Errorf("FUSE mount at %s: %s", dir, strings.TrimSpace(err.Error()))
	}
	ts := &TreeServer{sh: shared, dir: dir, srv: srv, ended: make(chan struct{})}
	go func() { srv.Wait(); close(ts.ended) }()
	return ts, nil
}

// checkUserFUSE says what a user without root lacks to mount FUSE: fusermount3, or a /dev/fuse
// they may open (fusermount3 opens it as the user; Debian's udev makes it 0666, but where no
// udev runs devtmpfs leaves it 0600).
func checkUserFUSE() error {
	if os.Geteuid() == 0 {
		return nil
	}
	if _, err := exec.LookPath("fusermount3"); err != nil {
		return fmt.Errorf("a FUSE mount without root needs fusermount3 (Debian package fuse3): %v: %w", err, errdefs.ErrUnsupported)
	}
	if err := unix.Access("/dev/fuse", unix.R_OK|unix.W_OK); err != nil {
		return fmt.Errorf("a FUSE mount without root needs /dev/fuse open to the user (mode 0666, as udev makes it): %v: %w", err, errdefs.ErrPermission)
	}
	return nil
}

// Reads is how many reads the server answered itself (none where FUSE passthrough works).
func (ts *TreeServer) Reads() int64 { return ts.sh.reads.Load() }

// Wait returns once the mount is gone (unmounted by its user: fusermount3 -u) or ctx ends.
func (ts *TreeServer) Wait(ctx context.Context) error {
	select {
	case <-ts.ended:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Unmount takes the mount down; one still in use is detached (its users then fail with
// ENOTCONN once this process ends, never read zeros). Nothing to do once it is gone.
func (ts *TreeServer) Unmount() error {
	select {
	case <-ts.ended:
		return nil
	default:
	}
	if err := unmountFUSE(ts.dir, false); err != nil {
		if derr := unmountFUSE(ts.dir, true); derr != nil {
			return errors.Join(err, derr)
		}
	}
	return nil
}

// UnmountTree unmounts the tree mount at dir (kura umount), dead or alive, and only a tree mount
// (the kernel's type fuse.kura, source kura-lazy): ErrNotFound when dir is none, so that the
// caller can look for its other kinds of mount.
func UnmountTree(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if parent, err := filepath.EvalSymlinks(filepath.Dir(abs)); err == nil { // not dir itself: a dead mount fails
		abs = filepath.Join(parent, filepath.Base(abs))
	}
	entries, err := mountinfo.Read("self")
	if err != nil {
		return fmt.Errorf("reading mountinfo: %w", err)
	}
	if e, ok := mountinfo.Top(entries, abs); !ok || e.FSType != "fuse.kura" || e.Source != "kura-lazy" {
		return fmt.Errorf("%s is no tree mount of a lazy pull: %w", dir, errdefs.ErrNotFound)
	}
	if err := unmountFUSE(abs, false); err != nil {
		return fmt.Errorf("unmounting %s: %w", dir, err)
	}
	return nil
}

// DetachDeadFUSE detaches the FUSE mount at dir if its server is gone (stat fails with
// ENOTCONN); anything else at dir is left alone.
func DetachDeadFUSE(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); !errors.Is(err, unix.ENOTCONN) {
		return nil
	}
	if err := unmountFUSE(dir, true); err != nil {
		return fmt.Errorf("detaching the dead FUSE mount at %s: %w", dir, err)
	}
	return nil
}

// unmountFUSE unmounts the FUSE mount at dir (lazily: detached while in use): with umount2
// as root, through fusermount3 otherwise (a user may unmount only their own FUSE mounts).
func unmountFUSE(dir string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		return unix.Unmount(dir, flags)
	}
	args := []string{"-u", "-q", dir}
	if lazy {
		args = []string{"-u", "-q", "-z", dir}
	}
	out, err := exec.Command("fusermount3", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// treeNode is one inode of the merged tree; the root builds the rest when it is mounted.
type treeNode struct {
	fs.Inode
	sh    *fuseShared
	tree  *Tree // the root's only
	e     layerfs.Entry
	nlink uint32
	from  digest.Digest // regular files: the pending layer to fill the object from, if any
	gate  fillGate      // regular files with content: opens wait for the first fill
}

var (
	_ fs.NodeOnAdder     = (*treeNode)(nil)
	_ fs.NodeGetattrer   = (*treeNode)(nil)
	_ fs.NodeOpener      = (*treeNode)(nil)
	_ fs.NodeReadlinker  = (*treeNode)(nil)
	_ fs.NodeGetxattrer  = (*treeNode)(nil)
	_ fs.NodeListxattrer = (*treeNode)(nil)
	_ fs.FileReader      = emptyFile{}
)

// typeBits are the file type bits of each entry type.
var typeBits = map[layerfs.Type]uint32{
	layerfs.TypeReg: syscall.S_IFREG, layerfs.TypeDir: syscall.S_IFDIR, layerfs.TypeSymlink: syscall.S_IFLNK,
	layerfs.TypeChar: syscall.S_IFCHR, layerfs.TypeBlock: syscall.S_IFBLK, layerfs.TypeFifo: syscall.S_IFIFO,
}

// OnAdd builds the whole tree under the root once it is mounted: every inode is persistent, as
// the tree never changes. Walk gives a directory before its contents, and counts each hard-linked
// inode's names first; its first name makes the inode, the others link to it.
func (n *treeNode) OnAdd(ctx context.Context) {
	if n.tree == nil {
		return
	}
	dirs := map[string]*fs.Inode{}
	linked := map[*merge.Inode]*fs.Inode{}
	ino := uint64(1)
	n.tree.Walk(func(p string, m *merge.Node) error {
		if p == "." {
			n.setEntry(m)
			dirs["."] = &n.Inode
			return nil
		}
		parent := dirs[path.Dir(p)]
		in := linked[m.Inode]
		if in == nil {
			ino++
			kid := &treeNode{sh: n.sh}
			kid.setEntry(m)
			if m.Entry.HasContent() {
				kid.from, kid.gate = n.tree.from[m.Entry.Digest], newFillGate()
			}
			in = parent.NewPersistentInode(ctx, kid, fs.StableAttr{Mode: typeBits[m.Entry.Type], Ino: ino})
			if m.Inode != nil {
				linked[m.Inode] = in
			}
		}
		if m.IsDir() {
			dirs[p] = in
		}
		parent.AddChild(path.Base(p), in, false)
		return nil
	})
}

// setEntry takes m's entry and link count: a hard-linked inode's names, or a directory's
// subdirectories plus its own two names.
func (n *treeNode) setEntry(m *merge.Node) {
	n.e, n.nlink = m.Entry, 1
	n.e.Chunks = nil // not needed to serve the file: the object is filled whole
	switch {
	case m.Inode != nil:
		n.nlink = m.Inode.Names
	case m.IsDir():
		n.nlink = 2
		for _, c := range m.Children {
			if c.IsDir() {
				n.nlink++
			}
		}
	}
}

func (n *treeNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	e := &n.e
	out.Mode = typeBits[e.Type] | uint32(e.Mode&0o7777)
	if e.Type == layerfs.TypeSymlink { // as symlink(2) makes them, and a checkout shows them
		out.Mode = syscall.S_IFLNK | 0o777
		out.Size = uint64(len(e.Linkname))
	}
	if e.Type == layerfs.TypeReg {
		out.Size = uint64(e.Size)
	}
	out.Blocks = (out.Size + 511) / 512
	out.Nlink = n.nlink
	out.Uid, out.Gid = uint32(e.UID), uint32(e.GID)
	if e.Type == layerfs.TypeChar || e.Type == layerfs.TypeBlock {
		out.Rdev = uint32(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor)))
	}
	t := *e.ModTime // the merge dates every entry
	out.SetTimes(&t, &t, &t)
	return 0
}

func (n *treeNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.e.Type != layerfs.TypeSymlink {
		return nil, syscall.EINVAL
	}
	return []byte(n.e.Linkname), 0
}

func (n *treeNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := n.e.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr lists the entry's xattrs, but for a user without root not the trusted.* ones: the
// kernel lets only CAP_SYS_ADMIN read those, and a copy that lists one it cannot read fails.
func (n *treeNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(n.e.Xattrs)) {
		if strings.HasPrefix(k, "trusted.") && os.Geteuid() != 0 {
			continue
		}
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

// Open fills a regular file's object (bounded by the fill timeout; EIO past it or on a failed
// fetch, and the next open tries again) and serves the stored object. Writes are refused.
func (n *treeNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	if n.e.Type != layerfs.TypeReg {
		return nil, 0, syscall.EINVAL
	}
	if !n.e.HasContent() {
		return emptyFile{}, fuse.FOPEN_KEEP_CACHE, 0
	}
	obj := n.e.Digest
	fctx, cancel := context.WithTimeout(n.sh.ctx, n.sh.timeout)
	err := n.gate.lock(fctx)
	if err == nil {
		err = n.fill(fctx, obj)
		n.gate.unlock()
	}
	cancel()
	if err != nil {
		n.sh.log.Warn("lazy: FUSE fill failed; the open fails with EIO", "object", obj, "err", err)
		return nil, 0, syscall.EIO
	}
	f, err := n.sh.s.Open(ctx, obj)
	if err != nil {
		n.sh.log.Warn("lazy: stored object does not open", "object", obj, "err", err)
		return nil, 0, syscall.EIO
	}
	return &objectFile{LoopbackFile: fs.NewLoopbackFileFromOS(f), sh: n.sh}, fuse.FOPEN_KEEP_CACHE, 0
}

// fill stores obj unless the store holds it: fetched from its pending layer, as every service
// fills. An object no pending layer names belongs to a stored layer, so the store has it.
func (n *treeNode) fill(ctx context.Context, obj digest.Digest) error {
	if n.sh.s.HasObject(obj) {
		return nil
	}
	if n.from == "" {
		return fmt.Errorf("object %s is in no pending layer and not stored: %w", obj, errdefs.ErrNotFound)
	}
	return storeObject(ctx, n.sh.s, n.sh.fill, n.from, obj)
}

// emptyFile is an open empty regular file.
type emptyFile struct{}

func (emptyFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultData(nil), 0
}
