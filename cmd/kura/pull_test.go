package main

import (
	"errors"
	"testing"
	"time"

	"github.com/kura-oci/kura/registry"
)

// --idle-timeout wins over $KURA_IDLE_TIMEOUT, which wins over the default; bad values are
// usage errors.
func TestIdleTimeoutSetting(t *testing.T) {
	def := registry.DefaultIdleTimeout
	cases := []struct {
		flag    time.Duration
		given   bool
		env     string
		want    time.Duration
		wantErr bool
	}{
		{def, false, "", def, false},
		{def, false, "90s", 90 * time.Second, false},
		{def, false, "0", 0, false},
		{10 * time.Second, true, "90s", 10 * time.Second, false},
		{0, true, "", 0, false},
		{def, false, "soon", 0, true},
		{def, false, "-1s", 0, true},
		{-time.Second, true, "", 0, true},
	}
	for _, tc := range cases {
		got, err := idleTimeout(tc.flag, tc.given, tc.env)
		var ue usageError
		if tc.wantErr != (err != nil) || err != nil && !errors.As(err, &ue) || got != tc.want {
			t.Errorf("idleTimeout(%s, %v, %q) = %s, %v; want %s (error %v)", tc.flag, tc.given, tc.env, got, err, tc.want, tc.wantErr)
		}
	}
}
