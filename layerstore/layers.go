// Package layerstore serves Kura's store to containers/storage as an additional layer store
// (storage.conf additionallayerstores = ["PATH:ref"]): it answers containers/storage's lookups
// of PATH/<base64 image reference>/<layer digest>/{diff,info,blob,use} by pulling the image into
// the store and exposing each layer as a read-only directory, so that podman and CRI-O neither
// download nor unpack the layers Kura holds. docs/layerstore.md gives the protocol and its limits.
package layerstore

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// Resolver makes the image a reference names present in the store, as kura pull does (podman's
// credentials and registries.conf are the caller's business), and says where its blobs can be
// read again.
type Resolver interface {
	Resolve(ctx context.Context, ref string) (Pulled, error)
}

// Pulled is an image the store holds, with the manifest its layers are looked up in.
type Pulled struct {
	Image    store.Image
	Manifest ocispec.Manifest
	// Source serves the image's blobs (for blob); nil when they cannot be fetched again.
	Source source.Source
}

// Layer is one answered lookup: the files of PATH/<ref>/<digest>/.
type Layer struct {
	Desc   ocispec.Descriptor // the manifest's descriptor of the layer
	DiffID digest.Digest
	Diff   string // the directory diff points at
	Info   []byte // the info file
	// TarSize is the size of the layer's tar (info's diff-size); 0 when unknown.
	TarSize int64
	// Source serves the layer's blob (for blob); nil when it cannot be fetched again.
	Source source.Source
	img    store.Image
	// lazyRef is set on a layer a Lazy served: the reference it was looked up with, to ask the
	// Lazy again where diff points (the pending mount, then the complete layer's).
	lazyRef    string
	lazyDigest digest.Digest
	// pending is set when the first lookup left the diff's mount to the background
	// (startLayerDir); nil when the diff was made before answering.
	pending *pendingDir
}

// pendingDir is a layer diff being made in the background.
type pendingDir struct {
	done chan struct{} // closed when made (or failed)
	// answered is set by the first readlink of diff: containers/storage's stat of diff at the
	// lookup, the one access that does not wait (see Layers.DiffTarget).
	answered atomic.Bool
}

// Info is the info file: the fields of containers/storage's Layer (layers.go) that
// LookupAdditionalLayer decodes and PutAdditionalLayer keeps in the new layer's record.
type Info struct {
	CompressedDigest   digest.Digest `json:"compressed-diff-digest,omitempty"`
	CompressedSize     int64         `json:"compressed-size,omitempty"`
	UncompressedDigest digest.Digest `json:"diff-digest,omitempty"`
	UncompressedSize   int64         `json:"diff-size,omitempty"`
	// CompressionType is containers/storage's archive.Compression: 0 none, 2 gzip, 4 zstd.
	CompressionType int `json:"compression,omitempty"`
}

// Options configure Layers.
type Options struct {
	// State holds the layer directories and fetched blobs; it must be on the store's file
	// system for hardlink checkouts.
	State string
	// Diff is what a layer's diff is (default DiffAuto).
	Diff DiffMode
	// Link is how checkout layer directories get file contents from the store (default hardlink).
	Link checkout.LinkMode
	// ResolveTTL is how long a reference's resolution is reused (default 1 minute): the lookups
	// of one podman pull come within it, and a tag moved later is resolved again.
	ResolveTTL time.Duration
	Log        *slog.Logger
}

// Layers answers lookups from a store. It is safe for concurrent use.
type Layers struct {
	s    *store.Store
	r    Resolver
	opts Options

	mu       sync.Mutex
	resolved map[string]resolution
	smu      sync.Mutex        // guards served, never held during a pull
	served   map[string]served // by ref and digest
	dirs     sync.Mutex        // held while a layer directory is made
	blobs    sync.Mutex        // held while a blob is fetched
	umu      sync.Mutex
	uses     map[digest.Digest]int
	lazy     Lazy            // set by SetLazy: lookups serve lazy pulls
	dense    bool            // the per-layer images have dense inodes (denseKernel)
	ownMnts  map[string]bool // pending layer mounts this process made (under dirs)
	pmu      sync.Mutex
	// prebuilds are the composefs images to be built from a pull's entries (layerEntries), by layer.
	prebuilds map[digest.Digest]*prebuild
	base      baseTrees // the trees of the last full images written, for stacked images
	// beforeBackgroundMount, if set (tests), runs before a first lookup's mount in the background.
	beforeBackgroundMount func()
}

type resolution struct {
	p    Pulled
	when time.Time
}

// New returns Layers serving from s, pulling with r.
func New(s *store.Store, r Resolver, opts Options) (*Layers, error) {
	if opts.State == "" {
		return nil, fmt.Errorf("layer store: no state directory: %w", errdefs.ErrInvalid)
	}
	if opts.Link == "" {
		opts.Link = checkout.LinkHardlink
	}
	switch opts.Diff {
	case "", DiffAuto:
		opts.Diff = DiffComposefs
		if err := checkKernel(kernelRelease()); err != nil {
			opts.Diff = DiffCheckout
		}
	case DiffCheckout:
	case DiffComposefs:
		if err := checkKernel(kernelRelease()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("layer store: diff mode %q: want auto, checkout or composefs: %w", opts.Diff, errdefs.ErrInvalid)
	}
	if opts.ResolveTTL == 0 {
		opts.ResolveTTL = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	for _, d := range []string{dirLayers, dirBlobs} {
		if err := os.MkdirAll(filepath.Join(opts.State, d), 0o700); err != nil {
			return nil, fmt.Errorf("layer store: %w", err)
		}
	}
	if err := removeTemps(opts.State); err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	return &Layers{s: s, r: r, opts: opts, resolved: map[string]resolution{}, served: map[string]served{},
		uses: map[digest.Digest]int{}, ownMnts: map[string]bool{}, prebuilds: map[digest.Digest]*prebuild{},
		dense: kernelAtLeast(kernelRelease(), denseKernel)}, nil
}

const (
	dirLayers = "layers" // layers/<hex of DiffID>: the diff directories; <hex>.done when complete
	dirBlobs  = "blobs"  // blobs/<hex of digest>: compressed layers fetched for blob
)

// DecodeRef decodes a path element under the store's root: containers/storage names it with
// base64.StdEncoding of the image reference.
func DecodeRef(name string) (string, error) {
	b, err := base64.StdEncoding.DecodeString(name)
	if err != nil || len(b) == 0 {
		return "", fmt.Errorf("layer store: %q is not a base64 image reference: %w", name, errdefs.ErrInvalid)
	}
	return string(b), nil
}

// Lookup answers a lookup of (ref, dgst): it pulls the image ref names (unless resolved within
// ResolveTTL), finds the layer whose digest, or zstd:chunked TOC digest (current
// containers/storage looks chunked layers up by it), is dgst, and makes its directory.
//
// A layer once served is served again without asking the registry (its digest fixes its
// content): every podman run of the image resolves the diff symlink through a lookup, and it must
// neither wait for nor depend on the registry.
//
// The layer's directory is there when Lookup returns (the snapshotter uses it at once); the FUSE
// server answers earlier (lookupEarly). The store's shared lock is held from the pull to the
// mount's use: an image pulled without a name (the containerd snapshotter's) is kept by nothing
// else in between.
func (l *Layers) Lookup(ctx context.Context, ref string, dgst digest.Digest) (*Layer, error) {
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	layer, err := l.lookupAgainIfFreed(ctx, ref, dgst)
	if err != nil {
		return nil, err
	}
	if layer.pending == nil {
		return layer, nil
	}
	if err := layer.pending.wait(ctx); err != nil {
		return nil, err
	}
	if _, err := l.layerDir(ctx, layer.img, layer.DiffID); err != nil { // made again if that failed
		return nil, err
	}
	return layer, nil
}

// lookupEarly is Lookup without waiting for a composefs diff's mount on a first lookup
// (startLayerDir): what containers/storage's lookup needs. It holds the store's shared lock
// while it pulls and makes the layer's directory.
func (l *Layers) lookupEarly(ctx context.Context, ref string, dgst digest.Digest) (*Layer, error) {
	if l.lazy != nil {
		layer, err := l.lookupLazy(ctx, ref, dgst)
		if err == nil {
			return layer, nil
		}
		// As without --lazy: a pull, or, with the registry unreachable, the image the store
		// holds under that name (a server restarted offline serves what it has). Lookup waits
		// for the layer's mount: this may be a use's resolution (podman run after a restart),
		// not the stat of a first lookup that may be answered early.
		l.opts.Log.Warn("lazy lookup failed; looking the layer up as without --lazy", "ref", ref, "digest", dgst, "err", err)
		return l.Lookup(ctx, ref, dgst)
	}
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return l.lookupAgainIfFreed(ctx, ref, dgst)
}

// lookupAgainIfFreed is lookupServed, once more after forgetting a remembered resolution or
// layer that gc freed since (ErrNotFound).
func (l *Layers) lookupAgainIfFreed(ctx context.Context, ref string, dgst digest.Digest) (*Layer, error) {
	layer, err := l.lookupServed(ctx, ref, dgst)
	if errors.Is(err, errdefs.ErrNotFound) && !errors.Is(err, errNotInImage) {
		l.forgetRef(ref, dgst)
		layer, err = l.lookupServed(ctx, ref, dgst)
	}
	return layer, err
}

// errNotInImage: the image has no such layer; looking it up again would not help.
var errNotInImage = fmt.Errorf("not in the image: %w", errdefs.ErrNotFound)

// forgetRef drops the resolution of ref and the layer dgst served from it.
func (l *Layers) forgetRef(ref string, dgst digest.Digest) {
	l.mu.Lock()
	delete(l.resolved, ref)
	l.mu.Unlock()
	l.smu.Lock()
	delete(l.served, ref+"\x00"+dgst.String())
	l.smu.Unlock()
}

// lookupServed is a layer served before, or a first lookup, under the shared lock.
func (l *Layers) lookupServed(ctx context.Context, ref string, dgst digest.Digest) (*Layer, error) {
	key := ref + "\x00" + dgst.String()
	l.smu.Lock()
	c, ok := l.served[key]
	l.smu.Unlock()
	if ok {
		if c.layer.pending.busy() {
			return c.layer, nil // readlink of diff waits for it (DiffTarget)
		}
		if _, err := l.layerDir(ctx, c.img, c.layer.DiffID); err != nil { // remade if removed
			return nil, err
		}
		return c.layer, nil
	}
	layer, img, err := l.lookup(ctx, ref, dgst)
	if err != nil {
		return nil, err
	}
	l.smu.Lock()
	l.served[key] = served{layer: layer, img: img}
	l.smu.Unlock()
	return layer, nil
}

type served struct {
	layer *Layer
	img   store.Image
}

// lookup is Lookup's first answer for a (ref, digest): pull, find the layer, make its diff.
func (l *Layers) lookup(ctx context.Context, ref string, dgst digest.Digest) (*Layer, store.Image, error) {
	p, err := l.resolve(ctx, ref)
	if err != nil {
		return nil, store.Image{}, err
	}
	i := LayerIndex(p.Manifest, dgst)
	if i < 0 {
		return nil, store.Image{}, fmt.Errorf("layer store: image %s has no layer %s: %w", ref, dgst, errNotInImage)
	}
	if len(p.Image.Layers) != len(p.Manifest.Layers) {
		return nil, store.Image{}, fmt.Errorf("layer store: image %s: %d stored layers for %d in the manifest: %w",
			ref, len(p.Image.Layers), len(p.Manifest.Layers), errdefs.ErrInvalid)
	}
	desc, diffID := p.Manifest.Layers[i], p.Image.Layers[i]
	sl, err := l.s.Layer(ctx, diffID)
	if err != nil {
		return nil, store.Image{}, fmt.Errorf("layer store: %w", err)
	}
	dir, pending, err := l.startLayerDir(ctx, p.Image, diffID)
	if err != nil {
		return nil, store.Image{}, err
	}
	layer := &Layer{Desc: desc, DiffID: diffID, Diff: dir, TarSize: sl.TarSize, Source: p.Source, img: p.Image, pending: pending}
	if layer.Info, err = infoOf(layer); err != nil {
		return nil, store.Image{}, err
	}
	l.opts.Log.Info("layer served", "ref", ref, "digest", dgst, "diffID", diffID, "dir", dir)
	return layer, p.Image, nil
}

// infoOf is the info file of a layer.
func infoOf(layer *Layer) ([]byte, error) {
	return json.Marshal(Info{CompressedDigest: layer.Desc.Digest, CompressedSize: layer.Desc.Size,
		UncompressedDigest: layer.DiffID, UncompressedSize: layer.TarSize, CompressionType: compressionType(layer.Desc.MediaType)})
}

// layerDir makes the diff of one layer as Options.Diff says.
func (l *Layers) layerDir(ctx context.Context, img store.Image, diffID digest.Digest) (string, error) {
	if l.opts.Diff == DiffComposefs {
		return l.composefsDir(ctx, img, diffID)
	}
	return l.diffDir(ctx, img, diffID)
}

// startLayerDir makes the diff of a layer's first lookup. A composefs diff not mounted yet is
// mounted in the background, after its mount point is made: podman's pull goes on (it stats
// diff, which resolves to the mount point, then commits the image) while Kura mounts the layer
// (the image built from the pull's entries, layerEntries, and the mount: 31-78 ms for 10,000
// files; 90-150 ms from the stored TOC), so it overlaps podman's own work instead of adding to
// the pull.
// Every later use of diff waits for the mount (DiffTarget). A checkout is made before answering: its directory is made
// whole in place, and its mount point cannot exist early. So is the mount of a layer podman may
// hold already (servedBefore): its first lookup in this process may be a container's, whose
// overlay must not stack on an empty mount point.
func (l *Layers) startLayerDir(ctx context.Context, img store.Image, diffID digest.Digest) (string, *pendingDir, error) {
	target := l.mountPoint(dirMounts, diffID)
	if l.opts.Diff != DiffComposefs || l.servedBefore(img, diffID) {
		dir, err := l.layerDir(ctx, img, diffID)
		return dir, nil, err
	}
	if _, ok, err := mount.Find(target); err != nil || ok {
		return target, nil, err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", nil, fmt.Errorf("layer store: %w", err)
	}
	p := &pendingDir{done: make(chan struct{})}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultLookupTimeout)
	go func() {
		defer close(p.done)
		defer cancel()
		if err := l.awaitPrebuild(bg, diffID); err != nil {
			l.opts.Log.Warn("waiting for a layer's image failed", "diffID", diffID, "err", err)
		}
		if l.beforeBackgroundMount != nil {
			l.beforeBackgroundMount()
		}
		start := time.Now()
		if _, err := l.composefsDir(bg, img, diffID); err != nil {
			l.opts.Log.Warn("mounting a layer failed; the next use tries again", "diffID", diffID, "err", err)
			return
		}
		l.opts.Log.Info("layer mounted", "diffID", diffID, "took", time.Since(start))
	}()
	return target, p, nil
}

// servedBefore reports whether podman may hold the layer from an earlier server's answer: its
// mount point is there from before (a reboot took the mount, not the directory; a --lazy server
// makes it when it serves the pending layer, PendingDir), or a pending lazy pull of the image
// lists it (a server with --lazy answered it from its pending mount; this one, restarted
// without --lazy, pulled it whole). Then the layer's
// first lookup here is no proof of a pull in progress: it may be a container's.
func (l *Layers) servedBefore(img store.Image, diffID digest.Digest) bool {
	if _, err := os.Lstat(l.mountPoint(dirMounts, diffID)); err == nil {
		return true
	}
	p, err := lazy.Open(l.s, img.ID)
	return err == nil && slices.Contains(p.Pending, diffID)
}

// busy reports whether the background mount is still being made.
func (p *pendingDir) busy() bool {
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// wait waits until the background mount is made or has failed (a nil p is made).
func (p *pendingDir) wait(ctx context.Context) error {
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("layer store: waiting for a layer's mount: %w", ctx.Err())
	}
}

// DiffTarget is what the diff symlink resolves to, when it is resolved: the layer's directory,
// made (or made again if removed) before it is returned. The one exception is the first
// resolution after a first lookup that left the mount to the background: containers/storage
// stats diff right after looking the layer up (LookupAdditionalLayer, before it commits the
// layer), and only needs it to exist; the mount point does. Nothing can use the layer's files
// before that stat: no image holds the layer until it succeeds.
func (l *Layers) DiffTarget(ctx context.Context, layer *Layer) (string, error) {
	if layer.lazyRef != "" {
		return l.lazyTarget(ctx, layer)
	}
	if p := layer.pending; p != nil {
		if p.answered.CompareAndSwap(false, true) && p.busy() {
			return layer.Diff, nil
		}
	}
	waited := time.Now()
	if err := layer.pending.wait(ctx); err != nil {
		return "", err
	}
	dir, err := l.layerDir(ctx, layer.img, layer.DiffID)
	if d := time.Since(waited); d > 10*time.Millisecond {
		// A use (podman run's overlay mount) waited: logged, as it is time podman loses.
		l.opts.Log.Info("diff resolved after waiting for its mount", "diffID", layer.DiffID, "waited", d)
	}
	return dir, err
}

// resolve pulls ref, once per ResolveTTL (concurrent lookups of one image wait for one pull).
func (l *Layers) resolve(ctx context.Context, ref string) (Pulled, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if r, ok := l.resolved[ref]; ok && time.Since(r.when) < l.opts.ResolveTTL {
		return r.p, nil
	}
	l.opts.Log.Info("pulling for the layer store", "ref", ref)
	var p Pulled
	var err error
	if er, ok := l.r.(EntriesResolver); ok && l.opts.Diff == DiffComposefs {
		p, err = er.ResolveWithEntries(ctx, ref, l.layerEntries)
	} else {
		p, err = l.r.Resolve(ctx, ref)
	}
	if err != nil {
		return Pulled{}, fmt.Errorf("layer store: pulling %s: %w", ref, err)
	}
	l.resolved[ref] = resolution{p: p, when: time.Now()}
	return p, nil
}

// LayerIndex is the index in m of the layer a lookup names by dgst: its digest, or its
// zstd:chunked TOC digest (current containers/storage looks chunked layers up by it); -1 if none.
func LayerIndex(m ocispec.Manifest, dgst digest.Digest) int {
	for i, d := range m.Layers {
		if d.Digest == dgst || d.Annotations[chunked.AnnotationTOCDigest] == dgst.String() {
			return i
		}
	}
	return -1
}

// compressionType maps a layer media type to containers/storage's archive.Compression.
func compressionType(mediaType string) int {
	switch {
	case strings.HasSuffix(mediaType, "+zstd"), strings.HasSuffix(mediaType, ".zstd"):
		return 4
	case strings.HasSuffix(mediaType, "gzip"):
		return 2
	}
	return 0
}

// Use records that containers/storage created a layer from l (it creates the use file). The
// layer directory is already a use of the image in the store (a checkout), which is what keeps
// it from gc; the count is for the log.
func (l *Layers) Use(layer *Layer) {
	l.umu.Lock()
	l.uses[layer.DiffID]++
	n := l.uses[layer.DiffID]
	l.umu.Unlock()
	l.opts.Log.Info("layer used", "diffID", layer.DiffID, "uses", n)
}
