// Package storeimage builds the composefs image of a stored image: its layers merged by package
// merge (the tree a checkout makes), every regular file of more than 64 bytes
// redirecting to its object in the store's objects/ directory with its fs-verity digest.
package storeimage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/merge"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

// Store is what building a composefs image reads from the store: the layers' entries and recorded
// fs-verity digests, small objects to inline, and the names (redirects) and paths of the others.
type Store interface {
	store.Provider
	LayerEntries(ctx context.Context, diffID digest.Digest) ([]layerfs.Entry, error)
	VerityDigests(ctx context.Context, diffID digest.Digest) (map[digest.Digest]verity.Digest, error)
	ObjectName(d digest.Digest) (string, error)
	ObjectPath(d digest.Digest) (string, error)
}

// DigestOmitter is implemented by a Store whose images carry no fs-verity digests: their files
// refer to their object by name only, for mounts that run with verity off (a pending lazy pull's,
// whose placeholders have no content to digest yet; the layer store's per-layer images). Without
// digests every file's metacopy xattr is the same value, which the writer stores once.
type DigestOmitter interface {
	OmitDigests() bool
}

// InlineOmitter is implemented by a Store whose images inline no file: every regular file with
// content refers to its object by name, whatever its size (a pending lazy pull's, built before
// any object is fetched: its small files are placeholders like the others, and the image depends
// on the TOCs alone).
type InlineOmitter interface {
	OmitInline() bool
}

// WithoutDigests is s for images that carry no fs-verity digests (see DigestOmitter).
func WithoutDigests(s Store) Store { return noDigests{s} }

type noDigests struct{ Store }

func (noDigests) OmitDigests() bool { return true }

// WithEntries is s with the entries of the layers in entries given, decoded already by the
// caller (a pull's own, say), instead of read again from s; s's other layers and its choice of
// digests (DigestOmitter) are kept. Builds only read the entries.
func WithEntries(s Store, entries map[digest.Digest][]layerfs.Entry) Store {
	return knownEntries{s, entries}
}

type knownEntries struct {
	Store
	entries map[digest.Digest][]layerfs.Entry
}

func (k knownEntries) LayerEntries(ctx context.Context, diffID digest.Digest) ([]layerfs.Entry, error) {
	if e, ok := k.entries[diffID]; ok {
		return e, nil
	}
	return k.Store.LayerEntries(ctx, diffID)
}

func (k knownEntries) OmitDigests() bool {
	o, ok := k.Store.(DigestOmitter)
	return ok && o.OmitDigests()
}

func (k knownEntries) OmitInline() bool {
	o, ok := k.Store.(InlineOmitter)
	return ok && o.OmitInline()
}

// Tree merges the image's layers (package merge: the same tree a checkout materialises) into a
// composefs tree.
func Tree(ctx context.Context, s Store, img store.Image) (*composefs.Node, error) {
	t := merge.New()
	for _, diffID := range img.Layers {
		entries, err := s.LayerEntries(ctx, diffID)
		if err != nil {
			return nil, fmt.Errorf("layer %s: %w", diffID, err)
		}
		if err := t.Apply(entries); err != nil {
			return nil, fmt.Errorf("layer %s: %w", diffID, err)
		}
	}
	o, ok := s.(DigestOmitter)
	oi, iok := s.(InlineOmitter)
	b := &builder{ctx: ctx, s: s, omit: ok && o.OmitDigests(), noInline: iok && oi.OmitInline(), verity: map[digest.Digest]verity.Digest{}, inodes: map[*merge.Inode]*composefs.Node{}}
	for _, diffID := range img.Layers {
		if b.omit {
			break // no digest is read or computed
		}
		m, err := s.VerityDigests(ctx, diffID)
		if errors.Is(err, errdefs.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		for obj, v := range m {
			b.verity[obj] = v
		}
	}
	return b.convert(t)
}

type builder struct {
	ctx      context.Context
	s        Store
	omit     bool // no fs-verity digests (DigestOmitter)
	noInline bool // no file inlined (InlineOmitter)
	verity   map[digest.Digest]verity.Digest
	// inodes holds the composefs inode of each hard-linked inode's first name.
	inodes map[*merge.Inode]*composefs.Node
}

// convert turns the merged tree into composefs nodes. The merge walks names in sorted order, as
// libcomposefs does, so the first name of a hard-linked inode carries the inode.
func (b *builder) convert(t *merge.Tree) (*composefs.Node, error) {
	out := map[string]*composefs.Node{}
	err := t.Walk(func(p string, n *merge.Node) error {
		if p == "." {
			root, err := b.inode(n)
			out["."] = root
			return err
		}
		cn := &composefs.Node{HardlinkTo: b.inodes[n.Inode]}
		if n.Inode == nil || cn.HardlinkTo == nil {
			var err error
			if cn, err = b.inode(n); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if n.Inode != nil {
				b.inodes[n.Inode], cn.Nlink = cn, n.Inode.Names
			}
		}
		if n.IsDir() {
			out[p] = cn
		}
		if err := out[path.Dir(p)].AddChild(path.Base(p), cn); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out["."], nil
}

var typeBits = map[layerfs.Type]uint32{
	layerfs.TypeReg: unix.S_IFREG, layerfs.TypeDir: unix.S_IFDIR, layerfs.TypeSymlink: unix.S_IFLNK,
	layerfs.TypeChar: unix.S_IFCHR, layerfs.TypeBlock: unix.S_IFBLK, layerfs.TypeFifo: unix.S_IFIFO,
}

// inode makes the composefs inode of one entry.
func (b *builder) inode(n *merge.Node) (*composefs.Node, error) {
	e := &n.Entry
	t, ok := typeBits[e.Type]
	if !ok {
		return nil, fmt.Errorf("entry type %q: %w", e.Type, errdefs.ErrInvalid)
	}
	if e.UID < 0 || e.GID < 0 || e.UID > 1<<32-1 || e.GID > 1<<32-1 {
		return nil, fmt.Errorf("owner %d:%d: %w", e.UID, e.GID, errdefs.ErrInvalid)
	}
	out := &composefs.Node{Mode: t | uint32(e.Mode&0o7777), UID: uint32(e.UID), GID: uint32(e.GID), Nlink: 1}
	if n.IsDir() {
		out = composefs.NewDir(uint32(e.Mode & 0o7777))
		out.UID, out.GID = uint32(e.UID), uint32(e.GID)
	}
	if e.ModTime != nil {
		out.Mtime = composefs.Timespec{Sec: e.ModTime.Unix(), Nsec: uint32(e.ModTime.Nanosecond())}
	}
	names := make([]string, 0, len(e.Xattrs))
	for k := range e.Xattrs {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if err := out.SetXattr(k, e.Xattrs[k]); err != nil {
			return nil, err
		}
	}
	switch e.Type {
	case layerfs.TypeSymlink:
		// symlink(2) makes every link 0777 whatever the tar says; the mount must show what a
		// checkout shows.
		out.Mode = unix.S_IFLNK | 0o777
		out.Payload, out.Size = e.Linkname, uint64(len(e.Linkname))
	case layerfs.TypeChar, layerfs.TypeBlock:
		out.Rdev = uint32(unix.Mkdev(uint32(e.Devmajor), uint32(e.Devminor)))
	case layerfs.TypeReg:
		if err := b.content(out, e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// content points a regular file at its object, or inlines it when it is small (unless the
// store's images inline nothing).
func (b *builder) content(out *composefs.Node, e *layerfs.Entry) error {
	out.Size = uint64(e.Size)
	if e.Size == 0 {
		return nil
	}
	d := e.Digest
	if e.Size <= composefs.InlineThreshold && !b.noInline {
		f, err := b.s.Open(b.ctx, d)
		if err != nil {
			return err
		}
		defer f.Close()
		out.Content = make([]byte, e.Size)
		if _, err := io.ReadFull(f, out.Content); err != nil {
			return fmt.Errorf("object %s: %w", d, err)
		}
		return nil
	}
	var err error
	if out.Payload, err = b.s.ObjectName(d); err != nil {
		return err
	}
	if b.omit {
		return nil // the metacopy xattr carries no fs-verity digest
	}
	v, ok := b.verity[d]
	if !ok {
		p, err := b.s.ObjectPath(d)
		if err != nil {
			return err
		}
		if v, err = verity.FromFile(p); err != nil {
			return fmt.Errorf("object %s: %w", d, err)
		}
		b.verity[d] = v
	}
	out.Digest = &v
	return nil
}

// Build writes the composefs image of img to w.
func Build(ctx context.Context, s Store, img store.Image, w io.Writer) error {
	root, err := Tree(ctx, s, img)
	if err != nil {
		return err
	}
	return composefs.WriteImage(w, root)
}

// Cache is a Store that also keeps the images built from it: where the one of an image lives,
// and the temp directory it is written in.
type Cache interface {
	Store
	ComposefsPath(id digest.Digest) (string, error)
	TempDir() string
}

// Ensure returns the path of img's cached composefs image in the store, building it first if it
// is missing. The image is written to a temp file and renamed, so a crash never leaves a partial
// image. The caller holds the store's shared lock.
func Ensure(ctx context.Context, s Cache, img store.Image) (string, error) {
	p, err := s.ComposefsPath(img.ID)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	f, err := os.CreateTemp(s.TempDir(), "composefs-")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	err = Build(ctx, s, img, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o444)
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		return "", fmt.Errorf("building the composefs image of %s: %w", img.ID, err)
	}
	return p, nil
}
