package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/composefs/mount"
)

func init() {
	var verity, upper, work string
	mountCmd := &cobra.Command{
		Use:   "mount IMAGE TARGET",
		Short: "Mount an image read-only (or with --upper, writable) with composefs",
		Long: `Mount an image with composefs: an EROFS image holds the merged metadata of all layers, and
overlayfs reads file contents from the store's objects as a data-only layer, so mounts of many
images share one copy of each file on disk and in the page cache. The EROFS image is built once
per image and cached in the store. Needs root; without it, use kura checkout.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (upper == "") != (work == "") {
				return usageError{fmt.Errorf("--upper and --work go together")}
			}
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
			img, err := s.ResolveImage(ctx, args[0])
			if err != nil {
				return err
			}
			cfs, done, err := composefsImage(ctx, s, img)
			if err != nil {
				return err
			}
			defer done()
			opts := []mount.Option{mount.WithVerity(mount.Verity(verity))}
			if upper != "" {
				opts = append(opts, mount.WithUpper(upper, work))
			}
			plan, err := mount.NewPlan(cfs, []string{filepath.Join(s.Root(), "objects")}, args[1], opts...)
			if err != nil {
				return err
			}
			if err := mount.Mount(ctx, plan); err != nil {
				return err
			}
			if global.json {
				return printJSON(cmd.OutOrStdout(), plan)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s mounted at %s\n", img.ID, args[1])
			return nil
		},
	}
	mountCmd.Flags().StringVar(&verity, "verity", "off", "fs-verity policy for objects: require, on or off")
	mountCmd.Flags().StringVar(&upper, "upper", "", "upper directory for a writable mount (with --work)")
	mountCmd.Flags().StringVar(&work, "work", "", "overlayfs work directory on the same filesystem as --upper")

	umountCmd := &cobra.Command{
		Use:   "umount TARGET",
		Short: "Unmount an image mounted with kura mount",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return mount.Unmount(args[0])
		},
	}
	rootCmd.AddCommand(mountCmd, umountCmd)
}
