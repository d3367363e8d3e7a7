package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

func newFsckCmd() *cobra.Command {
	var repair, deep bool
	var rf registryFlags
	cmd := &cobra.Command{
		Use:   "fsck",
		Short: "Re-hash every object and check every reference (--deep: every hardlink-checkout file too)",
		Long: `Re-hash every object against its name and check every layer, image and ref, and the store's
copies of hardlink-checkout files (their size; with --deep their content, which must hash to the
object they were made from: a write through a hardlink checkout changes them).

--repair removes what is damaged and can be made again: objects whose content changed, changed
checkout copies, stray and temp files. It never removes an image, nor a name of an image that
exists: an image whose objects are missing is re-fetched from the registry it was pulled from
(recorded at pull time; --creds, --authfile, --tls-verify apply), and otherwise reported with
what restores it. A name whose image does not exist at all is removed.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error { return runFsck(cmd, repair, deep, &rf) },
	}
	cmd.Flags().BoolVar(&repair, "repair", false, "remove damaged objects, changed checkout copies and temp files; re-fetch what is missing")
	cmd.Flags().BoolVar(&deep, "deep", false, "also re-hash every hardlink-checkout file in the store")
	cmd.Flags().StringVar(&rf.creds, "creds", "", "credentials USER[:PASSWORD] for re-fetching from the registry")
	cmd.Flags().StringVar(&rf.authfile, "authfile", "", "path of an auth file (default: podman's lookup order)")
	cmd.Flags().BoolVar(&rf.tlsVerify, "tls-verify", true, "require HTTPS and verify certificates when re-fetching")
	cmd.Flags().StringVar(&rf.certDir, "cert-dir", "", "CA and client certificates for re-fetching (default: certs.d lookup)")
	rf.tlsSet = func() bool { return cmd.Flags().Changed("tls-verify") }
	return cmd
}

func runFsck(cmd *cobra.Command, repair, deep bool, rf *registryFlags) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	opts := store.FsckOptions{Repair: repair, Deep: deep, Refetch: registryRefetcher(rf)}
	r, err := s.FsckWith(cmd.Context(), opts)
	if err != nil {
		return err
	}
	if global.json {
		if err := printJSON(cmd.OutOrStdout(), fsckOutput(r)); err != nil {
			return err
		}
	} else {
		printFsck(cmd, r, repair)
	}
	switch {
	case repair && len(r.Unrepaired) > 0:
		return fmt.Errorf("fsck: %d problems left unrepaired: %w", len(r.Unrepaired), errdefs.ErrDigestMismatch)
	case !repair && !r.Clean():
		return fmt.Errorf("fsck: %d problems: %w", len(r.Problems), errdefs.ErrDigestMismatch)
	}
	return nil
}

func printFsck(cmd *cobra.Command, r store.FsckReport, repair bool) {
	out := cmd.OutOrStdout()
	for _, p := range r.Problems {
		fmt.Fprintln(out, p)
	}
	for _, p := range r.Unrepaired {
		fmt.Fprintln(out, "not repaired:", p)
	}
	fmt.Fprintf(out, "checked %d objects, %d layers, %d images, %d refs, %d checkout copies: %d problems",
		r.Objects, r.Layers, r.Images, r.Refs, r.Variants, len(r.Problems))
	if repair {
		fmt.Fprintf(out, ", %d repaired, %d temp files removed\n", r.Repaired, r.TempFiles)
	} else {
		fmt.Fprintf(out, ", %d temp files (in use or left by a crash; --repair removes them)\n", r.TempFiles)
	}
	if r.LegacyVariants > 0 || r.Unreadable > 0 {
		fmt.Fprintf(out, "not checked: %d checkout copies in the older layout, %d unreadable\n", r.LegacyVariants, r.Unreadable)
	}
	if r.TotalsNote != "" {
		fmt.Fprintln(out, "note:", r.TotalsNote)
	}
}

// registryRefetcher restores a layer's missing objects by fetching the layer's blob whole from
// the repository the image was pulled from (Image.Source) and importing it again: the blob is
// verified against its digest and the tar against the DiffID, and only missing objects are
// written. A layer is small next to a pull's bookkeeping, and a damaged object is rare.
func registryRefetcher(rf *registryFlags) store.Refetcher {
	return func(ctx context.Context, s *store.Store, img store.Image, diffID digest.Digest) error {
		ref, err := imageref.Parse(img.Source)
		if err != nil || ref.Transport != imageref.Docker {
			return fmt.Errorf("source %q is not a registry reference: %w", img.Source, errdefs.ErrUnsupported)
		}
		desc, err := layerDescriptor(ctx, &s.Metadata, img, diffID)
		if err != nil {
			return err
		}
		if err := rf.checkBlocked(ref); err != nil {
			return err
		}
		client, err := rf.client()
		if err != nil {
			return err
		}
		blob, err := client.FetchBlob(ctx, ref.Repository(), desc)
		if err != nil {
			return err
		}
		defer blob.Close()
		if _, err := layer.Import(ctx, s, blob, layer.Options{DiffID: diffID, Refill: true}); err != nil {
			return fmt.Errorf("layer %s from %s: %w", diffID, img.Source, err)
		}
		// The rest of the blob (a zstd:chunked TOC) is read for the blob digest check at EOF.
		if _, err := io.Copy(io.Discard, blob); err != nil {
			return fmt.Errorf("layer %s from %s: %w", diffID, img.Source, err)
		}
		return nil
	}
}

// layerDescriptor finds the manifest's descriptor of the layer with DiffID diffID: it reads
// only the metadata role.
func layerDescriptor(ctx context.Context, s *store.Metadata, img store.Image, diffID digest.Digest) (ocispec.Descriptor, error) {
	b, err := s.ImageManifest(ctx, img.ID)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil || len(m.Layers) != len(img.Layers) {
		return ocispec.Descriptor{}, fmt.Errorf("manifest of image %s does not match its record: %w", img.ID, errdefs.ErrInvalid)
	}
	for i, l := range img.Layers {
		if l == diffID {
			return m.Layers[i], nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("image %s has no layer %s: %w", img.ID, diffID, errdefs.ErrNotFound)
}
