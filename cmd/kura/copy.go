package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
)

// copyFlags are kura copy's options beyond push's, named as skopeo copy's.
type copyFlags struct {
	registryFlags
	src, dest  sideFlags
	preserve   bool
	all        bool
	allowDiff  bool
	digestFile string
	retryTimes int
	retryDelay time.Duration
}

func addCopyCommand() {
	var cf copyFlags
	var pf pushFlags
	cmd := &cobra.Command{
		Use:   "copy SRC DEST",
		Short: "Copy an image between registries and OCI layouts, recompressing only what must change",
		Long: `Copy an image from SRC to DEST (docker://HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG]) without
the store. SRC and DEST may also be docker-archive:PATH[:REF], oci-archive:PATH[:REF] or dir:PATH (skopeo's
formats; a docker-archive source also docker-archive:PATH:@N, its Nth image). A layer already in the requested format (--format, zstd:chunked by default) is copied by
digest: mounted from the source repository when both are in one registry, else streamed through
unchanged and verified. Any other layer (tar, gzip, zstd) is decompressed and compressed again,
several at once, and checked against the config's DiffIDs. When no layer changes, the manifest is
copied as is and keeps its digest. --preserve-digests refuses any change instead.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cf.retryTimes < 0 {
				return usageError{fmt.Errorf("--retry-times %d: want 0 or more", cf.retryTimes)}
			}
			opts, err := cf.options(&pf, args[1])
			if err != nil {
				return err
			}
			res, err := cf.copyRetrying(cmd.Context(), args[0], args[1], opts)
			if err != nil {
				return err
			}
			if cf.digestFile != "" {
				if err := os.WriteFile(cf.digestFile, []byte(res.image.String()), 0o644); err != nil {
					return fmt.Errorf("--digestfile: %w", err)
				}
			}
			if pf.quiet && !global.json {
				return nil
			}
			return res.print(cmd.OutOrStdout())
		},
	}
	cf.registryFlags.register(cmd)
	cf.src.register(cmd, "src", "source")
	cf.dest.register(cmd, "dest", "destination")
	pf.register(cmd)
	fl := cmd.Flags()
	fl.BoolVar(&cf.all, "all", false, "copy every image of an index (each converted) and an index naming them, not only --platform's")
	fl.BoolVar(&cf.preserve, "preserve-digests", false, "copy every blob and the manifest unchanged; fail if --format would change a layer")
	fl.BoolVar(&cf.allowDiff, "allow-diffid-mismatch", false, allowDiffIDMismatchUsage)
	fl.StringVar(&cf.digestFile, "digestfile", "", "write the digest of the destination manifest to this file")
	fl.BoolVarP(&pf.quiet, "quiet", "q", false, "no progress and no summary (--json still prints its report)")
	fl.IntVar(&cf.retryTimes, "retry-times", 0, "retry the copy this many times after a temporary error (network, 429, 5xx)")
	fl.DurationVar(&cf.retryDelay, "retry-delay", 0, "wait this long between retries (default: 1s, 2s, 4s, … as skopeo)")
	rootCmd.AddCommand(cmd)
}

// options are push's options for this copy to dest.
func (cf *copyFlags) options(pf *pushFlags, dest string) ([]push.Option, error) {
	opts, err := pf.options()
	if err != nil {
		return nil, err
	}
	if cf.allowDiff && cf.preserve {
		return nil, usageError{errors.New("--allow-diffid-mismatch writes a corrected config: it cannot --preserve-digests")}
	}
	switch {
	case cf.preserve:
		opts = append(opts, push.WithPreserveDigests())
	case cf.allowDiff:
		opts = append(opts, push.WithDiffIDMismatchAllowed(diffIDWarner(os.Stderr,
			"the copy lists its true DiffID in a corrected config (every layer is recompressed to be checked)")))
	case strings.HasPrefix(dest, "docker-archive:") && !pf.formatSet():
		// A docker-archive holds its layers decompressed (and checked against their DiffIDs as
		// they are written): compressing them first would be wasted.
		opts = append(opts, push.WithPreserveDigests())
	}
	return opts, nil
}

// copyRetrying runs the copy step, again after a temporary error up to --retry-times times, as
// skopeo copy does: each attempt starts over (blobs already at the destination are found there).
func (cf *copyFlags) copyRetrying(ctx context.Context, srcArg, destArg string, opts []push.Option) (copyResult, error) {
	for attempt := 0; ; attempt++ {
		rep, err := cf.copyOnce(ctx, srcArg, destArg, opts)
		if err == nil || attempt >= cf.retryTimes || !temporary(err) || ctx.Err() != nil {
			return rep, err
		}
		delay := cf.retryDelay
		if delay == 0 {
			delay = time.Second << attempt
		}
		fmt.Fprintf(os.Stderr, "kura: copy: %v; retrying (%d of %d) in %s\n", err, attempt+1, cf.retryTimes, delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return copyResult{}, ctx.Err()
		case <-t.C:
		}
	}
}

// copyOnce resolves the source (through registries.conf, with the source side's options) and
// copies it to the destination (with the destination side's).
func (cf *copyFlags) copyOnce(ctx context.Context, srcArg, destArg string, opts []push.Option) (copyResult, error) {
	srcArg, done, err := openArchiveArg(srcArg)
	if err != nil {
		return copyResult{}, err
	}
	defer done()
	if _, err := imageref.Parse(srcArg); err != nil {
		return copyResult{}, refError(err)
	}
	origDest := destArg
	destArg, finish, destDone, err := archiveDest(destArg)
	if err != nil {
		return copyResult{}, err
	}
	defer destDone()
	if finish != nil && cf.all {
		return copyResult{}, fmt.Errorf("copy --all to %s: %w", origDest, errdefs.ErrUnsupported)
	}
	destRef, err := imageref.Parse(destArg)
	if err != nil {
		return copyResult{}, refError(err)
	}
	srcRF, destRF := cf.src.apply(&cf.registryFlags), cf.dest.apply(&cf.registryFlags)
	if err := destRF.checkPush(destRef); err != nil {
		return copyResult{}, err
	}
	chosen, err := srcRF.pullSource(ctx, srcArg)
	if err != nil {
		return copyResult{}, err
	}
	client, err := destRF.client()
	if err != nil {
		return copyResult{}, err
	}
	// Blobs the destination lacks may be linked from the source repository instead of sent when
	// both live in one registry.
	var mountFrom []imageref.Repository
	if srcRef := chosen.ref; srcRef.Transport == imageref.Docker && destRef.Transport == imageref.Docker && srcRef.Domain == destRef.Domain {
		mountFrom = append(mountFrom, srcRef.Repository())
	}
	dest, err := push.NewDestination(destRef, client, "", mountFrom...)
	if err != nil {
		return copyResult{}, err
	}
	if cf.all {
		rep, err := push.CopyAll(ctx, chosen.ref, chosen.client, dest, opts...)
		if err != nil {
			return copyResult{}, err
		}
		return copyResult{image: rep.Image, print: func(w io.Writer) error { return printIndexReport(w, rep) }}, nil
	}
	rep, err := push.Copy(ctx, chosen.src, dest, opts...)
	if err != nil {
		return copyResult{}, err
	}
	if finish != nil {
		if err := finish(); err != nil {
			return copyResult{}, fmt.Errorf("writing %s: %w", origDest, err)
		}
		rep.Destination = origDest
	}
	return copyResult{image: rep.Image, print: func(w io.Writer) error { return printPushReport(w, rep) }}, nil
}

// copyResult is what a copy wrote: the destination manifest's (or index's) digest, and how to
// report it.
type copyResult struct {
	image digest.Digest
	print func(io.Writer) error
}

func printIndexReport(w io.Writer, rep *push.IndexReport) error {
	if global.json {
		return printJSON(w, rep)
	}
	for _, r := range rep.Images {
		if err := printPushReport(w, r); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "%s %s (index of %d images, %.2fs)\n", rep.Destination, rep.Image, len(rep.Images), rep.Seconds)
	return nil
}

// temporary reports errors worth another attempt, as containers/common's retry: a connection
// refused, reset, cut or stalled, a timeout, a name that did not resolve for now, 429 and 5xx
// answers. Invalid input, digest mismatches, certificate and permission refusals are not.
func temporary(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	for _, e := range []error{registry.ErrIdle, io.ErrUnexpectedEOF, syscall.ECONNRESET, syscall.ECONNREFUSED,
		syscall.EPIPE, syscall.ETIMEDOUT, syscall.ENETUNREACH, syscall.EHOSTUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return !dns.IsNotFound
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var he *registry.HTTPError
	return errors.As(err, &he) && he.Temporary()
}
