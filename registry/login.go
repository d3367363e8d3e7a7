package registry

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kura-oci/kura/errdefs"
)

// CheckLogin does what podman login does before saving credentials: the /v2/ handshake with host
// (basic or bearer-token, with the keychain's credential for host), then GET /v2/ with the
// result. nil means the registry accepts the credential; a refusal wraps errdefs.ErrPermission.
func (c *Client) CheckLogin(ctx context.Context, host string) error {
	ht, err := c.hostTransport(host)
	if err != nil {
		return err
	}
	nopts := []name.Option{name.StrictValidation}
	if ht.allowHTTP {
		nopts = append(nopts, name.Insecure)
	}
	reg, err := name.NewRegistry(host, nopts...)
	if err != nil {
		return fmt.Errorf("registry %q: %v: %w", host, err, errdefs.ErrInvalid)
	}
	base := ht.rt
	scheme := reg.Scheme()
	if ht.httpsOnly {
		base, scheme = &plainHTTPGuard{inner: base, host: reg.RegistryStr()}, "https"
	}
	authenticator, err := c.opts.keychain.Resolve(reg)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", host, err)
	}
	authed, err := transport.NewWithContext(ctx, reg, authenticator, transport.NewUserAgent(base, c.opts.userAgent), nil)
	if err != nil {
		return fmt.Errorf("authenticating to %s: %w", host, classifyAuthErr(err))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+reg.RegistryStr()+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: authed, CheckRedirect: checkRedirect}).Do(req)
	if err != nil {
		return fmt.Errorf("authenticating to %s: %w", host, classifyAuthErr(err))
	}
	if resp.StatusCode != http.StatusOK {
		return newHTTPError(resp)
	}
	resp.Body.Close()
	return nil
}
