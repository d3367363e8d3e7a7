package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/lazy/lazymount"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// lazyFlags are kura pull's --lazy-* flags.
type lazyFlags struct {
	mode            string
	mount           string // --mount DIR: serve the merged tree there
	backgroundAfter time.Duration
}

// options checks the flags and turns them into pull options. Without root only --mount can
// serve a lazy pull (composefs and fanotify pre-content events need CAP_SYS_ADMIN): refused
// before anything is fetched or recorded.
func (lf lazyFlags) options() ([]pull.Option, error) {
	mode, err := pull.ParseLazyMode(lf.mode)
	if err != nil {
		return nil, usageError{err}
	}
	if lf.mount == "" {
		if os.Geteuid() != 0 {
			return nil, fmt.Errorf("a lazy pull without root needs --mount DIR (the image served at DIR with FUSE): kura mount and fanotify need root: %w", errdefs.ErrPermission)
		}
		return []pull.Option{pull.WithLazyMode(mode)}, nil
	}
	if mode != pull.LazyAuto {
		return nil, usageError{fmt.Errorf("--mount serves the image's tree itself: --lazy-mode does not apply")}
	}
	dir, err := filepath.Abs(lf.mount)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil && !errors.Is(err, unix.ENOTCONN) { // ENOTCONN: a dead FUSE mount, detached first
		return nil, fmt.Errorf("--mount %s: %w", lf.mount, err)
	} else if err == nil && st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return nil, usageError{fmt.Errorf("--mount %s: not a directory", lf.mount)}
	}
	return []pull.Option{pull.WithLazyMount(dir)}, nil
}

// runLazyPull is kura pull --lazy: the pending pull is recorded (or resumed), announced once
// its placeholders are served (or its tree mounted, with --mount), and served in the foreground
// until the image is complete (in FUSE mode, until the mounts made meanwhile are unmounted too;
// with --mount, until that mount is unmounted).
func runLazyPull(cmd *cobra.Command, s *store.Store, src source.Source, opts []pull.Option, lf lazyFlags) error {
	ctx := cmd.Context()
	lopts, err := lf.options()
	if err != nil {
		return err
	}
	opts = append(opts, lopts...)
	if lf.backgroundAfter > 0 {
		hold := make(chan struct{})
		t := time.AfterFunc(lf.backgroundAfter, func() { close(hold) })
		defer t.Stop()
		opts = append(opts, pull.WithBackgroundHeld(hold))
	}
	p, err := pull.PullLazy(ctx, s, src, opts...)
	if err != nil {
		return err
	}
	out := cmd.OutOrStdout()
	ready := func() {
		if lf.mount != "" {
			fmt.Fprintf(out, "%s mountable as %s: mounted at %s; serving its files until complete\n", p.ID, p.Name, lf.mount)
			return
		}
		fmt.Fprintf(out, "%s mountable as %s (kura mount); serving its files until complete\n", p.ID, p.Name)
	}
	complete := func(served pull.LazyMode) {
		fmt.Fprintf(out, "%s complete\n", p.ID)
		switch served {
		case pull.LazyFUSE:
			fmt.Fprintf(out, "serving the mounts made over FUSE until they are unmounted\n")
		case pull.LazyTree:
			fmt.Fprintf(out, "serving %s until it is unmounted (kura umount %s)\n", lf.mount, lf.mount)
		}
	}
	return pull.ServeLazy(ctx, s, src, p, ready, append(opts, pull.WithLazyComplete(complete))...)
}

// mountPending mounts a pending lazy pull. No use is recorded: the store holds no image record
// for it yet (see docs/design.md, Lazy pulls).
func mountPending(cmd *cobra.Command, s *store.Store, p *lazy.Pending, target string, opts []mount.Option) error {
	plan, done, err := lazymount.MountPlan(cmd.Context(), s, p, target, opts...)
	if err != nil {
		return err
	}
	defer done()
	if err := mount.Mount(cmd.Context(), plan); err != nil {
		return err
	}
	if global.json {
		return printJSON(cmd.OutOrStdout(), mountOutput(p.ID, *plan))
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s (lazy, pending) mounted at %s\n", p.ID, target)
	return nil
}
