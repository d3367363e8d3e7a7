package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/archive"
	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarimage"
)

// Commands that work on the local store (images is in images.go): import, rmi, checkout, df, gc, fsck.
func init() {
	importCmd := &cobra.Command{
		Use:   "import oci:DIR[:TAG] | docker-archive:PATH[:REF] | oci-archive:PATH[:REF] | dir:PATH [NAME] | import FILE.tar NAME",
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

	var force bool
	rmiCmd := &cobra.Command{
		Use:   "rmi NAME|ID...",
		Short: "Remove image names (and images left without a name); gc frees the space",
		Long: `Remove image names: a NAME removes that name, an ID every name of the image. An image left
without a name is dropped at once when no other kura process holds the store, else it shows as <none>
until kura gc. Removing the last name of an image that a mount or checkout uses (kura ps) fails
unless --force; with --force the names go and the content stays until the last use ends.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runRmi(cmd, args, force) },
	}
	rmiCmd.Flags().BoolVarP(&force, "force", "f", false, "remove the names of an image in use (its content stays until the use ends)")

	var link string
	var skipDevices, release bool
	checkoutCmd := &cobra.Command{
		Use:   "checkout IMAGE DIR | checkout --release DIR",
		Short: "Materialise an image's root filesystem in DIR",
		Long: `Materialise an image's root filesystem in DIR (empty or absent). The store records the checkout
(kura ps) so that rmi refuses and gc keeps the image while DIR exists; removing DIR ends the use,
and --release DIR ends it while keeping the tree.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if release {
				if len(args) != 1 {
					return usageError{fmt.Errorf("checkout --release takes only DIR")}
				}
				return runRelease(cmd, args[0])
			}
			if len(args) != 2 {
				return usageError{fmt.Errorf("checkout needs IMAGE and DIR")}
			}
			return runCheckout(cmd, args[0], args[1], link, skipDevices)
		},
	}
	checkoutCmd.Flags().BoolVar(&release, "release", false, "forget the checkout in DIR (the tree stays; gc may then free the image)")
	checkoutCmd.Flags().StringVar(&link, "link", "auto", "how files get their content: auto|hardlink|reflink|copy "+
		"(hardlink: files share inodes with the store's copies and other hardlink checkouts: for read-only use, "+
		"e.g. as an overlay lower directory; a copy written through a checkout is replaced before the next checkout links it)")
	checkoutCmd.Flags().BoolVar(&skipDevices, "skip-devices", false, "leave out device nodes where mknod is not permitted")

	var dfVerbose bool
	dfCmd := &cobra.Command{
		Use:   "df [-v]",
		Short: "Show store usage: a summary; -v adds metadata, logical sizes, dedup and per-image rows",
		Long: `Show a summary of the store: its image count and its objects (count, bytes, allocated blocks),
read from the store's maintained totals, so its cost does not grow with the images (as podman
system df summarises). -v adds the metadata bytes, each image with its logical and unique bytes
(the objects no other image uses), the logical total and the dedup ratio: it reads every image
and layer record and every layer's object list.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error { return runDf(cmd, dfVerbose) },
	}
	dfCmd.Flags().BoolVarP(&dfVerbose, "verbose", "v", false, "also show metadata, logical sizes, dedup ratio and each image with its unique bytes")

	gcCmd := &cobra.Command{
		Use:   "gc",
		Short: "Remove everything no image name needs (waits for running imports)",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runGC(cmd) },
	}

	fsckCmd := newFsckCmd() // fsck.go

	psCmd := &cobra.Command{
		Use:   "ps",
		Short: "List the mounts and checkouts that use images (gc keeps their images)",
		Args:  exactArgs(0),
		RunE:  func(cmd *cobra.Command, _ []string) error { return runPs(cmd) },
	}

	var input string
	loadCmd := &cobra.Command{
		Use:   "load [-i FILE]",
		Short: "Load the images of a docker-archive or oci-archive (as podman load; stdin without -i)",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, args []string) error { return runLoad(cmd, input) },
	}
	loadCmd.Flags().StringVarP(&input, "input", "i", "", "read the archive from FILE (default: stdin)")

	rootCmd.AddCommand(importCmd, loadCmd, rmiCmd, checkoutCmd, dfCmd, gcCmd, fsckCmd, psCmd)
}

func openStore() (*store.Store, error) {
	// fs-verity digests are recorded at import so composefs can reference objects by them.
	return store.Open(global.root, store.WithVerity())
}

func runImport(cmd *cobra.Command, src, name string) error {
	src, done, err := openArchiveArg(src)
	if err != nil {
		return err
	}
	defer done()
	if !strings.HasPrefix(src, "oci:") {
		return runImportTar(cmd, src, name)
	}
	ref, err := imageref.Parse(src)
	if err != nil {
		return refError(err)
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
		return printJSON(cmd.OutOrStdout(), importJSON{Name: res.Name, ID: res.Image.ID, NewLayers: res.NewLayers})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s (%d new layers)\n", res.Name, res.Image.ID, res.NewLayers)
	return nil
}

// runImportTar makes a single-layer image from a tar (plain, gzip or zstd) or "-" for stdin.
func runImportTar(cmd *cobra.Command, file, name string) error {
	if name == "" {
		return usageError{fmt.Errorf("importing a tar needs a NAME for the image")}
	}
	in, done, err := openInput(cmd, file)
	if err != nil {
		return err
	}
	defer done()
	s, err := openStore()
	if err != nil {
		return err
	}
	img, err := tarimage.Import(cmd.Context(), s, in, name, tarimage.Options{Comment: "imported from " + filepath.Base(file)})
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), importTarJSON{Name: name, ID: img.ID})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, img.ID)
	return nil
}

// openInput opens file for reading, or standard input for "" or "-"; done closes it.
func openInput(cmd *cobra.Command, file string) (io.Reader, func(), error) {
	if file == "" || file == "-" {
		return cmd.InOrStdin(), func() {}, nil
	}
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%s: no such file: %w", file, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, nil, err
	}
	return f, func() { f.Close() }, nil
}

// runLoad loads every image of an archive under its names, verified blob by blob.
func runLoad(cmd *cobra.Command, file string) error {
	in, done, err := openInput(cmd, file)
	if err != nil {
		return err
	}
	defer done()
	s, err := openStore()
	if err != nil {
		return err
	}
	res, err := archive.Load(cmd.Context(), s, in, "")
	if err != nil {
		return err
	}
	out := make([]importJSON, 0, len(res))
	for _, r := range res {
		out = append(out, importJSON{Name: r.Name, ID: r.Image.ID, NewLayers: r.NewLayers})
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), out)
	}
	for _, r := range out {
		fmt.Fprintf(cmd.OutOrStdout(), "Loaded image: %s %s (%d new layers)\n", r.Name, r.ID, r.NewLayers)
	}
	return nil
}

func runRmi(cmd *cobra.Command, args []string, force bool) error {
	ctx := cmd.Context()
	s, err := openStore()
	if err != nil {
		return err
	}
	var errs []error
	results := []rmiJSON{}
	for _, a := range args {
		r, err := s.RemoveImage(ctx, a, force)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		results = append(results, rmiOutput(r))
		if global.json {
			continue
		}
		out := cmd.OutOrStdout()
		for _, n := range r.Untagged {
			fmt.Fprintf(out, "untagged %s\n", n)
		}
		switch {
		case r.Deleted:
			fmt.Fprintf(out, "deleted %s\n", r.Image)
		case len(r.InUse) > 0:
			fmt.Fprintf(out, "kept %s for %d mount(s) or checkout(s) in use; gc frees it after them\n", r.Image, len(r.InUse))
		}
	}
	if global.json {
		// What was removed is printed even when another argument failed.
		if err := printJSON(cmd.OutOrStdout(), results); err != nil {
			errs = append(errs, err)
		}
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
		return printJSON(cmd.OutOrStdout(), checkoutOutput(st))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: %d files (%d reflinked, %d copied, %d hardlinked), %d dirs, %d symlinks\n",
		dir, st.Files, st.Reflinked, st.Copied, st.Linked, st.Dirs, st.Symlinks)
	return nil
}

func runRelease(cmd *cobra.Command, dir string) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	if err := s.ReleaseCheckout(cmd.Context(), dir); err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), pathJSON{Path: dir})
	}
	fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", dir)
	return nil
}

// runPs lists live uses; listing drops the records of uses that are gone.
func runPs(cmd *cobra.Command) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	uses, err := s.Uses(cmd.Context())
	if err != nil {
		return err
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].Target < uses[j].Target })
	names, _ := s.NamesByImage(cmd.Context()) // without names, uses are still listed
	if global.json {
		rows := []psJSON{}
		for _, u := range uses {
			n := orEmpty(names[u.Image])
			rows = append(rows, psJSON{Kind: u.Kind, Image: u.Image, Names: n, Target: u.Target, Created: u.Created, PID: u.PID, MountID: u.MountID})
		}
		return printJSON(cmd.OutOrStdout(), rows)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tIMAGE\tID\tTARGET\tCREATED")
	for _, u := range uses {
		name := "<none>"
		if n := names[u.Image]; len(n) > 0 {
			name = strings.Join(n, ",")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Kind, name, u.Image.Encoded()[:12], u.Target, u.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func runDf(cmd *cobra.Command, verbose bool) error {
	s, err := openStore()
	if err != nil {
		return err
	}
	if !verbose {
		return runDfSummary(cmd, s)
	}
	u, err := s.Usage(cmd.Context(), store.WithUniqueBytes())
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), dfOutput(u, verbose))
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

// runDfSummary is the default df: the figures whose cost does not grow with the images (see
// store.Summary), as podman system df summarises; the rest is behind -v.
func runDfSummary(cmd *cobra.Command, s *store.Store) error {
	sum, err := s.Summary(cmd.Context())
	if err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), dfSummaryOutput(sum))
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "images:   %d\n", sum.Images)
	fmt.Fprintf(out, "objects:  %d, %s (%s allocated; holes take none)\n", sum.Objects, progress.HumanBytes(sum.ObjectBytes), progress.HumanBytes(sum.ObjectAllocated))
	fmt.Fprintln(out, "(metadata, logical sizes, dedup ratio and per-image rows: kura df -v)")
	return nil
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
		return printJSON(cmd.OutOrStdout(), gcOutput(r))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "removed %d images, %d layers, %d objects, %d temp files, %d variants, %d composefs images; freed %s\n",
		r.Images, r.Layers, r.Objects, r.TempFiles, r.Variants, r.Composefs, progress.HumanBytes(r.BytesFreed))
	return nil
}
