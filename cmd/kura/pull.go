package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/spf13/cobra"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registriesconf"
	"github.com/kura-oci/kura/registry"
)

// registryFlags are the options every command that talks to a registry shares.
type registryFlags struct {
	// refKeychain, when set, puts credentials for one reference in front of the keychain of a
	// client pulling that reference (the snapshotter's CRI pull secrets).
	refKeychain func(ref string, next authn.Keychain) authn.Keychain
	creds       string
	authfile    string
	tlsVerify   bool
	tlsSet      func() bool // --tls-verify was given
	certDir     string
	regConf     string // --registries-conf
	platform    string
	idleTimeout time.Duration
	idleSet     func() bool // --idle-timeout was given

	conf *registriesconf.Config // loaded on first use
	// extend, when set, adds entries to conf once it is loaded (the snapshotter's hosts.toml).
	extend   func(*registriesconf.Config) error
	insecure map[string]bool // hosts of the chosen pull sources marked insecure
}

// idleTimeoutEnv sets the default of --idle-timeout.
const idleTimeoutEnv = "KURA_IDLE_TIMEOUT"

func (f *registryFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.creds, "creds", "", "credentials USER[:PASSWORD] for the registry")
	cmd.Flags().StringVar(&f.authfile, "authfile", "", "path of an auth file (default: podman's lookup order)")
	cmd.Flags().BoolVar(&f.tlsVerify, "tls-verify", true,
		"require HTTPS and verify certificates; false also allows plain HTTP (default: true, except registries marked insecure in registries.conf)")
	cmd.Flags().StringVar(&f.certDir, "cert-dir", "", "use the CA certificates (*.crt) and client certificates (*.cert, *.key) in this directory (default: certs.d lookup)")
	f.tlsSet = func() bool { return cmd.Flags().Changed("tls-verify") }
	cmd.Flags().StringVar(&f.regConf, "registries-conf", "", "registries.conf to read instead of $CONTAINERS_REGISTRIES_CONF or podman's default (drop-ins still apply)")
	cmd.Flags().StringVar(&f.platform, "platform", "", "OS/ARCH[/VARIANT] to choose from an index (default: this host)")
	cmd.Flags().DurationVar(&f.idleTimeout, "idle-timeout", registry.DefaultIdleTimeout,
		"abort a registry connection that delivers less than 1 KiB in this time, e.g. 30s or 2m (0: never; default from $"+idleTimeoutEnv+")")
	f.idleSet = func() bool { return cmd.Flags().Changed("idle-timeout") }
}

// idleTimeout is the flag's value if given, else $KURA_IDLE_TIMEOUT's if set, else the default.
func idleTimeout(flag time.Duration, given bool, env string) (time.Duration, error) {
	d := flag
	if !given && env != "" {
		var err error
		if d, err = time.ParseDuration(env); err != nil {
			return 0, usageError{fmt.Errorf("$%s=%q: %v", idleTimeoutEnv, env, err)}
		}
	}
	if d < 0 {
		return 0, usageError{fmt.Errorf("idle timeout %s: want 0 (never) or more", d)}
	}
	return d, nil
}

// client builds a registry client from the flags.
func (f *registryFlags) client() (*registry.Client, error) { return f.newClient(true) }

// newClient builds a registry client; withCreds false leaves --creds out (for mirrors, which
// must not receive the primary registry's credentials, as in containers/image).
func (f *registryFlags) newClient(withCreds bool) (*registry.Client, error) {
	return f.newClientFor("", withCreds)
}

// newClientFor is newClient for pulling ref (refKeychain's credentials for it first).
func (f *registryFlags) newClientFor(ref string, withCreds bool) (*registry.Client, error) {
	if err := f.prepareCreds(withCreds); err != nil {
		return nil, err
	}
	var kopts []auth.Option
	if f.authfile != "" {
		kopts = append(kopts, auth.WithAuthFile(f.authfile))
	}
	if f.creds != "" && withCreds {
		kopts = append(kopts, auth.WithCreds(f.creds))
	}
	idle, err := idleTimeout(f.idleTimeout, f.idleSet != nil && f.idleSet(), os.Getenv(idleTimeoutEnv))
	if err != nil {
		return nil, err
	}
	var kc authn.Keychain = trackKeychain(auth.NewKeychain(kopts...))
	if f.refKeychain != nil && ref != "" {
		kc = f.refKeychain(ref, kc)
	}
	opts := []registry.Option{registry.WithKeychain(kc), registry.WithHostTLS(f.hostTLS), registry.WithIdleTimeout(idle)}
	if f.platform != "" {
		p, err := parsePlatform(f.platform)
		if err != nil {
			return nil, err
		}
		opts = append(opts, registry.WithPlatform(p))
	}
	return registry.New(opts...), nil
}

func parsePlatform(s string) (ocispec.Platform, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ocispec.Platform{}, usageError{fmt.Errorf("platform %q: want OS/ARCH[/VARIANT]", s)}
	}
	p := ocispec.Platform{OS: parts[0], Architecture: parts[1]}
	if len(parts) == 3 {
		p.Variant = parts[2]
	}
	return p, nil
}

func init() {
	var rf registryFlags
	var jobs int
	var full, quiet, allowMismatch, lazyPull bool
	var name string
	var lf lazyFlags
	cmd := &cobra.Command{
		Use:   "pull [docker://]HOST/REPO[:TAG|@DIGEST] | oci:DIR[:TAG] | docker-archive:PATH[:REF] | oci-archive:PATH[:REF] | dir:PATH",
		Short: "Pull an image into the store, fetching only the files it lacks",
		Long: `Pull an image into the store. zstd:chunked layers are pulled partially: Kura fetches the table of
contents, then only the files and chunks the store lacks, with HTTP Range requests, and verifies
each file and the layer DiffID. Other layers are streamed whole into the store, and so is a
zstd:chunked layer that cannot be pulled partially, or not exactly (the note says why): a
registry that ignores Range, metadata over the size bound, a name the TOC cannot carry.
A connection that delivers less than 1 KiB in --idle-timeout is aborted and retried.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			arg, done, err := openArchiveArg(args[0])
			if err != nil {
				return err
			}
			defer done()
			args = []string{arg}
			if _, err := imageref.Parse(args[0]); err != nil {
				return refError(err)
			}
			if err := checkJobs(jobs); err != nil {
				return err
			}
			chosen, err := rf.pullSource(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if name == "" {
				name = chosen.name
			}
			src := chosen.src
			s, err := openStore()
			if err != nil {
				return err
			}
			opts := []pull.Option{pull.WithJobs(jobs), pull.WithName(name), pull.WithLogger(slog.Default())}
			if full {
				opts = append(opts, pull.WithoutPartial())
			}
			if allowMismatch {
				opts = append(opts, pull.WithDiffIDMismatchAllowed(diffIDWarner(os.Stderr,
					"stored under its true DiffID; the image record keeps the config's (kura push writes a corrected config)")))
			}
			if lazyPull {
				if full {
					return usageError{fmt.Errorf("--lazy and --full exclude each other")}
				}
				return runLazyPull(cmd, s, src, opts, lf)
			}
			if lf.mount != "" {
				return usageError{fmt.Errorf("--mount goes with --lazy")}
			}
			if !global.json && !quiet {
				opts = append(opts, pull.WithProgress(newBars()))
			}
			if stored := cmp.Or(name, storedName(chosen.ref)); pull.IsUpdate(cmd.Context(), s, stored) {
				softHeapLimit()
			}
			rep, err := pull.Pull(cmd.Context(), s, src, opts...)
			progress.Finish(bars) // the last frame before the report and its notes
			logCredentials()
			if err != nil {
				return err
			}
			return printPull(cmd.OutOrStdout(), os.Stderr, rep, quiet)
		},
	}
	rf.register(cmd)
	cmd.Flags().IntVar(&jobs, "jobs", min(3, runtime.NumCPU()+1), "layers pulled at once")
	cmd.Flags().BoolVar(&full, "full", false, "pull every layer whole (no partial pulls)")
	cmd.Flags().StringVar(&name, "name", "", "name to store the image under (default: the reference)")
	cmd.Flags().BoolVar(&allowMismatch, "allow-diffid-mismatch", false, allowDiffIDMismatchUsage)
	cmd.Flags().BoolVar(&lazyPull, "lazy", false, "fetch only the metadata, make the image mountable at once (kura mount, root; or --mount DIR, any user), and serve its files on first open until complete (runs in the foreground)")
	cmd.Flags().StringVar(&lf.mode, "lazy-mode", "auto", "with --lazy: how first reads are answered: fanotify (pre-content events, Linux 6.14+), fuse (a FUSE file system over the placeholders; it serves the mounts made over it until they are unmounted) or auto (fanotify where the kernel grants it)")
	cmd.Flags().StringVar(&lf.mount, "mount", "", "with --lazy: serve the image's whole tree read-only at this directory with FUSE (no root needed: fusermount3), each file fetched on first open; kura runs until it is unmounted (kura umount DIR)")
	cmd.Flags().DurationVar(&lf.backgroundAfter, "background-after", 0, "with --lazy: answer only reads for this long before fetching the rest of the image, so that start-up reads have the network to themselves")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image ID on stdout, no progress (notes still go to stderr)")
	rootCmd.AddCommand(cmd)
}
