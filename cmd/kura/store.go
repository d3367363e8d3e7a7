package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarimage"
)

// Commands that work on the local store: import, images, rmi, checkout, df, gc, fsck.
func init() {
	importCmd := &cobra.Command{
		Use:   "import oci:DIR[:TAG] [NAME] | import FILE.tar NAME",
		Short: "Import an image from an OCI image layout, or a root filesystem tar (as podman import)",
		Args:  rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 2 {
				name = args[1]
			}
			return runImport(cmd, args[0], name)
		},
	}

	imagesCmd := &cobra.Command{
		Use:   "images",
		Short: "List the images in the store",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runImages(cmd) },
	}

	rmiCmd := &cobra.Command{
		Use:   "rmi NAME|ID...",
		Short: "Remove image names (and images left without a name); gc frees the space",
		Args:  cobra.MinimumNArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return runRmi(cmd, args) },
	}

	var link string
	var skipDevices bool
	checkoutCmd := &cobra.Command{
		Use:   "checkout IMAGE DIR",
		Short: "Materialise an image's root filesystem in DIR",
		Args:  exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runCheckout(cmd, args[0], args[1], link, skipDevices)
		},
	}
	checkoutCmd.Flags().StringVar(&link, "link", "auto", "how files get their content: auto|hardlink|reflink|copy")
	checkoutCmd.Flags().BoolVar(&skipDevices, "skip-devices", false, "leave out device nodes where mknod is not permitted")

	dfCmd := &cobra.Command{
		Use:   "df",
		Short: "Show logical and physical store usage and the deduplication ratio",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runDf(cmd) },
	}

	gcCmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove everything no image name needs (waits for running imports)",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runGC(cmd) },
	}

	var repair bool
	fsckCmd := &cobra.Command{
		Use:   "fsck",
		Short: "Re-hash every object and check every reference",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runFsck(cmd, repair) },
	}
	fsckCmd.Flags().BoolVar(&repair, "repair", false, "remove damaged objects, dangling records and temp files")

	rootCmd.AddCommand(importCmd, imagesCmd, rmiCmd, checkoutCmd, dfCmd, gcCmd, fsckCmd)
}

func openStore() (*store.Store, error) {
	// fs-verity digests are recorded at import so composefs can reference objects by them.
	return store.Open(global.root, store.WithVerity())
}

func runImport(cmd *cobra.Command, src, name string) error {
	if !strings.HasPrefix(src, "oci:") {
		return runImportTar(cmd, src, name)
	}
	ref, err := imageref.Parse(src)
	if err != nil {
		return usageError{err}
	}
	if ref.Transport != imageref.OCILayout {
		return usageError{fmt.Errorf("import reads oci:DIR[:TAG] layouts; use pull for %s", src)}
	}
	s, err := openStore()
	if err != nil {
		return err
	}
	res, err := ociimport.Import(cmd.Context(), s, ref.Dir, ref.Tag, name)
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), map[string]any{"name": res.Name, "id": res.Image.ID, "newLayers": res.NewLayers})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d new layers)\n", res.Name, res.Image.ID, res.NewLayers)
	return nil
}

// runImportTar makes a single-layer image from a tar (plain, gzip or zstd) or "-" for stdin.
func runImportTar(cmd *cobra.Command, file, name string) error {
	if name == "" {
		return usageError{fmt.Errorf("importing a tar needs a NAME for the image")}
	}
	in := cmd.InOrStdin()
	if file != "-" {
		f, err := os.Open(file)
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: no such file: %w", file, errdefs.ErrNotFound)
		}
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	s, err := openStore()
	if err != nil {
		return err
	}
	img, err := tarimage.Import(cmd.Context(), s, in, name, tarimage.Options{Comment: "imported from " + filepath.Base(file)})
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), map[string]any{"name": name, "id": img.ID})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, img.ID)
	return nil
}

type imageRow struct {
	Names   []string      `json:"names"`
	ID      digest.Digest `json:"id"`
	Created time.Time     `json:"created,omitzero"`
	Logical int64         `json:"logicalBytes"`
	Unique  int64         `json:"uniqueBytes"`
	Layers  int           `json:"layers"`
}

func runImages(cmd *cobra.Command) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	u, err := s.Usage(cmd.Context())
	if err != nil {
		return err
	}
	rows := make([]imageRow, 0, len(u.Images))
	for _, iu := range u.Images {
		rows = append(rows, imageRow{Names: iu.Names, ID: iu.Image.ID, Created: iu.Image.Created, Logical: iu.Logical, Unique: iu.Unique, Layers: len(iu.Image.Layers)})
	}
	sort.Slice(rows, func(i, j int) bool { return strings.Join(rows[i].Names, ",") < strings.Join(rows[j].Names, ",") })
	if global.json {
		return printJSON(cmd.OutOrStdout(), rows)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tCREATED\tSIZE\tUNIQUE")
	for _, r := range rows {
		names := r.Names
		if len(names) == 0 {
			names = []string{"<none>"}
		}
		created := "-"
		if !r.Created.IsZero() {
			created = r.Created.Format(time.DateTime)
		}
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n, r.ID.Encoded()[:12], created, progress.HumanBytes(r.Logical), progress.HumanBytes(r.Unique))
		}
	}
	return tw.Flush()
}

func runRmi(cmd *cobra.Command, args []string) error {
	ctx := cmd.Context()
	s, err := openStore()
	if err != nil {
		return err
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	refs, err := s.Refs(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range args {
		img, err := s.ResolveImage(ctx, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		// A name removes that name; an ID removes every name of the image.
		if _, isRef := refs[a]; isRef {
			if err := s.DeleteRef(ctx, a); err != nil {
				errs = append(errs, err)
			}
			delete(refs, a)
		} else {
			for n, id := range refs {
				if id == img.ID {
					if err := s.DeleteRef(ctx, n); err != nil {
						errs = append(errs, err)
					}
					delete(refs, n)
				}
			}
		}
		still := false
		for _, id := range refs {
			still = still || id == img.ID
		}
		if !still {
			if err := s.DeleteImage(ctx, img.ID); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
				errs = append(errs, err)
			}
		}
		fmt.Fprintf(cmd.OutOrStdout(), "untagged %s\n", a)
	}
	return errors.Join(errs...)
}

func runCheckout(cmd *cobra.Command, image, dir, link string, skipDevices bool) error {
	mode, err := checkout.ParseLinkMode(link)
	if err != nil {
		return usageError{err}
	}
	s, err := openStore()
	if err != nil {
		return err
	}
	img, err := s.ResolveImage(cmd.Context(), image)
	if err != nil {
		return err
	}
	st, err := checkout.Checkout(cmd.Context(), s, img, dir, checkout.Options{Link: mode, SkipDevices: skipDevices})
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), st)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files (%d reflinked, %d copied, %d hardlinked), %d dirs, %d symlinks\n",
		dir, st.Files, st.Reflinked, st.Copied, st.Linked, st.Dirs, st.Symlinks)
	return nil
}

func runDf(cmd *cobra.Command) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	u, err := s.Usage(cmd.Context())
	if err != nil {
		return err
	}
	if global.json {
		imgs := []imageRow{}
		for _, iu := range u.Images {
			imgs = append(imgs, imageRow{Names: iu.Names, ID: iu.Image.ID, Created: iu.Image.Created, Logical: iu.Logical, Unique: iu.Unique, Layers: len(iu.Image.Layers)})
		}
		return printJSON(cmd.OutOrStdout(), map[string]any{
			"logicalBytes": u.Logical, "physicalBytes": u.Physical, "objectBytes": u.ObjectBytes,
			"metadataBytes": u.MetadataBytes, "objects": u.Objects, "allocatedBytes": u.Allocated, "objectAllocatedBytes": u.ObjectAllocated, "dedupRatio": u.DedupRatio(), "images": imgs,
		})
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "images:   %d, logical %s\n", len(u.Images), progress.HumanBytes(u.Logical))
	fmt.Fprintf(out, "store:    %s physical (%d objects %s + metadata %s)\n", progress.HumanBytes(u.Physical), u.Objects, progress.HumanBytes(u.ObjectBytes), progress.HumanBytes(u.MetadataBytes))
	fmt.Fprintf(out, "on disk:  %s allocated (objects %s; holes take none)\n", progress.HumanBytes(u.Allocated), progress.HumanBytes(u.ObjectAllocated))
	fmt.Fprintf(out, "dedup:    %.2fx\n", u.DedupRatio())
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tLOGICAL\tUNIQUE")
	for _, iu := range u.Images {
		name := "<none>"
		if len(iu.Names) > 0 {
			name = strings.Join(iu.Names, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, iu.Image.ID.Encoded()[:12], progress.HumanBytes(iu.Logical), progress.HumanBytes(iu.Unique))
	}
	return tw.Flush()
}

func runGC(cmd *cobra.Command) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	r, err := s.GC(cmd.Context())
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), r)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed %d images, %d layers, %d objects, %d temp files, %d variants, %d composefs images; freed %s\n",
		r.Images, r.Layers, r.Objects, r.TempFiles, r.Variants, r.Composefs, progress.HumanBytes(r.BytesFreed))
	return nil
}

func runFsck(cmd *cobra.Command, repair bool) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	r, err := s.Fsck(cmd.Context(), repair)
	if err != nil {
		return err
	}
	if global.json {
		if err := printJSON(cmd.OutOrStdout(), r); err != nil {
			return err
		}
	} else {
		out := cmd.OutOrStdout()
		for _, p := range r.Problems {
			fmt.Fprintln(out, p)
		}
		fmt.Fprintf(out, "checked %d objects, %d layers, %d images, %d refs: %d problems", r.Objects, r.Layers, r.Images, r.Refs, len(r.Problems))
		if repair {
			fmt.Fprintf(out, ", %d repaired, %d temp files removed\n", r.Repaired, r.TempFiles)
		} else {
			fmt.Fprintf(out, ", %d temp files (in use or left by a crash; --repair removes them)\n", r.TempFiles)
		}
	}
	if !r.Clean() && !repair {
		return fmt.Errorf("fsck: %d problems: %w", len(r.Problems), errdefs.ErrDigestMismatch)
	}
	return nil
}
