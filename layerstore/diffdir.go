package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/store"
)

// diffDir returns the directory of one layer as overlayfs takes a lower layer: the layer's
// files (a checkout of that layer alone, hardlinked to the store by default), its whiteouts as
// 0/0 character devices and its opaque directories marked with trusted.overlay.opaque, as
// containers/storage's overlay driver unpacks a layer. It is made once and kept (a marker file
// says it is complete); the checkout is a use of img in the store, so gc keeps the image.
func (l *Layers) diffDir(ctx context.Context, img store.Image, diffID digest.Digest) (string, error) {
	l.dirs.Lock()
	defer l.dirs.Unlock()
	dir := filepath.Join(l.opts.State, dirLayers, diffID.Encoded())
	done := dir + ".done"
	if _, err := os.Stat(done); err == nil {
		return dir, nil
	}
	// A directory without its marker is what an interrupted server left: made anew.
	if err := l.s.ReleaseCheckout(ctx, dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.opts.Log.Debug("releasing an unfinished layer directory", "dir", dir, "err", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("layer store: removing the unfinished %s: %w", dir, err)
	}
	one := store.Image{ID: img.ID, Config: img.Config, Layers: []digest.Digest{diffID}}
	if _, err := checkout.Checkout(ctx, l.s, one, dir, checkout.Options{Link: l.opts.Link}); err != nil {
		return "", fmt.Errorf("layer store: layer %s: %w", diffID, err)
	}
	entries, err := l.s.LayerEntries(ctx, diffID)
	if err != nil {
		return "", fmt.Errorf("layer store: %w", err)
	}
	if err := addWhiteouts(dir, entries); err != nil {
		return "", fmt.Errorf("layer store: layer %s: %w", diffID, err)
	}
	if err := os.WriteFile(done, nil, 0o600); err != nil {
		return "", fmt.Errorf("layer store: %w", err)
	}
	return dir, nil
}

// addWhiteouts writes a layer's whiteouts and opaque markers in overlayfs's form. A checkout
// merges layers and so drops them; a lower layer of overlayfs must carry them. What a name means
// is layername's rule (Parse), as for every other reader of layer entries.
func addWhiteouts(dir string, entries []layerfs.Entry) error {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(root)
	for _, e := range entries {
		n, err := layername.Parse(e.Name)
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", e.Name, err)
		}
		if n.Kind == layername.Plain {
			continue
		}
		if err := addWhiteout(root, n, e); err != nil {
			return fmt.Errorf("whiteout %s: %w", e.Name, err)
		}
	}
	return nil
}

func addWhiteout(root int, n layername.Name, e layerfs.Entry) error {
	fd, err := mkdirInRoot(root, subdir(n))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if n.Kind == layername.Opaque {
		return unix.Fsetxattr(fd, xattrOpaque, []byte("y"), 0)
	}
	target := path.Base(n.Target)
	err = unix.Mknodat(fd, target, unix.S_IFCHR, 0)
	if errors.Is(err, unix.EEXIST) {
		return nil // the layer has the file and its whiteout: the file wins, as podman refuses it
	}
	if err == nil {
		err = unix.Fchownat(fd, target, e.UID, e.GID, unix.AT_SYMLINK_NOFOLLOW)
	}
	return err
}

// subdir is the directory holding a whiteout, relative to the layer's root ("" at the top).
func subdir(n layername.Name) string {
	if n.Dir == "." {
		return ""
	}
	return n.Dir
}

// mkdirInRoot opens dir below root, making missing directories (0755, as tar does); every
// component is resolved inside root, never following a symlink out of it.
func mkdirInRoot(root int, dir string) (int, error) {
	fd, err := unix.Dup(root)
	if err != nil {
		return -1, err
	}
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		if err := unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, err
		}
		next, err := unix.Openat2(fd, c, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS})
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// OpenBlob opens the layer's compressed blob: exact bytes, hashing to its digest. Kura keeps
// files, not blobs, so the first open fetches the blob whole from the image's source through
// the verifying reader and keeps it in the state directory for the next.
func (l *Layers) OpenBlob(ctx context.Context, layer *Layer) (*os.File, error) {
	l.blobs.Lock()
	defer l.blobs.Unlock()
	p := filepath.Join(l.opts.State, dirBlobs, layer.Desc.Digest.Encoded())
	if f, err := os.Open(p); err == nil {
		return f, nil
	}
	if layer.Source == nil {
		return nil, fmt.Errorf("layer store: blob %s: no source to fetch it from: %w", layer.Desc.Digest, os.ErrNotExist)
	}
	rc, err := layer.Source.OpenBlob(ctx, layer.Desc)
	if err != nil {
		return nil, fmt.Errorf("layer store: fetching blob %s: %w", layer.Desc.Digest, err)
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, rc); err != nil { // the reader fails unless size and digest match
		return nil, fmt.Errorf("layer store: fetching blob %s: %w", layer.Desc.Digest, err)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return nil, err
	}
	return os.Open(p)
}
