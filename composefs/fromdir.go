package composefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

// dirOptions of FromDir; defaults are set in FromDir only.
type dirOptions struct {
	digestStore string
	hardlinks   bool
}

// DirOption changes how FromDir builds a tree.
type DirOption func(*dirOptions)

// WithDigestStore copies the content of every external file into dir, named by its fs-verity
// digest ("xx/rest"), the object directory the image is mounted with.
func WithDigestStore(dir string) DirOption { return func(o *dirOptions) { o.digestStore = dir } }

// WithHardlinks keeps hard links (names of one inode) as hard links, with Nlink counting their
// names. mkcomposefs does not: it writes every name as a file of its own with Nlink 1, and
// without this option so does FromDir, so that the image is byte-identical to its.
func WithHardlinks() DirOption { return func(o *dirOptions) { o.hardlinks = true } }

// FromDir builds the tree of the directory dir like mkcomposefs does: metadata and xattrs from
// lstat and llistxattr, regular files of 1..InlineThreshold bytes inline, larger ones as
// references to an object named by their fs-verity digest, with that digest. Like mkcomposefs it
// writes each name of a hard-linked file as a file of its own, unless WithHardlinks is given.
func FromDir(ctx context.Context, dir string, opts ...DirOption) (*Node, error) {
	o := dirOptions{}
	for _, f := range opts {
		f(&o)
	}
	if o.digestStore != "" {
		if err := os.MkdirAll(o.digestStore, 0o755); err != nil {
			return nil, fmt.Errorf("creating digest store: %w", err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	b := &dirBuilder{ctx: gctx, opts: o, inodes: map[devIno]*Node{}, contents: g}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return nil, fmt.Errorf("lstat %s: %w", dir, err)
	}
	root, err := b.node(dir, &st)
	if err == nil && !root.IsDir() {
		err = fmt.Errorf("%s is not a directory: %w", dir, errdefs.ErrInvalid)
	}
	if err == nil {
		err = b.walk(root, dir)
	}
	b.flush()
	// The walk's own error may only be the cancellation a failed content read caused; Wait
	// returns that first cause.
	if werr := g.Wait(); werr != nil {
		return nil, werr
	}
	if err != nil {
		return nil, err
	}
	return root, nil
}

type devIno struct{ dev, ino uint64 }

// dirBuilder walks in one goroutine and reads file contents (and digests them) in the errgroup
// contents, at most GOMAXPROCS at once: digesting is most of the CPU of a build, and the
// workers write only the fields of their own node (Content, Digest, Payload).
type dirBuilder struct {
	ctx      context.Context
	opts     dirOptions
	inodes   map[devIno]*Node
	contents *errgroup.Group
	xbuf     []byte // llistxattr buffer, reused by the walk
	batch    []contentJob
	batchLen uint64 // bytes in batch
}

// contentJob is a regular file whose content a worker reads.
type contentJob struct {
	n    *Node
	path string
}

// Batch limits: a goroutine per file made scheduling (futex, wake-ups) cost as much as reading
// small files, so files go to the workers in batches of up to this many files or bytes.
const (
	batchFiles = 64
	batchBytes = 4 << 20
)

func (b *dirBuilder) queue(n *Node, path string) {
	b.batch = append(b.batch, contentJob{n, path})
	b.batchLen += n.Size
	if len(b.batch) >= batchFiles || b.batchLen >= batchBytes {
		b.flush()
	}
}

// flush hands the batch to a worker, waiting while GOMAXPROCS of them are busy.
func (b *dirBuilder) flush() {
	jobs := b.batch
	if len(jobs) == 0 {
		return
	}
	b.batch, b.batchLen = nil, 0
	b.contents.Go(func() error {
		for _, j := range jobs {
			if err := b.content(j.n, j.path); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *dirBuilder) walk(n *Node, path string) error {
	if err := b.ctx.Err(); err != nil {
		return err
	}
	ents, err := os.ReadDir(path)
	if err != nil {
		return fmt.Errorf("reading directory: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(path, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", p, err)
		}
		linked := b.opts.hardlinks && st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Nlink > 1
		if linked {
			key := devIno{uint64(st.Dev), st.Ino}
			if t := b.inodes[key]; t != nil {
				t.Nlink++
				if err := n.AddChild(e.Name(), &Node{HardlinkTo: t}); err != nil {
					return err
				}
				continue
			}
		}
		c, err := b.node(p, &st)
		if err != nil {
			return err
		}
		if linked {
			b.inodes[devIno{uint64(st.Dev), st.Ino}] = c
		}
		if err := n.AddChild(e.Name(), c); err != nil {
			return err
		}
		if c.IsDir() {
			if err := b.walk(c, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// node makes the node of path from its lstat st; a regular file's content is read later, by a
// worker of b.contents.
func (b *dirBuilder) node(path string, st *unix.Stat_t) (*Node, error) {
	n := &Node{
		Mode:  st.Mode,
		UID:   st.Uid,
		GID:   st.Gid,
		Nlink: 1,
		Rdev:  uint32(st.Rdev),
		Mtime: Timespec{Sec: st.Mtim.Sec, Nsec: uint32(st.Mtim.Nsec)},
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Size = uint64(st.Size)
		if n.Size > 0 {
			b.queue(n, path)
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(path)
		if err != nil {
			return nil, fmt.Errorf("reading symlink: %w", err)
		}
		n.Payload = target
		n.Size = uint64(len(target))
	}
	xs, err := b.readXattrs(path)
	if err != nil {
		return nil, err
	}
	n.Xattrs = xs
	return n, nil
}

// content reads a regular file: inline if small, else its fs-verity digest (and a copy into the
// digest store).
func (b *dirBuilder) content(n *Node, path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("reading file %s: %w", path, err)
	}
	defer unix.Close(fd)
	f := fdReader(fd)
	if n.Size <= InlineThreshold {
		buf := make([]byte, n.Size)
		if _, err := io.ReadFull(f, buf); err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
		n.Content = buf
		return nil
	}
	var d verity.Digest
	if b.opts.digestStore == "" {
		if d, err = verity.FromReader(f); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	} else if d, err = storeObject(b.opts.digestStore, f); err != nil {
		return fmt.Errorf("storing %s: %w", path, err)
	}
	n.Digest = &d
	n.Payload = DigestStoreName(d)
	return nil
}

// fdReader reads a file descriptor without an os.File: os.Open tries to register every file with
// the runtime's poller (epoll_ctl, fcntl), which for tens of thousands of small files costs more
// system time than reading them.
type fdReader int

func (fd fdReader) Read(p []byte) (int, error) {
	for {
		n, err := unix.Read(int(fd), p)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// DigestStoreName is where a digest store (mkcomposefs --digest-store) keeps the file with
// fs-verity digest d, relative to the store: "xx/rest" of the digest's hex, which is also the
// redirect the image records. (Kura's own store names objects by sha256; package store owns that
// layout.)
func DigestStoreName(d verity.Digest) string {
	h := d.String()
	return h[:2] + "/" + h[2:]
}

// storeObject copies r into dir under its fs-verity digest, hashing while copying. The object
// appears only complete: written to a temporary file, synced, made read-only, then renamed.
func storeObject(dir string, r io.Reader) (verity.Digest, error) {
	tmp, err := os.CreateTemp(dir, ".tmp-")
	if err != nil {
		return verity.Digest{}, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := verity.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), r); err != nil {
		return verity.Digest{}, err
	}
	d := h.Digest()
	final := filepath.Join(dir, DigestStoreName(d))
	if _, err := os.Lstat(final); err == nil {
		return d, nil
	}
	if err := tmp.Chmod(0o644); err != nil {
		return d, err
	}
	if err := tmp.Sync(); err != nil {
		return d, err
	}
	if err := tmp.Close(); err != nil {
		return d, err
	}
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return d, err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		return d, err
	}
	return d, nil
}

// readXattrs lists all xattrs of path without following a symlink.
func (b *dirBuilder) readXattrs(path string) ([]Xattr, error) {
	if b.xbuf == nil {
		b.xbuf = make([]byte, 4096)
	}
	var n int
	for {
		var err error
		n, err = unix.Llistxattr(path, b.xbuf)
		if errors.Is(err, unix.ERANGE) {
			b.xbuf = make([]byte, 2*len(b.xbuf))
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("listing xattrs of %s: %w", path, err)
		}
		break
	}
	if n == 0 {
		return nil, nil
	}
	var xs []Xattr
	for _, name := range strings.Split(string(b.xbuf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 256)
		for {
			k, err := unix.Lgetxattr(path, name, val)
			if errors.Is(err, unix.ERANGE) {
				val = make([]byte, 2*len(val))
				if len(val) > 1<<17 {
					return nil, fmt.Errorf("xattr %s of %s too large: %w", name, path, errdefs.ErrInvalid)
				}
				continue
			}
			if errors.Is(err, syscall.ENODATA) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("reading xattr %s of %s: %w", name, path, err)
			}
			xs = append(xs, Xattr{Name: name, Value: append([]byte(nil), val[:k]...)})
			break
		}
	}
	return xs, nil
}
