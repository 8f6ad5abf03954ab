package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// TokenEnv is the environment variable that may carry the API token.
const TokenEnv = "IRISKVFS_API_TOKEN"

// LoadToken returns the API token: the trimmed contents of file when it is
// given, else the trimmed value of env ("" when neither is set: no auth).
// A token file must be a regular file that neither group nor others may
// read or write, and the token must be non-empty printable ASCII without
// spaces (what a Bearer credential can carry).
func LoadToken(file, env string) (string, error) {
	if file == "" {
		tok := strings.TrimSpace(env)
		if env != "" {
			if err := checkToken(tok); err != nil {
				return "", fmt.Errorf("$%s: %w", TokenEnv, err)
			}
		}
		return tok, nil
	}
	fi, err := os.Stat(file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("token file %s: not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("token file %s: mode %04o lets group or others read it (chmod 600 %s)", file, perm, file)
	}
	if fi.Size() > 4096 {
		return "", fmt.Errorf("token file %s: larger than 4 KiB", file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if err := checkToken(tok); err != nil {
		return "", fmt.Errorf("token file %s: %w", file, err)
	}
	return tok, nil
}

func checkToken(tok string) error {
	if tok == "" {
		return errors.New("empty token")
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= 0x20 || tok[i] >= 0x7f {
			return errors.New("the token must be printable ASCII without spaces")
		}
	}
	return nil
}

// bearerOK reports whether r carries "Authorization: Bearer token". Both
// sides are hashed first, so the comparison takes the same time whatever
// the lengths and the contents.
func bearerOK(r *http.Request, token string) bool {
	h := r.Header.Get("Authorization")
	scheme, cred, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(cred)))
	want := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// requireToken wraps next: without the right bearer token, 401.
func requireToken(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !bearerOK(r, token) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="iriskvfs"`)
			writeError(w, &Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: "missing or wrong bearer token"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
