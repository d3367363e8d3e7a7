package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// ensureRootfs returns a Debian bookworm minbase tree with apache2, built once
// with debootstrap and apt-get in a chroot, then reused: the ".done" marker is
// written only after the tree is complete, so an interrupted build is redone.
func ensureRootfs(ctx context.Context, cfg config) (string, error) {
	dir := filepath.Join(cfg.work, "rootfs")
	done := dir + ".done"
	if _, err := os.Stat(done); err == nil {
		log.Printf("rootfs: cached in %s", dir)
		return dir, nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("removing incomplete rootfs: %w", err)
	}
	start := time.Now()
	logf, err := os.Create(dir + ".log")
	if err != nil {
		return "", err
	}
	defer logf.Close()
	step := func(name string, args ...string) error {
		log.Printf("rootfs: %s", name)
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C"}
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s: %w (log in %s)", name, err, logf.Name())
		}
		return nil
	}
	if err := step("debootstrap minbase bookworm", "debootstrap", "--variant=minbase", "bookworm", dir, cfg.mirror); err != nil {
		return "", err
	}
	// policy-rc.d keeps apache2's postinst from starting a daemon in the chroot.
	policy := filepath.Join(dir, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0o755); err != nil {
		return "", err
	}
	if err := step("apt-get install apache2 (chroot)", "chroot", dir, "sh", "-c",
		"apt-get update && apt-get install -y --no-install-recommends apache2 && apt-get clean"); err != nil {
		// The chroot may not reach the mirror everywhere; debootstrap can
		// resolve the package from outside instead.
		log.Printf("rootfs: chroot install failed (%v); retrying with debootstrap --include=apache2", err)
		if err := os.RemoveAll(dir); err != nil {
			return "", err
		}
		if err := step("debootstrap --include=apache2", "debootstrap", "--variant=minbase", "--include=apache2", "bookworm", dir, cfg.mirror); err != nil {
			return "", err
		}
	}
	for _, p := range []string{"usr/sbin/policy-rc.d", "var/lib/apt/lists", "var/cache/apt"} {
		if err := os.RemoveAll(filepath.Join(dir, p)); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "var/lib/apt/lists/partial"), 0o755); err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "usr/sbin/apache2")); err != nil {
		return "", fmt.Errorf("rootfs has no apache2: %w", err)
	}
	if err := os.WriteFile(done, []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644); err != nil {
		return "", err
	}
	log.Printf("rootfs: built in %.0fs", time.Since(start).Seconds())
	return dir, nil
}
