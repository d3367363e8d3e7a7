package main

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// pauseRepo is the sandbox ("pause") image of the containerd comparison.
// The machine is offline, so the CRI plugin's default (registry.k8s.io)
// cannot be pulled: the harness builds one from the host's sleep(1) and the
// libraries it loads, and pushes it to the local registry.
const pauseRepo = "bench/pause"

var pauseCmd = []string{"/usr/bin/sleep", "infinity"}

// pushPauseImage writes the pause image as an OCI layout under work and
// pushes it with skopeo (gzip, skopeo's default); it returns the reference.
func pushPauseImage(ctx context.Context, work, regAddr string) (string, error) {
	files, err := hostBinaryFiles(pauseCmd[0])
	if err != nil {
		return "", err
	}
	dir := filepath.Join(work, "pause-layout")
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if _, _, err := writeLayoutCmd(dir, "pause", pauseCmd, func(w io.Writer) error { return tarFiles(w, files) }); err != nil {
		return "", err
	}
	ref := regAddr + "/" + pauseRepo + ":1"
	out, err := exec.CommandContext(ctx, "skopeo", "copy", "--quiet", "--dest-tls-verify=false",
		"oci:"+dir+":pause", "docker://"+ref).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("pushing the pause image: %w: %s", err, out)
	}
	return ref, nil
}

// hostBinaryFiles is bin and the shared objects ldd(1) says it loads
// (absolute paths, the dynamic loader included).
func hostBinaryFiles(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	files := []string{bin}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasPrefix(f, "/") && !slices.Contains(files, f) {
			files = append(files, f)
		}
	}
	return files, nil
}

// tarFiles writes a layer holding the given host files (contents of what a
// symlink names) and their parent directories.
func tarFiles(w io.Writer, files []string) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	for _, f := range files {
		var parents []string
		for d := path.Dir(f); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if !dirs[d] {
				dirs[d] = true
				if err := tw.WriteHeader(&tar.Header{Name: d[1:] + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
					return err
				}
			}
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Name: f[1:], Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(b)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := tw.Write(b); err != nil {
			return err
		}
	}
	return tw.Close()
}
