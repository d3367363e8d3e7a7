package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/kura-oci/kura/errdefs"
)

// The docker credential-helper protocol: "docker-credential-NAME get|store|erase" with the
// request on stdin. get reads the server URL and answers {"Username","Secret"}; a helper that
// knows nothing of the server fails saying "credentials not found". A Username of "<token>"
// means Secret is an identity (refresh) token.
const (
	helperPrefix     = "docker-credential-"
	helperNotFound   = "credentials not found"
	helperTokenUser  = "<token>"
	helperTimeout    = 2 * time.Minute // a helper may ask a keyring to unlock
	maxHelperOutput  = 1 << 20
	maxHelperMessage = 512
)

// helperName is what may follow "docker-credential-": a program name, never a path, since auth
// files name helpers and an auth file must not run arbitrary programs.
var helperName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func validHelperName(name string) bool { return helperName.MatchString(name) }

type helperCreds struct {
	ServerURL string `json:"ServerURL,omitempty"`
	Username  string `json:"Username"`
	Secret    string `json:"Secret"`
}

// HelperGet asks docker-credential-NAME for server's credential; none when it has none.
func HelperGet(name, server string) (Credential, error) {
	out, err := runHelper(name, "get", server)
	if err != nil {
		if strings.Contains(err.Error(), helperNotFound) {
			return Credential{}, nil
		}
		return Credential{}, err
	}
	var hc helperCreds
	if err := json.Unmarshal(out, &hc); err != nil {
		return Credential{}, fmt.Errorf("credential helper %s: answer is not JSON: %v: %w", name, err, errdefs.ErrInvalid)
	}
	if hc.Username == helperTokenUser {
		return Credential{IdentityToken: hc.Secret}, nil
	}
	return Credential{Username: hc.Username, Password: hc.Secret}, nil
}

// HelperStore saves c for server in docker-credential-NAME.
func HelperStore(name, server string, c Credential) error {
	hc := helperCreds{ServerURL: server, Username: c.Username, Secret: c.Password}
	if c.IdentityToken != "" {
		hc.Username, hc.Secret = helperTokenUser, c.IdentityToken
	}
	req, err := json.Marshal(hc)
	if err != nil {
		return err
	}
	_, err = runHelper(name, "store", string(req))
	return err
}

// HelperErase removes server's credential from docker-credential-NAME; errdefs.ErrNotFound when
// it had none.
func HelperErase(name, server string) error {
	_, err := runHelper(name, "erase", server)
	if err != nil && strings.Contains(err.Error(), helperNotFound) {
		return fmt.Errorf("%v: %w", err, errdefs.ErrNotFound)
	}
	return err
}

// runHelper runs one helper action with a bounded time and output. The error carries the
// helper's own message (docker's helpers print it on stdout), never the secret sent.
func runHelper(name, action, input string) ([]byte, error) {
	if !validHelperName(name) {
		return nil, fmt.Errorf("credential helper name %q: %w", name, errdefs.ErrInvalid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, helperPrefix+name, action)
	cmd.Stdin = strings.NewReader(input)
	stdout, stderr := &capped{max: maxHelperOutput}, &capped{max: maxHelperMessage}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	err := cmd.Run()
	if stdout.over {
		return nil, fmt.Errorf("credential helper %s %s: answer over %d bytes: %w", name, action, maxHelperOutput, errdefs.ErrInvalid)
	}
	if err != nil {
		msg := strings.TrimSpace(string(bytes.ToValidUTF8(stdout.Bytes(), nil)) + " " + stderr.String())
		if len(msg) > maxHelperMessage {
			msg = msg[:maxHelperMessage]
		}
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("credential helper %s: %v: %w", name, err, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("credential helper %s %s: %v: %s", name, action, err, msg)
	}
	return stdout.Bytes(), nil
}

// capped is a buffer that keeps at most max bytes and remembers if more came. The buffer is a
// field, not embedded: an embedded bytes.Buffer's ReadFrom would let io.Copy bypass the cap.
type capped struct {
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.buf.Len(); len(p) > room {
		c.over = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *capped) Bytes() []byte  { return c.buf.Bytes() }
func (c *capped) String() string { return c.buf.String() }
