package lazy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/fusectl"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
)

// FUSEServer is the fill service where fanotify pre-content events are missing: each pending
// layer's placeholder directory is covered by a read-only FUSE file system listing every
// object of the layer at its final size. Opening one that the store lacks waits while the
// object is fetched and verified (storeObject, the fanotify Filler's fill path); the open then
// hands the kernel the store's object file (FUSE passthrough where the kernel allows it, reads
// served from it otherwise). A failed or late fill fails the open with EIO; a server gone
// leaves the mount answering ENOTCONN. Placeholders under the mount are left as they are.
type FUSEServer struct {
	sh      *fuseShared
	mu      sync.Mutex
	mounted []fuseMount
	// noPassthrough: reads are answered by the server (DisablePassthrough).
	noPassthrough bool
}

// DisablePassthrough makes the mounts made after it answer reads from the server, never by FUSE
// passthrough: a passthrough FUSE mount counts as one level of file system stacking, and
// overlayfs refuses a third level (an overlay over a composefs overlay over this mount, as
// podman stacks on a layer store's pending layer).
func (f *FUSEServer) DisablePassthrough() { f.noPassthrough = true }

type fuseMount struct {
	dir  string
	conn uint32 // the FUSE connection's number (fusectl), to abort it even once detached
	srv  *fuse.Server
}

type fuseShared struct {
	ctx     context.Context // the service's: a fill outlives the open that started it
	reads   atomic.Int64    // reads the server answered itself (0 while passthrough works)
	s       *store.Store
	fill    FillFunc
	timeout time.Duration
	log     *slog.Logger
}

// NewFUSEServer prepares a FUSE fill service; ctx bounds its fills.
func NewFUSEServer(ctx context.Context, s *store.Store, fill FillFunc, timeout time.Duration, log *slog.Logger) *FUSEServer {
	if timeout <= 0 {
		timeout = DefaultFillTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &FUSEServer{sh: &fuseShared{ctx: ctx, s: s, fill: fill, timeout: timeout, log: log}}
}

// Serve mounts the file system of pending layer diffID (its content entries) over the layer's
// placeholder directory. A FUSE mount left there by a service that died is detached first
// (DetachMounts): mounts made over it keep failing, new ones see the new server.
func (f *FUSEServer) Serve(p *Pending, diffID digest.Digest, entries []layerfs.Entry) error {
	return f.serveDir(p.DataDir(diffID), diffID, entries)
}

func (f *FUSEServer) serveDir(dir string, diffID digest.Digest, entries []layerfs.Entry) error {
	if err := DetachMounts(dir); err != nil {
		return err
	}
	root := &fuseDir{}
	for i := range entries {
		e := &entries[i]
		if !e.HasContent() {
			continue
		}
		name, err := f.sh.s.ObjectName(e.Digest)
		if err != nil {
			return err
		}
		root.add(name, &fuseObject{sh: f.sh, diffID: diffID, obj: e.Digest, size: e.Size, gate: newFillGate()})
	}
	long := time.Hour // the tree never changes while mounted
	opts := &fs.Options{
		EntryTimeout: &long, AttrTimeout: &long, NegativeTimeout: &long,
		MountOptions: fuse.MountOptions{FsName: "kura-lazy", Name: "kura", DirectMount: true,
			AllowOther: os.Geteuid() == 0, MaxReadAhead: 1 << 20},
	}
	if f.noPassthrough {
		opts.DisabledCapabilities = fuse.CAP_PASSTHROUGH
	}
	srv, err := fs.Mount(dir, root, opts)
	if err != nil {
		return fmt.Errorf("FUSE mount of pending layer %s: %w", diffID, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		srv.Unmount()
		return fmt.Errorf("FUSE mount of pending layer %s: %w", diffID, err)
	}
	f.mu.Lock()
	f.mounted = append(f.mounted, fuseMount{dir: dir, conn: fusectl.Conn(st.Dev), srv: srv})
	f.mu.Unlock()
	return nil
}

// DetachMounts lazily unmounts whatever is mounted at dir, stacked mounts included: at a
// pending layer's placeholder directory that can only be the FUSE mount of a service that died
// (the caller holds LockServe). Its stat cannot tell: the root's attributes are cached. Mounts
// made over it keep failing with ENOTCONN; new ones see what is mounted next.
func DetachMounts(dir string) error {
	for {
		err := unix.Unmount(dir, unix.MNT_DETACH)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // not a mount point (any more)
		}
		if err != nil {
			return fmt.Errorf("detaching the dead FUSE mount at %s: %w", dir, err)
		}
	}
}

// Release detaches the FUSE mounts from the placeholder directories (so the pending pull can be
// removed) while they go on serving the mounts made over them; Wait returns once those are
// gone too.
func (f *FUSEServer) Release() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.mounted {
		if err := unix.Unmount(m.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("detaching the FUSE mount at %s: %w", m.dir, err)
		}
	}
	return nil
}

// Wait returns when every FUSE mount has ended (the last mount over a released one unmounted,
// or the server killed), or when ctx ends.
func (f *FUSEServer) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		f.mu.Lock()
		ms := append([]fuseMount(nil), f.mounted...)
		f.mu.Unlock()
		for _, m := range ms {
			m.srv.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Kill ends the service as a crash would: each FUSE connection is aborted (mounts over it
// answer ENOTCONN from then on, never zeros) and detached from its directory.
func (f *FUSEServer) Kill() error {
	f.mu.Lock()
	ms := f.mounted
	f.mounted = nil
	f.mu.Unlock()
	var errs []error
	for _, m := range ms {
		aerr := fusectl.Abort(m.conn)
		errs = append(errs, aerr)
		err := unix.Unmount(m.dir, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err) // EINVAL, ENOENT: released already
		}
		if aerr == nil { // a connection not aborted may serve on: do not wait for it
			m.srv.Wait()
		}
	}
	return errors.Join(errs...)
}

// fuseDir is a directory of the static tree (the root and its xx/ fan-out directories).
type fuseDir struct {
	fs.Inode
	kids map[string]fs.InodeEmbedder
}

var _ fs.NodeOnAdder = (*fuseDir)(nil)

func (d *fuseDir) add(name string, obj *fuseObject) {
	dir, base, _ := strings.Cut(filepath.ToSlash(name), "/")
	if d.kids == nil {
		d.kids = map[string]fs.InodeEmbedder{}
	}
	sub, ok := d.kids[dir].(*fuseDir)
	if !ok {
		sub = &fuseDir{kids: map[string]fs.InodeEmbedder{}}
		d.kids[dir] = sub
	}
	sub.kids[base] = obj
}

func (d *fuseDir) OnAdd(ctx context.Context) {
	for name, kid := range d.kids {
		mode := uint32(syscall.S_IFREG)
		if _, ok := kid.(*fuseDir); ok {
			mode = syscall.S_IFDIR
		}
		d.AddChild(name, d.NewPersistentInode(ctx, kid, fs.StableAttr{Mode: mode}), false)
		if sub, ok := kid.(*fuseDir); ok {
			sub.OnAdd(ctx)
		}
	}
}

// fuseObject is one object of a pending layer: final size at once, content on open.
type fuseObject struct {
	fs.Inode
	sh          *fuseShared
	diffID, obj digest.Digest
	size        int64
	gate        fillGate // concurrent opens wait for the first fill, each until its deadline
}

var (
	_ fs.NodeGetattrer = (*fuseObject)(nil)
	_ fs.NodeOpener    = (*fuseObject)(nil)
)

func (n *fuseObject) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Size = uint64(n.size)
	out.Nlink = 1
	return 0
}

// Open fills the object (bounded by the fill timeout; EIO past it or on a failed fetch) and
// serves the store's object file.
func (n *fuseObject) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	fctx, cancel := context.WithTimeout(n.sh.ctx, n.sh.timeout)
	err := n.gate.lock(fctx)
	if err == nil {
		err = storeObject(fctx, n.sh.s, n.sh.fill, n.diffID, n.obj)
		n.gate.unlock()
	}
	cancel()
	if err != nil {
		n.sh.log.Warn("lazy: FUSE fill failed; the open fails with EIO", "object", n.obj, "err", err)
		return nil, 0, syscall.EIO
	}
	f, err := n.sh.s.Open(ctx, n.obj)
	if err != nil {
		n.sh.log.Warn("lazy: stored object does not open", "object", n.obj, "err", err)
		return nil, 0, syscall.EIO
	}
	return &objectFile{LoopbackFile: fs.NewLoopbackFileFromOS(f), sh: n.sh}, fuse.FOPEN_KEEP_CACHE, 0
}

// objectFile is an open stored object: the kernel reads it directly (passthrough) where it
// accepts the backing file; otherwise the server does, counting.
type objectFile struct {
	*fs.LoopbackFile
	sh *fuseShared
}

func (f *objectFile) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f.sh.reads.Add(1)
	return f.LoopbackFile.Read(ctx, dest, off)
}
