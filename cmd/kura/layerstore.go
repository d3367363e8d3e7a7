package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/layerstore"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

func init() {
	var rf registryFlags
	var state, link, diff string
	var timeout, lazyHold time.Duration
	var lazyPulls bool
	var lazyMode string
	lsCmd := &cobra.Command{
		Use:   "layer-store",
		Short: "Serve the store to podman and CRI-O as a containers/storage additional layer store",
	}
	serveCmd := &cobra.Command{
		Use:   "serve PATH",
		Short: "Mount the additional layer store at PATH and answer podman's lookups until SIGTERM or SIGINT",
		Long: `Mount a FUSE file system at PATH that answers containers/storage's additional layer store
lookups (storage.conf: additionallayerstores = ["PATH:ref"]). When podman or CRI-O pulls an
image, each layer is looked up by image reference and digest: Kura pulls the image into its
store (partially, verified; podman's auth files and registries.conf) and serves the layer as a
read-only directory, so podman neither downloads nor unpacks it. A lookup that fails is
answered "not here", and podman pulls that layer itself. On SIGTERM or SIGINT the mount is
removed; a stale mount of a killed server at PATH is removed at start.

With --lazy a layer is answered as soon as a lazy pull of its image can be mounted: its diff is
a composefs mount over placeholders whose files this process fetches on first access (fill
service: --lazy-mode) and in the background; once the pull is complete and verified, diff
points at the complete layer. Pending pulls are resumed when the server starts again.
See docs/layerstore.md.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			mode, err := checkout.ParseLinkMode(link)
			if err != nil {
				return usageError{err}
			}
			switch layerstore.DiffMode(diff) {
			case layerstore.DiffAuto, layerstore.DiffCheckout, layerstore.DiffComposefs:
			default:
				return usageError{fmt.Errorf("--diff %q: want auto, checkout or composefs", diff)}
			}
			s, err := openStore()
			if err != nil {
				return err
			}
			ls, err := layerstore.New(s, &pullResolver{rf: &rf, s: s}, layerstore.Options{State: state, Diff: layerstore.DiffMode(diff), Link: mode, Log: slog.Default()})
			if err != nil {
				return err
			}
			if err := ls.DetachStalePending(); err != nil {
				slog.Warn("stale pending layer mounts left", "err", err)
			}
			released := func() {}
			if lazyPulls {
				if released, err = serveLazy(cmd, &rf, s, ls, state, lazyMode, lazyHold); err != nil {
					return err
				}
			}
			err = layerstore.Serve(cmd.Context(), args[0], ls, timeout)
			released() // the pending mounts of completed pulls are detached before the process ends
			return err
		},
	}
	rf.register(serveCmd)
	serveCmd.Flags().StringVar(&state, "state", "/var/lib/kura/layer-store",
		"directory for the layer directories and fetched blobs (on the store's file system for --link hardlink)")
	serveCmd.Flags().StringVar(&diff, "diff", string(layerstore.DiffAuto),
		"what a layer's diff is: composefs (a per-layer composefs mount over the store's objects; Linux 6.7 or later), checkout (a per-layer checkout, see --link) or auto (composefs where the kernel allows)")
	serveCmd.Flags().StringVar(&link, "link", string(checkout.LinkHardlink), "how layer directories get file contents: hardlink, reflink, copy or auto")
	serveCmd.Flags().DurationVar(&timeout, "lookup-timeout", layerstore.DefaultLookupTimeout,
		"longest a lookup (a pull) or a blob fetch may take before podman is told the layer is not here")
	serveCmd.Flags().BoolVar(&lazyPulls, "lazy", false,
		"answer a lookup as soon as a lazy pull of the image can be mounted: files are fetched on first access and in the background by this process (needs --diff composefs; see docs/layerstore.md)")
	serveCmd.Flags().StringVar(&lazyMode, "lazy-mode", string(pull.LazyAuto),
		"with --lazy: how first reads are answered: fanotify (pre-content events, Linux 6.14+), fuse (a FUSE file system over the placeholders) or auto (fanotify where the kernel grants it)")
	serveCmd.Flags().DurationVar(&lazyHold, "lazy-background-after", 0,
		"with --lazy: fetch only what containers read for this long after each lazy pull begins, then the rest (0: at once)")
	lsCmd.AddCommand(serveCmd)
	rootCmd.AddCommand(lsCmd)
}

// pendingReleaseGrace is how long a pending layer's mount stays once its pull is complete. A
// resolution of diff answered just before the completion (the readlink of containers/storage's
// stat of diff in LookupAdditionalLayer, or of an overlay mount) is followed by the kernel's walk
// of the answer, in the same system call but after the server has replied: detached and its
// directory removed at once, the mount would be gone for that walk, and podman, its stat failing,
// pulls the layer itself. Every resolution made after the completion points at the complete
// layer's mount, so the grace only covers walks already under way: their scheduling delay.
const pendingReleaseGrace = 10 * time.Second

// serveLazy makes ls's lookups lazy (kura layer-store serve --lazy) and resumes the pending
// pulls an earlier server began. Pulls are recorded under the name kura pull gives them: as
// without --lazy, the image stays in the store under its name once complete. released waits
// for the pending mounts of completed pulls to be detached (at once when the server stops).
func serveLazy(cmd *cobra.Command, rf *registryFlags, s *store.Store, ls *layerstore.Layers, state, modeName string, hold time.Duration) (released func(), err error) {
	mode, err := pull.ParseLazyMode(modeName)
	if err != nil {
		return nil, usageError{err}
	}
	lz := newLazyLayers(cmd.Context(), rf, s, ls, lazyConfig{hold: hold, mode: mode, refs: filepath.Join(state, "lazy-refs"), named: true})
	r := &pendingReleases{ls: ls, grace: pendingReleaseGrace}
	lz.completed = func(ctx context.Context, layers []digest.Digest) int {
		r.release(ctx, layers)
		return 0
	}
	if err := ls.SetLazy(lz); err != nil {
		return nil, usageError{err}
	}
	lz.resumeOrphans(cmd.Context())
	return r.wait, nil
}

// pendingReleases detaches the pending mounts of completed pulls after a grace
// (pendingReleaseGrace), and before the server's process ends.
type pendingReleases struct {
	ls    *layerstore.Layers
	grace time.Duration

	mu      sync.Mutex
	stopped bool // wait was called: release at once
	wg      sync.WaitGroup
}

// release detaches the pending mounts of layers once the grace has passed, or at once when ctx
// (the server's) ends or the server is stopping.
func (r *pendingReleases) release(ctx context.Context, layers []digest.Digest) {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.ls.ReleasePending(layers)
		return
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		t := time.NewTimer(r.grace)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		r.ls.ReleasePending(layers)
	}()
}

// wait releases at once what is left and returns once every release is done.
func (r *pendingReleases) wait() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
	r.wg.Wait()
}

// pullResolver is the layer store's way to an image: kura pull's sources (registries.conf's
// mirrors and rewrites, podman's credentials), and the store's image of that name when no
// source answers (a registry down, a server restarted offline).
//
// With noRef (the containerd snapshotter) an image is stored without a name: the layer store's
// mounts keep its layers (their uses), and gc frees them once containerd has removed the
// snapshots. The tar-split prediction then comes from the last image pulled of the same
// repository by this process (last), as refs would give it.
type pullResolver struct {
	rf    *registryFlags
	s     *store.Store
	noRef bool

	mu   sync.Mutex
	last map[string][]digest.Digest // repository: layers of the last image pulled
}

// pullOptions are the options of a pull of ref (whose repository is repo); entries, if not nil,
// is handed each layer's entries as the pull parses them (layerstore.EntriesResolver).
func (p *pullResolver) pullOptions(name, repo string, entries pull.LayerEntriesFunc) []pull.Option {
	opts := []pull.Option{pull.WithLogger(slog.Default())}
	if entries != nil {
		opts = append(opts, pull.WithLayerEntries(entries))
	}
	if name != "" {
		opts = append(opts, pull.WithName(name))
	}
	if p.noRef {
		p.mu.Lock()
		prev := p.last[repo]
		p.mu.Unlock()
		opts = append(opts, pull.WithoutRef(), pull.WithPredecessors(prev))
	}
	return opts
}

// pulledLayers remembers img's layers as the predecessors of the next pull of repo.
func (p *pullResolver) pulledLayers(repo string, img layerstore.Pulled) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		p.last = map[string][]digest.Digest{}
	}
	p.last[repo] = img.Image.Layers
}

// The layer store builds composefs images from this resolver's pulls' entries.
var _ layerstore.EntriesResolver = (*pullResolver)(nil)

func (p *pullResolver) Resolve(ctx context.Context, ref string) (layerstore.Pulled, error) {
	return p.ResolveWithEntries(ctx, ref, nil)
}

// ResolveWithEntries is Resolve, its pull handing each layer's entries to entries as it parses
// them: the layer store builds their composefs images from them.
func (p *pullResolver) ResolveWithEntries(ctx context.Context, ref string, entries pull.LayerEntriesFunc) (layerstore.Pulled, error) {
	r, err := imageref.Parse(ref)
	if err != nil {
		return layerstore.Pulled{}, refError(err)
	}
	if r.Transport != imageref.Docker { // containers/storage looks up registry images only
		return layerstore.Pulled{}, fmt.Errorf("%s is not a registry reference: %w", ref, errdefs.ErrInvalid)
	}
	chosen, err := p.rf.pullSource(ctx, ref)
	if err == nil {
		var rep *pull.Report
		repo := r.Repository().String()
		if rep, err = pull.Pull(ctx, p.s, chosen.src, p.pullOptions(chosen.name, repo, entries)...); err == nil {
			slog.Info("pulled for the layer store", "ref", ref, "image", rep.Image, "bytesReceived", rep.BytesReceived)
			img, err := p.pulled(ctx, rep.Image, chosen.src)
			if err == nil {
				p.pulledLayers(repo, img)
			}
			return img, err
		}
	}
	img, serr := p.s.ResolveImage(ctx, storedName(r))
	if serr != nil {
		return layerstore.Pulled{}, errors.Join(err, serr)
	}
	slog.Warn("pull failed; serving the stored image", "ref", ref, "image", img.ID, "err", err)
	return p.pulled(ctx, img.ID, nil)
}

func (p *pullResolver) pulled(ctx context.Context, id digest.Digest, src source.Source) (layerstore.Pulled, error) {
	img, err := p.s.Image(ctx, id)
	if err != nil {
		return layerstore.Pulled{}, err
	}
	b, err := p.s.ImageManifest(ctx, id)
	if err != nil {
		return layerstore.Pulled{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return layerstore.Pulled{}, fmt.Errorf("manifest of %s: %w", id, err)
	}
	return layerstore.Pulled{Image: img, Manifest: m, Source: src}, nil
}
