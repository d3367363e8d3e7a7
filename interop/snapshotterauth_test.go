package interop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestSnapshotterCRIPullSecret: an image pull secret reaches Kura's remote path through the CRI
// image-service proxy (kura snapshotter --cri-image-service-path, the kubelet's
// --image-service-endpoint on Kura's socket). The registry (registrytest: token auth, no
// anonymous pulls) is reached by containerd through a logging proxy and by Kura directly
// (registries.conf rewrite); Kura has no credential of its own. PullImage through the proxy
// with an AuthConfig: Kura pulls the layer with the kubelet's credential and containerd fetches
// no layer blob. PullImage of another image with the same AuthConfig straight to containerd
// (no proxy): Kura has no credential for it, its pull fails, and containerd downloads the layer.
func TestSnapshotterCRIPullSecret(t *testing.T) {
	requireTools(t, "containerd", "runc")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "containerd and overlay mounts need root")
	}
	reg := registrytest.New(t)
	front := newBlobLog(t, reg.Host)
	var layers [2]string
	for i, tag := range []string{"v1", "v2"} {
		img := imagetest.Chunked(t, tartest.Tar(t, tartest.Dir("etc/"), tartest.File("etc/secret-app", "version "+tag)))
		img.Push(t, reg, "private/app", tag)
		layers[i] = img.Descs[0].Digest.Encoded()
	}
	base, err := os.MkdirTemp("/var/tmp", "kura-interop-secret-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Cleanup(func() { unmountUnder(t, filepath.Join(base, "snapshotter", "layers")) }) // after containerd
	regConf := filepath.Join(base, "registries.conf")
	conf := fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\ninsecure = true\n", front.Host, reg.Host)
	if err := os.WriteFile(regConf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	e := startContainerdConf(t, base, "", criConf(front.Host), "--registries-conf", regConf,
		"--cri-image-service-path", filepath.Join(base, "containerd.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	secret := &runtimeapi.AuthConfig{Username: registrytest.Username, Password: registrytest.Password}
	pull := func(sock, tag string) {
		t.Helper()
		conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{
			Image: &runtimeapi.ImageSpec{Image: front.Host + "/private/app:" + tag}, Auth: secret})
		if err != nil {
			t.Fatalf("PullImage %s through %s: %v\n%s", tag, sock, err, e.snap.log())
		}
	}
	front.take()
	pull(e.kuraSock, "v1")
	if gets := front.take(); contains(gets, "sha256:"+layers[0]) || !strings.Contains(e.snap.log(), "layer served from the store") {
		t.Fatalf("v1's layer did not come through Kura with the kubelet's secret (containerd's GETs %v):\n%s", gets, e.snap.log())
	}
	pull(e.sock, "v2")
	if gets := front.take(); !contains(gets, "sha256:"+layers[1]) {
		t.Fatalf("without the proxy Kura served v2's layer, which needs the secret (containerd's GETs %v):\n%s", gets, e.snap.log())
	}
}
