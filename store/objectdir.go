package store

import (
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// ObjectDir gives the lookups of Objects (HasObject, Stat, Open: the same code, sizeAt and
// openAt, the same answers) relative to an open descriptor of the objects directory: two path
// components to resolve instead of the whole root, and readers that are bare file descriptors,
// without os.File's poller registration. A pull touches every object of a layer twice (plan,
// DiffID check), so these syscalls are a large part of its time. It is scoped (Close) rather
// than the store's default because an open descriptor pins the file system.
//
// It is exported for the partial import (package store/layer), the one caller outside the store
// that looks up a whole layer's objects: it opens one per import (Objects.OpenObjectDir), asks
// presence through Batch.Stored (which remembers the answer for the layer's record) and reads
// objects for the DiffID check with Open. Its other lookups (size, has, missing) serve the store
// itself and stay unexported.
type ObjectDir struct {
	fd int
}

// OpenObjectDir opens the objects directory; Close releases it.
func (o *Objects) OpenObjectDir() (*ObjectDir, error) {
	fd, err := unix.Open(o.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the object directory: %w", err)
	}
	return &ObjectDir{fd: fd}, nil
}

// Close closes the directory.
func (o *ObjectDir) Close() error { return unix.Close(o.fd) }

// size returns the size of object d, or an error wrapping ErrNotFound.
func (o *ObjectDir) size(d digest.Digest) (int64, error) {
	rel, err := objectName(d)
	if err != nil {
		return 0, err
	}
	return sizeAt(o.fd, rel, d)
}

// has says whether object d is stored.
func (o *ObjectDir) has(d digest.Digest) bool {
	_, err := o.size(d)
	return err == nil
}

// Open opens object d for reading.
func (o *ObjectDir) Open(d digest.Digest) (io.ReadCloser, error) {
	rel, err := objectName(d)
	if err != nil {
		return nil, err
	}
	fd, err := openAt(o.fd, rel, d)
	if err != nil {
		return nil, err
	}
	return &fdReader{fd: fd}, nil
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

// missing returns the first of ds (in order) that is not stored, or "" if all are. It looks
// several up at a time.
func (o *ObjectDir) missing(ds []digest.Digest) digest.Digest {
	present := make([]bool, len(ds))
	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ds); i += workers {
				present[i] = o.has(ds[i])
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
