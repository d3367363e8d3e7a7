package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// CheckAuthFile refuses an auth file named explicitly (--authfile or $REGISTRY_AUTH_FILE) that
// does not exist, as podman does: a typo must not silently mean "anonymous".
func CheckAuthFile(path string) error {
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("checking authfile: %v: %w", err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("checking authfile: %w", err)
	}
	return nil
}

// ExplicitAuthFile is the auth file a user named: flag, else $REGISTRY_AUTH_FILE, else "".
func ExplicitAuthFile(flag string) string {
	if flag != "" {
		return flag
	}
	return os.Getenv("REGISTRY_AUTH_FILE")
}

// PrimaryAuthFile is the file login writes and logout edits (the first of AuthFilePaths).
func (k *Keychain) PrimaryAuthFile() string { return k.AuthFilePaths()[0].Path }

// NormalizeKey turns a login argument (HOST[:PORT][/NAMESPACE], or a docker-style URL) into the
// key auth files use.
func NormalizeKey(s string) string { return normalizeKey(strings.TrimSuffix(s, "/")) }

// Store saves c under key in the auth file at path, or in the credential helper that file's
// "credHelpers" names for key (podman login does the same). It returns where c went.
func Store(path, key string, c Credential) (Source, error) {
	doc, raw, err := loadForEdit(path)
	if err != nil {
		return Source{}, err
	}
	if name, ok := doc.helpers[key]; ok {
		return Source{Kind: FromHelper, Name: name}, HelperStore(name, key, c)
	}
	entry := map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(c.Username + ":" + c.Password))}
	if c.IdentityToken != "" {
		entry = map[string]string{"identitytoken": c.IdentityToken}
	}
	auths := rawAuths(raw)
	auths[key], _ = json.Marshal(entry)
	return Source{Kind: FromFile, Name: path}, writeAuthFile(path, raw, auths)
}

// Erase removes key's credential from the auth file at path (or from its helper);
// errdefs.ErrNotFound when there was none.
func Erase(path, key string) (Source, error) {
	doc, raw, err := loadForEdit(path)
	if err != nil {
		return Source{}, err
	}
	if name, ok := doc.helpers[key]; ok {
		return Source{Kind: FromHelper, Name: name}, HelperErase(name, key)
	}
	auths := rawAuths(raw)
	found := false
	for k := range auths {
		if normalizeKey(k) == key {
			delete(auths, k)
			found = true
		}
	}
	if !found {
		return Source{}, fmt.Errorf("not logged into %s (auth file %s): %w", key, path, errdefs.ErrNotFound)
	}
	return Source{Kind: FromFile, Name: path}, writeAuthFile(path, raw, auths)
}

// EraseAll removes every "auths" entry of the auth file at path and the credentials its
// "credHelpers" keep for their registries (podman logout --all). A missing file is no error.
func EraseAll(path string) error {
	doc, raw, err := loadForEdit(path)
	if err != nil || raw == nil {
		return err
	}
	for _, key := range slices.Sorted(maps.Keys(doc.helpers)) {
		if err := HelperErase(doc.helpers[key], key); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	return writeAuthFile(path, raw, map[string]json.RawMessage{})
}

// loadForEdit reads the file both parsed (to validate it and find helpers) and as raw JSON
// (to keep every field Kura does not know when writing it back). A missing file is empty.
func loadForEdit(path string) (authDoc, map[string]json.RawMessage, error) {
	doc, err := readAuthFile(AuthFile{Path: path})
	if err != nil {
		return authDoc{}, nil, err
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return doc, nil, nil
	}
	if err != nil {
		return authDoc{}, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxAuthFileSize))
	if err != nil {
		return authDoc{}, nil, err
	}
	raw := map[string]json.RawMessage{}
	if len(strings.TrimSpace(string(data))) > 0 {
		if err := json.Unmarshal(data, &raw); err != nil {
			return authDoc{}, nil, fmt.Errorf("parsing auth file %s: %v: %w", path, err, errdefs.ErrInvalid)
		}
	}
	return doc, raw, nil
}

func rawAuths(raw map[string]json.RawMessage) map[string]json.RawMessage {
	auths := map[string]json.RawMessage{}
	json.Unmarshal(raw["auths"], &auths) // validated by readAuthFile
	return auths
}

// writeAuthFile replaces path atomically (temp file, fsync, rename) with mode 0600, in a
// directory created 0700: the file holds secrets, and a crash must leave the old or the new one.
func writeAuthFile(path string, raw, auths map[string]json.RawMessage) error {
	if raw == nil {
		raw = map[string]json.RawMessage{}
	}
	var err error
	if raw["auths"], err = json.Marshal(auths); err != nil {
		return err
	}
	data, err := json.MarshalIndent(raw, "", "\t")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("auth file directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("writing auth file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename there is nothing left to remove
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("writing auth file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
