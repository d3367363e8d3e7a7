package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
)

// FSName and Subtype name the mount in mountinfo (fuse.kura-layer-store, source kura): how a
// stale mount of an earlier server is told from anything else mounted at PATH.
const (
	FSName  = "kura"
	Subtype = "kura-layer-store"
)

// DefaultLookupTimeout bounds one lookup (a pull) or blob fetch: past it containers/storage
// is told the layer is not here and pulls it itself, rather than hang.
const DefaultLookupTimeout = 10 * time.Minute

// Serve mounts the layer store at dir and serves it until ctx is done, then unmounts it. A
// mount of an earlier server that was killed is unmounted first.
func Serve(ctx context.Context, dir string, ls *Layers, lookupTimeout time.Duration) error {
	m, err := Mount(ctx, dir, ls, lookupTimeout)
	if err != nil {
		return err
	}
	ls.opts.Log.Info("layer store serving", "path", dir)
	<-ctx.Done()
	return m.Close()
}

// Mounted is a served mount.
type Mounted struct {
	srv *fuse.Server
	dir string
	log func(msg string, args ...any)
}

// Mount mounts the layer store at dir (after CleanStale) and returns once the mount is there.
// Lookups run under ctx, each bounded by lookupTimeout (DefaultLookupTimeout if 0).
func Mount(ctx context.Context, dir string, ls *Layers, lookupTimeout time.Duration) (*Mounted, error) {
	if lookupTimeout <= 0 {
		lookupTimeout = DefaultLookupTimeout
	}
	// A dead mount fails every stat (ENOTCONN): it goes first, from mountinfo alone.
	if err := CleanStale(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	root := &rootNode{node: node{server: &server{ls: ls, ctx: ctx, timeout: lookupTimeout}}}
	sec, zero := time.Second, time.Duration(0)
	srv, err := fs.Mount(dir, root, &fs.Options{
		// No allow_other: only the server's user (root, for rootful podman and CRI-O) can look
		// layers up, so no other user can make the server pull with its credentials.
		MountOptions: fuse.MountOptions{FsName: FSName, Name: Subtype, DirectMount: true,
			Options: []string{"default_permissions"}},
		EntryTimeout: &sec, AttrTimeout: &sec, NegativeTimeout: &zero,
	})
	if err != nil {
		return nil, fmt.Errorf("layer store: mounting at %s: %w", dir, err)
	}
	// The kernel caches the root's attributes from its first GETATTR (rootAttrTimeout): make it
	// now, so that PATH stays stat-able for containers/storage even if the server is killed
	// before anyone else has looked at it.
	if _, err := os.Stat(dir); err != nil {
		srv.Unmount()
		return nil, fmt.Errorf("layer store: the mount at %s does not answer: %w", dir, err)
	}
	return &Mounted{srv: srv, dir: dir, log: ls.opts.Log.Warn}, nil
}

// Close unmounts (lazily if the mount is busy) and waits for the server to stop.
func (m *Mounted) Close() error {
	if err := m.srv.Unmount(); err != nil {
		m.log("unmount failed; detaching", "path", m.dir, "err", err)
		if err := unix.Unmount(m.dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("layer store: unmounting %s: %w", m.dir, err)
		}
	}
	m.srv.Wait()
	return nil
}

// Wait waits until the file system is unmounted.
func (m *Mounted) Wait() { m.srv.Wait() }

// CleanStale unmounts (lazily: a killed server's mount may still be held open) every layer
// store mount at dir; anything else mounted there is an error.
func CleanStale(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for {
		entries, err := mountinfo.Read("self")
		if err != nil {
			return fmt.Errorf("layer store: %w", err)
		}
		e, ok := mountinfo.Top(entries, abs)
		if !ok {
			return nil
		}
		if e.FSType != "fuse."+Subtype {
			return fmt.Errorf("layer store: %s is a %s mount, not a layer store's: %w", abs, e.FSType, errdefs.ErrAlreadyExists)
		}
		if err := unix.Unmount(abs, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("layer store: unmounting the stale mount at %s: %w", abs, err)
		}
	}
}
