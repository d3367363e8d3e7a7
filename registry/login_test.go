package registry_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestCheckLogin: the /v2/ handshake accepts the right password and refuses a wrong one and
// none with ErrPermission, keeping the registry's answer reachable for messages.
func TestCheckLogin(t *testing.T) {
	reg := registrytest.New(t)
	client := func(creds string) *registry.Client {
		var opts []auth.Option
		if creds != "" {
			opts = append(opts, auth.WithCreds(creds))
		}
		return registry.New(registry.WithKeychain(auth.NewKeychain(opts...)))
	}
	if err := client(registrytest.Username+":"+registrytest.Password).CheckLogin(context.Background(), reg.Host); err != nil {
		t.Fatalf("right password: %v", err)
	}
	for _, creds := range []string{registrytest.Username + ":wrong", ""} {
		err := client(creds).CheckLogin(context.Background(), reg.Host)
		var te *transport.Error
		if !errors.Is(err, errdefs.ErrPermission) || !errors.As(err, &te) {
			t.Fatalf("creds %q: err = %v, want ErrPermission wrapping the transport error", creds, err)
		}
	}
}
