package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/lazy/lazymount"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// runLazyPull is kura pull --lazy: the pending pull is recorded (or resumed), announced once
// its placeholders are served, and served in the foreground until the image is complete (in
// FUSE mode, until the mounts made meanwhile are unmounted too).
func runLazyPull(cmd *cobra.Command, s *store.Store, src source.Source, opts []pull.Option, backgroundAfter time.Duration, modeName string) error {
	ctx := cmd.Context()
	mode, err := pull.ParseLazyMode(modeName)
	if err != nil {
		return usageError{err}
	}
	opts = append(opts, pull.WithLazyMode(mode))
	if backgroundAfter > 0 {
		hold := make(chan struct{})
		t := time.AfterFunc(backgroundAfter, func() { close(hold) })
		defer t.Stop()
		opts = append(opts, pull.WithBackgroundHeld(hold))
	}
	p, err := pull.PullLazy(ctx, s, src, opts...)
	if err != nil {
		return err
	}
	ready := func() {
		fmt.Fprintf(cmd.OutOrStdout(), "%s mountable as %s (kura mount); serving its files until complete\n", p.ID, p.Name)
	}
	complete := func(served pull.LazyMode) {
		fmt.Fprintf(cmd.OutOrStdout(), "%s complete\n", p.ID)
		if served == pull.LazyFUSE {
			fmt.Fprintf(cmd.OutOrStdout(), "serving the mounts made over FUSE until they are unmounted\n")
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
