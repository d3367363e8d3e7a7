package store

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
)

// ObjectDir looks up and reads many objects quickly: names resolve relative to an open objects
// directory (two path components instead of the whole root), and readers are bare file
// descriptors, without os.File's poller registration. A pull touches every object of a layer
// twice (plan, DiffID check), so these syscalls are a large part of its time.
type ObjectDir struct {
	fd int
}

// OpenObjectDir opens the objects directory; Close releases it.
func (s *Store) OpenObjectDir() (*ObjectDir, error) {
	fd, err := unix.Open(filepath.Join(s.root, dirObjects), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the object directory: %w", err)
	}
	return &ObjectDir{fd: fd}, nil
}

// Close closes the directory.
func (o *ObjectDir) Close() error { return unix.Close(o.fd) }

// relPath is the object's name below objects/.
func relPath(d digest.Digest) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	h := d.Encoded()
	return h[:2] + "/" + h[2:], nil
}

// Size returns the size of object d, or an error wrapping ErrNotFound.
func (o *ObjectDir) Size(d digest.Digest) (int64, error) {
	rel, err := relPath(d)
	if err != nil {
		return 0, err
	}
	var st unix.Stat_t
	for {
		err = unix.Fstatat(o.fd, rel, &st, unix.AT_SYMLINK_NOFOLLOW)
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

// Has says whether object d is stored.
func (o *ObjectDir) Has(d digest.Digest) bool {
	_, err := o.Size(d)
	return err == nil
}

// Open opens object d for reading.
func (o *ObjectDir) Open(d digest.Digest) (io.ReadCloser, error) {
	rel, err := relPath(d)
	if err != nil {
		return nil, err
	}
	var fd int
	for {
		fd, err = unix.Openat(o.fd, rel, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return nil, objectErr(d, err)
	}
	return &fdReader{fd: fd}, nil
}

func objectErr(d digest.Digest, err error) error {
	if errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
	}
	return fmt.Errorf("object %s: %w", d, err)
}

// fdReader reads a file descriptor with plain read(2) calls.
type fdReader struct{ fd int }

func (r *fdReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(r.fd, p)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return 0, err
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

func (r *fdReader) Close() error {
	if r.fd < 0 {
		return nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// Missing returns the first of ds (in order) that is not stored, or "" if all are. It looks
// several up at a time.
func (o *ObjectDir) Missing(ds []digest.Digest) digest.Digest {
	present := make([]bool, len(ds))
	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ds); i += workers {
				present[i] = o.Has(ds[i])
			}
		})
	}
	wg.Wait()
	for i, ok := range present {
		if !ok {
			return ds[i]
		}
	}
	return ""
}
