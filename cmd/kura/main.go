// Command kura stores, pulls and mounts container images file by file.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/progress"
)

// globalOptions are the flags every subcommand sees.
type globalOptions struct {
	root         string
	json         bool
	debug        bool
	logLevel     string
	cpuProfile   string
	allocProfile string
	memProfile   string
}

var global globalOptions

// bars is the progress reporter of the running command, made by newBars (one per process, like
// the flags); main finishes it before printing an error, so that its last frame comes first.
var bars progress.Reporter = progress.Nop

// newBars returns progress bars on stderr: mpb's bars with rate and ETA on a terminal, plain
// lines otherwise.
func newBars() progress.Reporter {
	bars = progress.Auto(os.Stderr)
	return bars
}

var rootCmd = &cobra.Command{
	Use:           "kura",
	Short:         "Store, pull and mount container images file by file",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func init() {
	rootCmd.PersistentFlags().StringVar(&global.root, "root", defaultRoot(), "store directory")
	rootCmd.PersistentFlags().BoolVar(&global.json, "json", false, "print machine-readable JSON")
	rootCmd.PersistentFlags().BoolVar(&global.debug, "debug", false, "print debug logs to stderr (--log-level=debug)")
	rootCmd.PersistentFlags().StringVar(&global.logLevel, "log-level", "warn", "logs printed to stderr: error, warn, info or debug")
	rootCmd.PersistentFlags().StringVar(&global.cpuProfile, "cpu-profile", "", "write a Go CPU profile to this file")
	rootCmd.PersistentFlags().MarkHidden("cpu-profile")
	rootCmd.PersistentFlags().StringVar(&global.allocProfile, "alloc-profile", "", "write a Go allocation profile to this file")
	rootCmd.PersistentFlags().MarkHidden("alloc-profile")
	rootCmd.PersistentFlags().StringVar(&global.memProfile, "mem-profile", "", "write the Go heap profile of the largest live heap to this file")
	rootCmd.PersistentFlags().MarkHidden("mem-profile")
	rootCmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
}

// startProfile starts the profiles asked for with --cpu-profile, --alloc-profile and
// --mem-profile; the returned function writes them.
func startProfile() (func(), error) {
	stop := func() {}
	if global.memProfile != "" {
		runtime.MemProfileRate = 16 << 10
		stop = peakHeapProfile(global.memProfile)
	}
	if global.allocProfile != "" {
		runtime.MemProfileRate = 16 << 10
		prev := stop
		stop = func() {
			prev()
			if f, err := os.Create(global.allocProfile); err == nil {
				pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}
	}
	if global.cpuProfile == "" {
		return stop, nil
	}
	f, err := os.Create(global.cpuProfile)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close(); stop() }, nil
}

// setupLogging makes slog's default logger, once at startup, a text handler on w at the level
// --log-level or --debug asks for. It is the one logger of the process: commands pass
// slog.Default() to the packages that log (pull.WithLogger), which log nothing by default.
func setupLogging(w io.Writer) error {
	var level slog.Level
	name := global.logLevel
	if global.debug {
		name = "debug"
	}
	if err := level.UnmarshalText([]byte(name)); err != nil || !slices.Contains([]string{"error", "warn", "info", "debug"}, strings.ToLower(name)) {
		return usageError{fmt.Errorf("--log-level %q: want error, warn, info or debug", name)}
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})))
	return nil
}

// defaultRoot is /var/lib/kura for root and $XDG_DATA_HOME/kura otherwise.
func defaultRoot() string {
	if os.Geteuid() == 0 {
		return "/var/lib/kura"
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "kura")
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".local", "share", "kura")
}

// usageError marks a bad command line (exit 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// exactArgs is cobra.ExactArgs with a usage-class error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

// rangeArgs is cobra.RangeArgs with a usage-class error.
func rangeArgs(min, max int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.RangeArgs(min, max)(cmd, args); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func main() {
	ctx, interrupted := signalContext()
	stopProfile := func() {}
	rootCmd.PersistentPreRunE = func(*cobra.Command, []string) (err error) {
		if err := setupLogging(os.Stderr); err != nil {
			return err
		}
		stopProfile, err = startProfile()
		return err
	}
	err := rootCmd.ExecuteContext(ctx)
	progress.Finish(bars)
	stopProfile()
	os.Exit(report(os.Stderr, err, interrupted()))
}

// signalContext is cancelled by the first SIGINT or SIGTERM, so that work in progress stops where
// it is safe to (every write goes through a temp file: an interrupted pull leaves only temp files,
// and the next one resumes). The returned function tells which signal came, if any. A second
// signal exits at once, as a user pressing ^C twice expects.
func signalContext() (context.Context, func() os.Signal) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	var got atomic.Value
	go func() {
		sig := <-ch
		got.Store(sig)
		cancel()
		sig = <-ch
		os.Exit(signalExit(sig))
	}()
	return ctx, func() os.Signal {
		sig, _ := got.Load().(os.Signal)
		return sig
	}
}

// signalExit is the shell's code for death by sig: 128 + its number (130 for SIGINT, 143 for
// SIGTERM).
func signalExit(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return errdefs.ExitFailure
}

// report prints err and returns the exit code for it: a command stopped by a signal exits as the
// signal dictates, a bad command line with 2, anything else by its errdefs class.
func report(w io.Writer, err error, sig os.Signal) int {
	if err == nil {
		return errdefs.ExitOK
	}
	if sig != nil {
		fmt.Fprintf(w, "kura: interrupted by %v: %v\n", sig, err)
		return signalExit(sig)
	}
	err = explainAuth(err)
	fmt.Fprintf(w, "kura: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return errdefs.ExitUsage
	}
	return errdefs.ExitCode(err)
}

// isCobraUsage recognises cobra's own errors for unknown commands.
func isCobraUsage(err error) bool {
	return strings.HasPrefix(err.Error(), "unknown command ")
}

// refError classifies an image reference that does not parse: a transport Kura does not
// implement is unsupported (exit 6), anything else a bad command line (exit 2).
func refError(err error) error {
	if errors.Is(err, errdefs.ErrUnsupported) {
		return err
	}
	return usageError{err}
}

// checkJobs refuses a --jobs that is not a positive count.
func checkJobs(n int) error {
	if n < 1 {
		return usageError{fmt.Errorf("--jobs %d: want 1 or more", n)}
	}
	return nil
}
