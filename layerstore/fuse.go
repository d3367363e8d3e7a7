package layerstore

import (
	"context"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
)

// The file system is three levels deep, as containers/storage looks it up:
//
//	PATH/<base64 ref>/<digest>/diff  a symlink to the layer's directory (not on FUSE: overlayfs
//	                                 and every read go straight to the store's file system)
//	PATH/<base64 ref>/<digest>/info  the Info JSON
//	PATH/<base64 ref>/<digest>/blob  the compressed layer, fetched on first open
//	PATH/<base64 ref>/<digest>/use   never exists: creating it records a use and fails ENOENT,
//	                                 which tells containers/storage the store counts uses
//
// and rmdir of <digest> (containers/storage's release of its handle) fails ENOENT for the
// same reason. Lookups do the work: nothing is listed.

// node is what every directory level shares: the Layers, and the context lookups run in (the
// server's, bounded by a timeout, not the request's: a pull interrupted because one podman
// was killed would only be started again by the next).
type server struct {
	ls      *Layers
	ctx     context.Context
	timeout time.Duration
}

type node struct {
	fs.Inode
	*server
}

type rootNode struct{ node }

// rootAttrTimeout is how long the kernel may answer a stat of PATH itself from its cache: for
// good. containers/storage stats PATH whenever it opens the store (podman pull, rmi, run, info
// ...) and fails every command if that stat fails; a killed server's dead mount answers
// ENOTCONN to anything the kernel must ask it, so with the one-second default podman stopped
// working a second after a kill -9. The root's attributes never change (a directory that lists
// nothing), so the cached ones stay true; lookups below it still fail (ENOTCONN), which
// containers/storage takes for "not here" and pulls normally.
const rootAttrTimeout = 100 * 365 * 24 * time.Hour

type refNode struct {
	node
	ref string
}

type layerNode struct {
	node
	layer *Layer
}

// diffNode is the diff symlink. The kernel asks for its target at every resolution (symlink
// caching is off), which is where a use waits for the layer's directory (Layers.DiffTarget).
type diffNode struct {
	node
	layer *Layer
}

type blobNode struct {
	node
	layer *Layer
}

var (
	_ fs.NodeLookuper   = (*rootNode)(nil)
	_ fs.NodeGetattrer  = (*rootNode)(nil)
	_ fs.NodeLookuper   = (*refNode)(nil)
	_ fs.NodeRmdirer    = (*refNode)(nil)
	_ fs.NodeLookuper   = (*layerNode)(nil)
	_ fs.NodeCreater    = (*layerNode)(nil)
	_ fs.NodeReaddirer  = (*layerNode)(nil)
	_ fs.NodeReadlinker = (*diffNode)(nil)
	_ fs.NodeGetattrer  = (*diffNode)(nil)
	_ fs.NodeGetattrer  = (*blobNode)(nil)
	_ fs.NodeOpener     = (*blobNode)(nil)
)

func (n *node) dir(ctx context.Context, child fs.InodeEmbedder) *fs.Inode {
	return n.NewInode(ctx, child, fs.StableAttr{Mode: syscall.S_IFDIR})
}

func (r *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ref, err := DecodeRef(name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	out.Mode = syscall.S_IFDIR | 0o755
	return r.dir(ctx, &refNode{node: node{server: r.server}, ref: ref}), 0
}

func (r *rootNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFDIR | 0o755
	out.SetTimeout(rootAttrTimeout)
	return 0
}

func (r *refNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	dgst, err := digest.Parse(name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	lctx, cancel := context.WithTimeout(r.ctx, r.timeout)
	defer cancel()
	layer, err := r.ls.lookupEarly(lctx, r.ref, dgst)
	if err != nil {
		// ENOENT is what containers/storage takes for "not here": it pulls the layer itself.
		r.ls.opts.Log.Warn("lookup failed; podman pulls the layer itself", "ref", r.ref, "digest", dgst, "err", err)
		return nil, syscall.ENOENT
	}
	out.Mode = syscall.S_IFDIR | 0o755
	return r.dir(ctx, &layerNode{node: node{server: r.server}, layer: layer}), 0
}

// Rmdir is containers/storage releasing its handle of a layer (notifyReleaseAdditionalLayer).
func (r *refNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.ENOENT }

func (n *layerNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	switch name {
	case "diff":
		out.Mode, out.Size = syscall.S_IFLNK|0o777, uint64(len(n.layer.Diff))
		return n.NewInode(ctx, &diffNode{node: node{server: n.server}, layer: n.layer}, fs.StableAttr{Mode: syscall.S_IFLNK}), 0
	case "info":
		out.Mode, out.Size = syscall.S_IFREG|0o444, uint64(len(n.layer.Info))
		f := &fs.MemRegularFile{Data: n.layer.Info, Attr: fuse.Attr{Mode: 0o444}}
		return n.NewInode(ctx, f, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	case "blob":
		out.Mode, out.Size = syscall.S_IFREG|0o444, uint64(n.layer.Desc.Size)
		return n.NewInode(ctx, &blobNode{node: node{server: n.server}, layer: n.layer}, fs.StableAttr{Mode: syscall.S_IFREG}), 0
	}
	return nil, syscall.ENOENT
}

func (n *layerNode) Readdir(ctx context.Context) (fs.DirStream, syscall.Errno) {
	return fs.NewListDirStream([]fuse.DirEntry{
		{Name: "blob", Mode: syscall.S_IFREG}, {Name: "diff", Mode: syscall.S_IFLNK}, {Name: "info", Mode: syscall.S_IFREG},
	}), 0
}

// Create of use is containers/storage saying it made a layer of this one
// (notifyUseAdditionalLayer); ENOENT tells it the store took note.
func (n *layerNode) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if name == "use" {
		n.ls.Use(n.layer)
		return nil, nil, 0, syscall.ENOENT
	}
	return nil, nil, 0, syscall.EROFS
}

func (d *diffNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	lctx, cancel := context.WithTimeout(d.ctx, d.timeout)
	defer cancel()
	dir, err := d.ls.DiffTarget(lctx, d.layer)
	if err != nil {
		d.ls.opts.Log.Warn("layer directory unavailable", "diffID", d.layer.DiffID, "err", err)
		return nil, syscall.EIO
	}
	return []byte(dir), 0
}

func (d *diffNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Size = syscall.S_IFLNK|0o777, uint64(len(d.layer.Diff))
	return 0
}

func (b *blobNode) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode, out.Size = syscall.S_IFREG|0o444, uint64(b.layer.Desc.Size)
	return 0
}

func (b *blobNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	lctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	f, err := b.ls.OpenBlob(lctx, b.layer)
	if err != nil {
		b.ls.opts.Log.Warn("blob unavailable", "digest", b.layer.Desc.Digest, "err", err)
		return nil, 0, syscall.EIO
	}
	return fs.NewLoopbackFileFromOS(f), 0, 0
}
