package registrytest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestHarness checks the pieces the client tests rely on: token auth is enforced, the token
// server issues usable tokens, and the registry answers multi-range with multipart.
func TestHarness(t *testing.T) {
	reg := New(t)
	blob := []byte(strings.Repeat("0123456789", 1000))
	desc := reg.PushBlob(t, "test/app", blob)
	u := "http://" + reg.Host + "/v2/test/app/blobs/" + desc.Digest.String()

	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer realm=") {
		t.Fatalf("anonymous GET: %s %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
	}
	realm := strings.Split(strings.Split(resp.Header.Get("WWW-Authenticate"), `realm="`)[1], `"`)[0]
	req, _ := http.NewRequest(http.MethodGet, realm+"?service="+service+"&scope=repository:test/app:pull", nil)
	req.SetBasicAuth(Username, "wrong")
	if resp, _ := http.DefaultClient.Do(req); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad password: %s", resp.Status)
	}
	req.SetBasicAuth(Username, Password)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var tok struct{ Token string }
	json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()

	req, _ = http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Range", "bytes=0-9,100-109")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !strings.HasPrefix(resp.Header.Get("Content-Type"), "multipart/byteranges") {
		t.Fatalf("multi-range GET: %s %q %s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	if got := reg.Proxy.BlobRequests(); len(got) != 2 || got[1].Status != http.StatusPartialContent {
		t.Fatalf("proxy log: %+v", got)
	}
}
