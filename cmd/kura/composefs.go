package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/dump"
	"github.com/kura-oci/kura/errdefs"
)

func init() {
	cfs := &cobra.Command{
		Use:   "composefs",
		Short: "Build and inspect composefs images",
	}

	var fromDump, digestStore string
	var strict, hardlinks bool
	var minVersion, maxVersion int
	build := &cobra.Command{
		Use:   "build (DIR | --from-dump FILE|-) OUT.img",
		Short: "Write a composefs image of a directory or a composefs-dump file",
		Long: `Write a composefs EROFS image, byte for byte as mkcomposefs (composefs 1.0.6 and
later) would from the same dump or directory.

From a directory, regular files of 1..64 bytes are stored inline and larger ones as
references to objects named by their fs-verity digest (xx/rest); with --digest-store the
content is copied into that object directory. Like mkcomposefs, each name of a hard-linked
file becomes a file of its own (nlink 1); --hardlinks keeps them as hard links, and the image
then differs from mkcomposefs's. From a dump (composefs-dump(5), "-" for stdin) the tree is
taken as written, hard links included.`,
		Args: rangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opts []composefs.Option
			if cmd.Flags().Changed("min-version") || cmd.Flags().Changed("max-version") {
				opts = append(opts, composefs.WithMinVersion(minVersion), composefs.WithMaxVersion(maxVersion))
			}
			var root *composefs.Node
			var out string
			switch {
			case fromDump != "":
				if len(args) != 1 {
					return usageError{fmt.Errorf("with --from-dump give only OUT.img")}
				}
				if digestStore != "" {
					return usageError{fmt.Errorf("--digest-store needs a directory source")}
				}
				out = args[0]
				in := io.Reader(cmd.InOrStdin())
				if fromDump != "-" {
					f, err := os.Open(fromDump)
					if err != nil {
						return fmt.Errorf("opening dump: %w", err)
					}
					defer f.Close()
					in = f
				}
				var err error
				if root, err = dump.Parse(in, strict); err != nil {
					return fmt.Errorf("reading dump %s: %w", fromDump, err)
				}
			default:
				if len(args) != 2 {
					return usageError{fmt.Errorf("want DIR OUT.img")}
				}
				out = args[1]
				var dopts []composefs.DirOption
				if digestStore != "" {
					dopts = append(dopts, composefs.WithDigestStore(digestStore))
				}
				if hardlinks {
					dopts = append(dopts, composefs.WithHardlinks())
				}
				var err error
				if root, err = composefs.FromDir(cmd.Context(), args[0], dopts...); err != nil {
					return fmt.Errorf("reading %s: %w", args[0], err)
				}
			}
			return writeImageFile(out, root, opts)
		},
	}
	build.Flags().StringVar(&fromDump, "from-dump", "", "read the tree from a composefs-dump file (- for stdin)")
	build.Flags().BoolVar(&strict, "strict", false, "reject sloppy dumps (missing final newline, symlink size mismatch, ...)")
	build.Flags().BoolVar(&hardlinks, "hardlinks", false, "from a directory, keep hard links (the image then differs from mkcomposefs's)")
	build.Flags().StringVar(&digestStore, "digest-store", "", "copy file contents into this object directory")
	build.Flags().IntVar(&minVersion, "min-version", 0, "lowest image format version")
	build.Flags().IntVar(&maxVersion, "max-version", composefs.MaxVersion, "highest image format version")

	dumpCmd := &cobra.Command{
		Use:   "dump IMG",
		Short: "Print a composefs image as a composefs-dump(5) file",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := composefs.ReadImageFile(args[0])
			if err != nil {
				return err
			}
			return dump.Write(cmd.OutOrStdout(), root)
		},
	}
	cfs.AddCommand(build, dumpCmd)
	rootCmd.AddCommand(cfs)
}

// writeImageFile writes the image next to out and renames it into place, so a failed build
// leaves no partial image.
func writeImageFile(out string, root *composefs.Node, opts []composefs.Option) error {
	if out == "" {
		return fmt.Errorf("empty output path: %w", errdefs.ErrInvalid)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := composefs.WriteImage(tmp, root, opts...); err != nil {
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("writing image: %w", err)
	}
	return nil
}
