package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
)

func init() {
	var verity, upper, work string
	var suid, dev bool
	mountCmd := &cobra.Command{
		Use:   "mount IMAGE TARGET",
		Short: "Mount an image read-only (or with --upper, writable) with composefs",
		Long: `Mount an image with composefs: an EROFS image holds the merged metadata of all layers, and
overlayfs reads file contents from the store's objects as a data-only layer, so mounts of many
images share one copy of each file on disk and in the page cache. The EROFS image is built once
per image and cached in the store. Needs root; without it, use kura checkout.

The mount is nosuid and nodev, as podman mounts image content; --suid and --dev turn that off.
The store records the mount (kura ps): rmi refuses and gc keeps the image until kura umount.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (upper == "") != (work == "") {
				return usageError{fmt.Errorf("--upper and --work go together")}
			}
			opts := []mount.Option{mount.WithVerity(mount.Verity(verity))}
			if upper != "" {
				opts = append(opts, mount.WithUpper(upper, work))
			}
			if suid {
				opts = append(opts, mount.WithSuid())
			}
			if dev {
				opts = append(opts, mount.WithDev())
			}
			return runMount(cmd, args[0], args[1], opts)
		},
	}
	mountCmd.Flags().StringVar(&verity, "verity", "off", "fs-verity policy for objects: require, on or off")
	mountCmd.Flags().StringVar(&upper, "upper", "", "upper directory for a writable mount (with --work)")
	mountCmd.Flags().StringVar(&work, "work", "", "overlayfs work directory on the same filesystem as --upper")
	mountCmd.Flags().BoolVar(&suid, "suid", false, "let setuid and setgid bits of the image take effect (default nosuid)")
	mountCmd.Flags().BoolVar(&dev, "dev", false, "let device nodes of the image be opened (default nodev)")

	umountCmd := &cobra.Command{
		Use:   "umount TARGET",
		Short: "Unmount an image mounted with kura mount or kura pull --lazy --mount (and only such a mount)",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := lazy.UnmountTree(args[0]); !errors.Is(err, errdefs.ErrNotFound) {
				if err == nil && global.json {
					return printJSON(cmd.OutOrStdout(), pathJSON{Path: args[0]})
				}
				return err // a tree mount records no use: nothing more to do
			}
			if err := mount.Unmount(args[0]); err != nil {
				return err
			}
			s, err := openStore()
			if err != nil {
				return err
			}
			if _, err := s.Uses(cmd.Context()); err != nil { // drops the record of the mount just gone
				return err
			}
			if global.json {
				return printJSON(cmd.OutOrStdout(), pathJSON{Path: args[0]})
			}
			return nil
		},
	}
	rootCmd.AddCommand(mountCmd, umountCmd)
}

// runMount mounts under the shared lock, with the use recorded before the mount is made (so a
// crash in between leaves a record that is found stale, never a mount gc does not know about)
// and completed with the mount's ID after.
func runMount(cmd *cobra.Command, image, target string, opts []mount.Option) (err error) {
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
	img, pending, err := resolveMountable(cmd, s, image, target, opts)
	if err != nil || pending {
		return err
	}
	cfs, done, err := composefsImage(ctx, s, img)
	if err != nil {
		return err
	}
	defer done()
	plan, err := mount.NewPlan(cfs, []string{s.ObjectsDir()}, target, opts...)
	if err != nil {
		return err
	}
	use, err := s.AddUse(ctx, store.Use{Kind: store.UseMount, Image: img.ID, Target: target, FSType: mount.FSType, Source: mount.Source})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.DropUse(use)
		}
	}()
	if err := mount.Mount(ctx, plan); err != nil {
		return err
	}
	if use.ID != "" { // a read-only store records no use: nothing can be removed from it
		if err := recordMountID(&s.Metadata, use); err != nil {
			return errors.Join(err, mount.Unmount(use.Target))
		}
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), mountOutput(img.ID, *plan))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s mounted at %s\n", img.ID, target)
	return nil
}

// mountRaceHook, if set (tests), is called at each point of resolveMountable where a lazy
// pull's completion changes the answer: "image missing" and "pending found".
var mountRaceHook func(stage string)

// resolveMountable resolves image for kura mount: the stored image, or else the pending lazy
// pull of that name, which it mounts itself (pending true). A lazy pull's completion needs only
// the shared lock a mount holds too, so it can record the image and remove the pending pull at
// any point of this: between the two looks (the image was missing, the pending pull is gone),
// or while the pending pull is mounted (its TOC or placeholder directory gone). Either is looked
// up once more, and finds the image recorded.
func resolveMountable(cmd *cobra.Command, s *store.Store, image, target string, opts []mount.Option) (store.Image, bool, error) {
	for try := 0; ; try++ {
		img, err := s.ResolveImage(cmd.Context(), image)
		if !errors.Is(err, errdefs.ErrNotFound) {
			return img, false, err
		}
		raceHook("image missing")
		p, lerr := lazy.FindByName(s, image)
		if lerr != nil {
			if try == 0 {
				continue
			}
			return img, false, err
		}
		raceHook("pending found")
		err = mountPending(cmd, s, p, target, opts)
		if err != nil && try == 0 && pendingGone(p) {
			continue
		}
		return img, true, err
	}
}

func raceHook(stage string) {
	if mountRaceHook != nil {
		mountRaceHook(stage)
	}
}

// pendingGone reports whether pending pull p was completed (or removed) since it was found.
func pendingGone(p *lazy.Pending) bool {
	_, err := os.Stat(p.Dir)
	return errors.Is(err, fs.ErrNotExist)
}

// recordMountID completes a mount's use record with the mount's ID: the metadata role only.
func recordMountID(s *store.Metadata, use store.Use) error {
	e, ok, err := mount.Find(use.Target)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("the mount at %s is not in mountinfo", use.Target)
	}
	use.MountID = e.ID
	return s.UpdateUse(use)
}
