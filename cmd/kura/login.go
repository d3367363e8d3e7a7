package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
)

// prepareCreds applies podman's checks before any registry is contacted: an auth file named
// by --authfile or $REGISTRY_AUTH_FILE must exist, and --creds USER without a password asks for
// it on the terminal (once: the answer replaces the flag's value).
func (f *registryFlags) prepareCreds(withCreds bool) error {
	if err := auth.CheckAuthFile(auth.ExplicitAuthFile(f.authfile)); err != nil {
		return err
	}
	if !withCreds || f.creds == "" || strings.Contains(f.creds, ":") {
		return nil
	}
	pass, err := promptPassword(f.creds, "--creds "+f.creds+" has no password", "give USER:PASSWORD")
	if err != nil {
		return err
	}
	f.creds += ":" + pass
	return nil
}

// promptPassword reads a password without echo from the controlling terminal, not stdin, which
// may carry data (--password-stdin, a pipe). Without a terminal the error says what is missing
// and how else to give it.
func promptPassword(user, missing, how string) (string, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err == nil && !term.IsTerminal(int(tty.Fd())) {
		tty.Close()
		err = errors.New("not a terminal")
	}
	if err != nil {
		return "", usageError{fmt.Errorf("%s and there is no terminal to ask for it (%v): %s", missing, err, how)}
	}
	defer tty.Close()
	fmt.Fprintf(tty, "Password for %s: ", user)
	pass, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	if err != nil {
		return "", fmt.Errorf("reading the password: %w", err)
	}
	return string(pass), nil
}

// keychains are every keychain this process built, so that report can say which credential a
// registry refused (explainAuth).
var keychains struct {
	mu   sync.Mutex
	list []*auth.Keychain
}

func trackKeychain(k *auth.Keychain) *auth.Keychain {
	keychains.mu.Lock()
	defer keychains.mu.Unlock()
	keychains.list = append(keychains.list, k)
	return k
}

// logCredentials logs, at debug level, where the credential sent to each registry came from
// (the source's name, never the secret).
func logCredentials() {
	keychains.mu.Lock()
	defer keychains.mu.Unlock()
	for _, k := range keychains.list {
		used := k.Used()
		for _, h := range slices.Sorted(maps.Keys(used)) {
			slog.Debug("credentials", "registry", h, "source", used[h].String())
		}
	}
}

// explainAuth turns a registry's 401/403 into an auth.Error naming the host and the source of
// the credential sent (--creds, an auth file, a credential helper, or none). Other errors,
// including other permission errors (a blocked registry, a store the user cannot write), pass.
func explainAuth(err error) error {
	host, ok := refusedHost(err)
	if !ok {
		return err
	}
	used := map[string]auth.Source{}
	keychains.mu.Lock()
	for _, k := range keychains.list {
		for h, s := range k.Used() {
			used[h] = s
		}
	}
	keychains.mu.Unlock()
	if src, ok := used[host]; ok {
		return &auth.Error{Host: host, Source: src, Err: err}
	}
	// The refusal came from the token realm, another host: the registry is the one the message
	// names ("authenticating to HOST/REPO"), or the only one used.
	for _, h := range slices.Sorted(maps.Keys(used)) {
		if len(used) == 1 || strings.Contains(err.Error(), " "+h+"/") {
			return &auth.Error{Host: h, Source: used[h], Err: err}
		}
	}
	return err
}

// refusedHost finds a 401/403 answer in err and the host that gave it.
func refusedHost(err error) (string, bool) {
	refused := func(code int) bool { return code == http.StatusUnauthorized || code == http.StatusForbidden }
	var he *registry.HTTPError
	if errors.As(err, &he) && refused(he.StatusCode) {
		host := he.URL
		if _, rest, ok := strings.Cut(host, "://"); ok {
			host, _, _ = strings.Cut(rest, "/")
		}
		return host, true
	}
	var te *transport.Error
	if errors.As(err, &te) && refused(te.StatusCode) {
		if te.Request != nil && te.Request.URL != nil {
			return te.Request.URL.Host, true
		}
		return "", true
	}
	return "", false
}

// loginOptions are kura login's flags beyond the registry ones.
type loginOptions struct {
	username, password string
	passwordStdin      bool
	getLogin           bool
}

func init() {
	var rf registryFlags
	var o loginOptions
	cmd := &cobra.Command{
		Use:   "login [flags] [REGISTRY]",
		Short: "Check credentials with a registry and save them, as podman login does",
		Long: `Check a user name and password with REGISTRY (HOST[:PORT], or HOST[:PORT]/NAMESPACE for
credentials that apply below that namespace) and save them where podman saves them: --authfile,
else $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json (/run/containers/UID/auth.json
when XDG_RUNTIME_DIR is unset), written atomically with mode 0600; or in the credential helper
that file's "credHelpers" names for the registry. Missing user name or password are asked for on
the terminal. --get-login prints the user name saved for REGISTRY.`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			key, err := loginKey(args)
			if err != nil {
				return err
			}
			if o.getLogin {
				return getLogin(cmd.OutOrStdout(), rf.authfile, key)
			}
			return login(cmd, &rf, o, key)
		},
	}
	loginFlags(cmd, &rf)
	cmd.Flags().StringVarP(&o.username, "username", "u", "", "user name (asked for on the terminal when not given)")
	cmd.Flags().StringVarP(&o.password, "password", "p", "", "password (visible to other users in the process list; prefer --password-stdin)")
	cmd.Flags().BoolVar(&o.passwordStdin, "password-stdin", false, "read the password from stdin")
	cmd.Flags().BoolVar(&o.getLogin, "get-login", false, "print the user name saved for REGISTRY, and fail if there is none")
	rootCmd.AddCommand(cmd)

	var lrf registryFlags
	var all bool
	logout := &cobra.Command{
		Use:   "logout [flags] REGISTRY | --all",
		Short: "Remove saved credentials, as podman logout does",
		Long: `Remove REGISTRY's credentials from the auth file login writes (or from the credential helper
that file names for REGISTRY); --all removes every credential in that file.`,
		Args: rangeArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := auth.CheckAuthFile(auth.ExplicitAuthFile(lrf.authfile)); err != nil {
				return err
			}
			path := auth.NewKeychain(auth.WithAuthFile(lrf.authfile)).PrimaryAuthFile()
			if all {
				if len(args) > 0 {
					return usageError{errors.New("give REGISTRY or --all, not both")}
				}
				if err := auth.EraseAll(path); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "Removed login credentials for all registries")
				return nil
			}
			key, err := loginKey(args)
			if err != nil {
				return err
			}
			if _, err := auth.Erase(path, key); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Removed login credentials for %s\n", key)
			return nil
		},
	}
	logout.Flags().StringVar(&lrf.authfile, "authfile", "", "auth file to edit (default: $REGISTRY_AUTH_FILE or ${XDG_RUNTIME_DIR}/containers/auth.json)")
	logout.Flags().BoolVarP(&all, "all", "a", false, "remove the credentials of every registry")
	rootCmd.AddCommand(logout)
}

// loginFlags are the registry flags login takes (podman login's): no --creds or --platform.
func loginFlags(cmd *cobra.Command, rf *registryFlags) {
	cmd.Flags().StringVar(&rf.authfile, "authfile", "", "auth file to write (default: $REGISTRY_AUTH_FILE or ${XDG_RUNTIME_DIR}/containers/auth.json)")
	cmd.Flags().BoolVar(&rf.tlsVerify, "tls-verify", true, "require HTTPS and verify certificates (default: true, except registries marked insecure in registries.conf)")
	cmd.Flags().StringVar(&rf.certDir, "cert-dir", "", "use the certificates in this directory (default: certs.d lookup)")
	rf.tlsSet = func() bool { return cmd.Flags().Changed("tls-verify") }
	cmd.Flags().StringVar(&rf.regConf, "registries-conf", "", "registries.conf to read instead of the default")
}

// loginKey is the auth file key for login/logout's REGISTRY argument. Without one, podman uses
// the first unqualified-search registry; Kura asks for it instead of guessing.
func loginKey(args []string) (string, error) {
	if len(args) == 0 || args[0] == "" {
		return "", usageError{errors.New("give the REGISTRY (HOST[:PORT][/NAMESPACE])")}
	}
	key := auth.NormalizeKey(args[0])
	if strings.ContainsAny(key, "@ \t") || strings.Contains(key, ":") && strings.Contains(key, "/") && strings.LastIndex(key, ":") > strings.Index(key, "/") {
		return "", usageError{fmt.Errorf("registry %q: want HOST[:PORT][/NAMESPACE], without a tag or digest", args[0])}
	}
	return key, nil
}

// getLogin prints the user name of REGISTRY's saved credential, from the files podman reads.
func getLogin(w io.Writer, authfile, key string) error {
	if err := auth.CheckAuthFile(auth.ExplicitAuthFile(authfile)); err != nil {
		return err
	}
	c, _, err := auth.NewKeychain(auth.WithAuthFile(authfile)).Lookup(key)
	if err != nil {
		return err
	}
	if c.Username == "" {
		return fmt.Errorf("not logged into %s: %w", key, errdefs.ErrNotFound)
	}
	fmt.Fprintln(w, c.Username)
	return nil
}

// login reads the user name and password, checks them with the registry, then saves them.
func login(cmd *cobra.Command, rf *registryFlags, o loginOptions, key string) error {
	user, pass, err := loginCredentials(cmd.InOrStdin(), o)
	if err != nil {
		return err
	}
	host, _, _ := strings.Cut(key, "/")
	if _, err := imageref.Parse(host + "/x"); err != nil {
		return usageError{fmt.Errorf("registry %q: %v", host, err)}
	}
	kc := trackKeychain(auth.NewKeychain(auth.WithCreds(user + ":" + pass)))
	c := registry.New(registry.WithKeychain(kc), registry.WithHostTLS(rf.hostTLS))
	if err := c.CheckLogin(cmd.Context(), host); err != nil {
		return err
	}
	path := auth.NewKeychain(auth.WithAuthFile(rf.authfile)).PrimaryAuthFile()
	if _, err := auth.Store(path, key, auth.Credential{Username: user, Password: pass}); err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), "Login Succeeded!")
	return nil
}

// loginCredentials takes the user name and password from the flags, stdin or the terminal.
func loginCredentials(stdin io.Reader, o loginOptions) (string, string, error) {
	if o.passwordStdin && o.password != "" {
		return "", "", usageError{errors.New("--password and --password-stdin are mutually exclusive")}
	}
	if o.passwordStdin && o.username == "" {
		return "", "", usageError{errors.New("--password-stdin needs --username")}
	}
	user, pass := o.username, o.password
	if o.passwordStdin {
		line, err := bufio.NewReader(io.LimitReader(stdin, 64<<10)).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", "", fmt.Errorf("reading the password from stdin: %w", err)
		}
		pass = strings.TrimRight(line, "\r\n")
	}
	if user == "" {
		u, err := promptLine("Username: ")
		if err != nil {
			return "", "", err
		}
		user = u
	}
	if user == "" || strings.Contains(user, ":") {
		return "", "", usageError{fmt.Errorf("user name %q: must be non-empty and without ':'", user)}
	}
	if pass == "" && !o.passwordStdin {
		p, err := promptPassword(user, "no password given", "give --password-stdin or --password")
		if err != nil {
			return "", "", err
		}
		pass = p
	}
	return user, pass, nil
}

// promptLine reads one echoed line from the terminal.
func promptLine(prompt string) (string, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return "", usageError{fmt.Errorf("no user name given and no terminal to ask for it (%v): give --username", err)}
	}
	defer tty.Close()
	fmt.Fprint(tty, prompt)
	line, err := bufio.NewReader(tty).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading the user name: %w", err)
	}
	return strings.TrimSpace(line), nil
}
