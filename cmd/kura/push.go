package main

import (
	"fmt"
	"io"
	"log/slog"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/push"
)

// pushFlags are the options push and copy share.
type pushFlags struct {
	format    string
	formatSet func() bool // --format was given
	level     int
	jobs      int
	quiet     bool // copy -q: no progress
}

func (f *pushFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.format, "format", string(push.ZstdChunked), "layer compression: zstd:chunked, zstd or gzip")
	cmd.Flags().IntVar(&f.level, "level", 0, "compression level (default: 10 for zstd:chunked, 3 for zstd, 6 for gzip)")
	cmd.Flags().IntVar(&f.jobs, "jobs", min(3, runtime.NumCPU()+1), "layers compressed and sent at once")
	f.formatSet = func() bool { return cmd.Flags().Changed("format") }
}

func (f *pushFlags) options() ([]push.Option, error) {
	format, err := push.ParseFormat(f.format)
	if err != nil {
		return nil, usageError{err}
	}
	if f.level != 0 {
		if err := format.CheckLevel(f.level); err != nil {
			return nil, usageError{err}
		}
	}
	if err := checkJobs(f.jobs); err != nil {
		return nil, err
	}
	opts := []push.Option{push.WithLevel(f.level), push.WithJobs(f.jobs), push.WithLogger(slog.Default())}
	if f.formatSet() { // else the default: zstd:chunked, or any layer as it is with --preserve-digests
		opts = append(opts, push.WithFormat(format))
	}
	if !global.json && !f.quiet {
		opts = append(opts, push.WithProgress(newBars()))
	}
	return opts, nil
}

func printPushReport(w io.Writer, rep *push.Report) error {
	progress.Finish(bars) // the last frame before the report
	if global.json {
		return printJSON(w, rep)
	}
	fmt.Fprintf(w, "%s %s\n", rep.Destination, rep.Image)
	fmt.Fprintf(w, "%d layers (%s), %s: %d sent (%s), %d existed, %d mounted, %.2fs\n",
		len(rep.Layers), rep.Format, progress.HumanBytes(rep.Size), rep.Uploaded, progress.HumanBytes(rep.BytesSent), rep.Existed, rep.Mounted, rep.Seconds)
	return nil
}

func init() {
	var rf registryFlags
	var pf pushFlags
	cmd := &cobra.Command{
		Use:   "push IMAGE [docker://]HOST/REPO[:TAG] | oci:DIR[:TAG]",
		Short: "Push a stored image to a registry or an OCI layout, recompressing its layers",
		Long: `Push an image from the store. Each layer's tar is rebuilt from the store and compressed
(zstd:chunked by default, so that others can pull it partially), several layers at once; blobs the
registry has already are not sent again. The config is sent unchanged: recompression keeps DiffIDs.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ref, err := imageref.Parse(args[1])
			if err != nil {
				return refError(err)
			}
			opts, err := pf.options()
			if err != nil {
				return err
			}
			if err := rf.checkPush(ref); err != nil {
				return err
			}
			client, err := rf.client()
			if err != nil {
				return err
			}
			s, err := openStore()
			if err != nil {
				return err
			}
			dest, err := push.NewDestination(ref, client, s.TempDir())
			if err != nil {
				return err
			}
			rep, err := push.Push(cmd.Context(), s, args[0], dest, opts...)
			if err != nil {
				return err
			}
			return printPushReport(cmd.OutOrStdout(), rep)
		},
	}
	rf.register(cmd)
	pf.register(cmd)
	rootCmd.AddCommand(cmd)

	addCopyCommand()
}
