package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// writeDockerArchive writes a docker-archive (as podman save writes it) of a one-layer image
// made of the root file system tar at rootTar, tagged tag.
func writeDockerArchive(t *testing.T, path, rootTar, tag string) {
	t.Helper()
	layer, err := os.ReadFile(rootTar)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}}})
	manifest, _ := json.Marshal([]map[string]any{{"Config": "config.json", "RepoTags": []string{tag}, "Layers": []string{"layer.tar"}}})
	arch := tartest.Tar(t, tartest.Bytes("layer.tar", layer), tartest.Bytes("config.json", cfg), tartest.Bytes("manifest.json", manifest))
	if err := os.WriteFile(path, arch, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoadAndImportOfArchives (issue 18): kura load reads a docker-archive into the store (from
// -i FILE and from stdin), and kura import refuses the same file as a root file system (exit 4).
func TestLoadAndImportOfArchives(t *testing.T) {
	needRootCLI(t)
	work := openTempDir(t)
	kura := cli{t: t, bin: testkit.Kura(t)}
	rootTar, arch := filepath.Join(work, "root.tar"), filepath.Join(work, "saved.tar")
	writeTar(t, rootTar, map[string]string{"etc/motd": "loaded\n"}, false)
	writeDockerArchive(t, arch, rootTar, "localhost/loaded:v1")
	st := filepath.Join(work, "store")

	kura.fails(4, "kura load", "--root", st, "import", arch, "wrong:v1")
	if out := kura.ok("--root", st, "images"); strings.Contains(out, "wrong") {
		t.Fatalf("the refused import left an image:\n%s", out)
	}
	out := kura.ok("--root", st, "load", "-i", arch)
	if !strings.Contains(out, "Loaded image: localhost/loaded:v1 sha256:") {
		t.Fatalf("load printed:\n%s", out)
	}
	co := filepath.Join(work, "co")
	kura.ok("--root", st, "checkout", "localhost/loaded:v1", co)
	if b, err := os.ReadFile(filepath.Join(co, "etc/motd")); err != nil || string(b) != "loaded\n" {
		t.Fatalf("checkout of the loaded image: %q, %v", b, err)
	}
	kura.fails(4, "not an image archive", "--root", st, "load", "-i", rootTar)
	kura.fails(3, "no such file", "--root", st, "load", "-i", filepath.Join(work, "absent.tar"))
}

// writeDir writes skopeo's dir format of the one-layer image in the docker-archive-like parts:
// manifest.json, version, and blobs named by their hex digest.
func writeDir(t *testing.T, dir, rootTar string) {
	t.Helper()
	layer, err := os.ReadFile(rootTar)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}}})
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(layer), Size: int64(len(layer))}}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	os.MkdirAll(dir, 0o755)
	for name, b := range map[string][]byte{"manifest.json": mb, "version": []byte("Directory Transport Version: 1.1\n"),
		digest.FromBytes(cfg).Encoded(): cfg, digest.FromBytes(layer).Encoded(): layer} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestArchiveTransports (issue 18): docker-archive:, oci-archive: and dir: are sources of import,
// pull and copy (to oci: and to a registry), and copy writes each (docker-archive: with its
// layers decompressed, as docker load needs); another transport as a destination exits 6.
func TestArchiveTransports(t *testing.T) {
	needRootCLI(t)
	work := openTempDir(t)
	kura := cli{t: t, bin: testkit.Kura(t)}
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	rootTar, arch, dir := filepath.Join(work, "root.tar"), filepath.Join(work, "saved.tar"), filepath.Join(work, "dir")
	writeTar(t, rootTar, map[string]string{"etc/motd": "transported\n"}, false)
	writeDockerArchive(t, arch, rootTar, "localhost/arch:v1")
	writeDir(t, dir, rootTar)
	st, layout := filepath.Join(work, "store"), filepath.Join(work, "layout")

	kura.ok("--root", st, "import", "docker-archive:"+arch)
	kura.ok("--root", st, "pull", "docker-archive:"+arch+":localhost/arch:v1", "--name", "pulled:v1")
	kura.ok("--root", st, "import", "dir:"+dir, "fromdir:v1")
	kura.ok("copy", "docker-archive:"+arch, "oci:"+layout+":v1")
	kura.ok(append([]string{"copy", "dir:" + dir, "docker://" + reg.Host + "/arch/app:v1"}, creds...)...)
	kura.ok(append([]string{"--root", st, "pull", reg.Host + "/arch/app:v1"}, creds...)...)
	out := kura.ok("--root", st, "images")
	for _, n := range []string{"localhost/arch", "pulled", "fromdir", reg.Host + "/arch/app"} {
		if !strings.Contains(out, n) {
			t.Errorf("images lacks %s:\n%s", n, out)
		}
	}
	co := filepath.Join(work, "co")
	kura.ok("--root", st, "checkout", reg.Host+"/arch/app:v1", co)
	if b, err := os.ReadFile(filepath.Join(co, "etc/motd")); err != nil || string(b) != "transported\n" {
		t.Fatalf("checkout: %q, %v", b, err)
	}
	kura.fails(4, "is a docker-archive", "--root", st, "import", "oci-archive:"+arch, "x:v1")
	kura.fails(4, "no version file", "--root", st, "import", "dir:"+work, "x:v1")
	kura.fails(6, "unsupported", "copy", "oci:"+layout+":v1", "containers-storage:localhost/x:v1")

	// docker-archive: as a destination, read back by load; :@N picks an image by position.
	saved := filepath.Join(work, "saved2.tar")
	var rep struct {
		Layers []struct{ Digest digest.Digest }
	}
	if err := json.Unmarshal([]byte(kura.ok("--json", "copy", "dir:"+dir, "docker-archive:"+saved+":localhost/saved:v2")), &rep); err != nil {
		t.Fatal(err)
	}
	// The dir's layer is a plain tar: no --format, so nothing is compressed on the way.
	if plain, _ := os.ReadFile(rootTar); len(rep.Layers) != 1 || rep.Layers[0].Digest != digest.FromBytes(plain) {
		t.Fatalf("copy to docker-archive compressed the layer: %+v", rep)
	}
	if out := kura.ok("--root", st, "load", "-i", saved); !strings.Contains(out, "Loaded image: localhost/saved:v2") {
		t.Fatalf("load of the written docker-archive:\n%s", out)
	}
	kura.ok("--root", st, "import", "docker-archive:"+saved+":@0", "bypos:v1")
	co2 := filepath.Join(work, "co2")
	kura.ok("--root", st, "checkout", "bypos:v1", co2)
	if b, err := os.ReadFile(filepath.Join(co2, "etc/motd")); err != nil || string(b) != "transported\n" {
		t.Fatalf("checkout of docker-archive:PATH:@0: %q, %v", b, err)
	}
	kura.fails(3, "no image @1", "--root", st, "import", "docker-archive:"+saved+":@1", "x:v1")
	kura.fails(4, "want @N", "--root", st, "import", "docker-archive:"+saved+":@x", "x:v1")
	kura.fails(4, "picks an image", "copy", "oci:"+layout+":v1", "docker-archive:"+filepath.Join(work, "x.tar")+":@0")

	// dir: and oci-archive: as destinations, read back.
	outDir, outTar := filepath.Join(work, "out"), filepath.Join(work, "out.tar")
	kura.ok("copy", "oci:"+layout+":v1", "dir:"+outDir)
	kura.fails(4, "not empty", "copy", "oci:"+layout+":v1", "dir:"+outDir)
	kura.ok("copy", "dir:"+outDir, "oci-archive:"+outTar+":localhost/back:v1")
	if out := kura.ok("--root", st, "load", "-i", outTar); !strings.Contains(out, "Loaded image: localhost/back:v1") {
		t.Fatalf("load of the written oci-archive:\n%s", out)
	}
}

// TestPodmanSkopeoArchives (issue 18): archives written by podman save (both formats) and a
// skopeo dir: load and import; kura import refuses them as root file systems; skopeo reads what
// kura copy writes to dir: and oci-archive:. Podman runs with its own --root, so the host's
// podman storage is untouched.
func TestPodmanSkopeoArchives(t *testing.T) {
	needRootCLI(t)
	for _, tool := range []string{"podman", "skopeo"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skip(t, "needs %s", tool)
		}
	}
	work := openTempDir(t)
	kura := cli{t: t, bin: testkit.Kura(t)}
	runroot, rerr := os.MkdirTemp("/tmp", "pm") // podman wants a runroot under 50 characters
	if rerr != nil {
		t.Fatal(rerr)
	}
	t.Cleanup(func() { os.RemoveAll(runroot) })
	podman := func(args ...string) string {
		t.Helper()
		full := append([]string{"--root", filepath.Join(work, "podman"), "--runroot", runroot, "--storage-driver", "vfs"}, args...)
		out, err := exec.Command("podman", full...).CombinedOutput()
		if err != nil {
			t.Fatalf("podman %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	rootTar := filepath.Join(work, "root.tar")
	writeTar(t, rootTar, map[string]string{"etc/motd": "from podman\n"}, false)
	podman("import", rootTar, "localhost/pm:v1")
	dockerTar, ociTar := filepath.Join(work, "d.tar"), filepath.Join(work, "o.tar")
	podman("save", "--format", "docker-archive", "-o", dockerTar, "localhost/pm:v1")
	podman("save", "--format", "oci-archive", "-o", ociTar, "localhost/pm:v1")
	st := filepath.Join(work, "store")

	kura.fails(4, "docker-archive", "--root", st, "import", dockerTar, "x:v1")
	kura.fails(4, "oci-archive", "--root", st, "import", ociTar, "x:v1")
	for _, f := range []string{dockerTar, ociTar} {
		if out := kura.ok("--root", st, "load", "-i", f); !strings.Contains(out, "Loaded image: localhost/pm:v1") {
			t.Fatalf("load %s:\n%s", f, out)
		}
	}
	kura.ok("--root", st, "import", "oci-archive:"+ociTar+":localhost/pm:v1", "fromoci:v1")
	skopeoDir, outTar := filepath.Join(work, "skopeo-dir"), filepath.Join(work, "out.tar")
	kura.ok("copy", "docker-archive:"+dockerTar, "oci:"+filepath.Join(work, "layout")+":v1")
	if out, err := exec.Command("skopeo", "copy", "oci:"+filepath.Join(work, "layout")+":v1", "dir:"+skopeoDir).CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy: %v\n%s", err, out)
	}
	kura.ok("--root", st, "import", "dir:"+skopeoDir, "fromdir:v1")
	kura.ok("copy", "dir:"+skopeoDir, "oci-archive:"+outTar+":v2")
	out, err := exec.Command("skopeo", "inspect", "oci-archive:"+outTar+":v2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"Digest": "sha256:`) {
		t.Fatalf("skopeo inspect of kura's oci-archive: %v\n%s", err, out)
	}
	co := filepath.Join(work, "co")
	kura.ok("--root", st, "checkout", "fromdir:v1", co)
	if b, err := os.ReadFile(filepath.Join(co, "etc/motd")); err != nil || string(b) != "from podman\n" {
		t.Fatalf("checkout: %q, %v", b, err)
	}
	checkPodmanLoadsDockerArchive(t, kura, podman, work, skopeoDir)
}

// checkPodmanLoadsDockerArchive: kura copy writes a docker-archive that skopeo inspects and
// podman load reads, under its name and with its files; of podman's two-image archive,
// kura import docker-archive:PATH:@1 takes the second image, as skopeo does.
func checkPodmanLoadsDockerArchive(t *testing.T, kura cli, podman func(...string) string, work, src string) {
	t.Helper()
	saved := filepath.Join(work, "kura-saved.tar")
	kura.ok("copy", "dir:"+src, "docker-archive:"+saved+":localhost/kura/saved:v3")
	if out, err := exec.Command("skopeo", "inspect", "docker-archive:"+saved).CombinedOutput(); err != nil || !strings.Contains(string(out), `"Layers"`) {
		t.Fatalf("skopeo inspect of kura's docker-archive: %v\n%s", err, out)
	}
	if out := podman("load", "-i", saved); !strings.Contains(out, "localhost/kura/saved:v3") {
		t.Fatalf("podman load of kura's docker-archive:\n%s", out)
	}
	mnt := strings.TrimSpace(podman("image", "mount", "localhost/kura/saved:v3"))
	if b, err := os.ReadFile(filepath.Join(mnt, "etc/motd")); err != nil || string(b) != "from podman\n" {
		t.Fatalf("podman's image of kura's docker-archive: %q, %v", b, err)
	}
	podman("image", "unmount", "localhost/kura/saved:v3")

	second := filepath.Join(work, "second.tar")
	writeTar(t, second, map[string]string{"etc/motd": "second\n"}, false)
	podman("import", second, "localhost/pm:v2")
	multi := filepath.Join(work, "multi.tar")
	podman("save", "--multi-image-archive", "--format", "docker-archive", "-o", multi, "localhost/pm:v1", "localhost/pm:v2")
	st := filepath.Join(work, "store-multi")
	kura.ok("--root", st, "import", "docker-archive:"+multi+":@1", "picked:v1")
	co := filepath.Join(work, "co-multi")
	kura.ok("--root", st, "checkout", "picked:v1", co)
	if b, err := os.ReadFile(filepath.Join(co, "etc/motd")); err != nil || string(b) != "second\n" {
		t.Fatalf("docker-archive:PATH:@1 of podman's two-image archive: %q, %v", b, err)
	}
}
