//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestPutStreamsLargeValue puts a 100 MiB value through the real CLI from a
// pipe and checks the CLI's peak RSS stays far below the value's size: the
// value was streamed, never held in memory. Then get streams it back intact.
func TestPutStreamsLargeValue(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100 MiB; skipped with -short")
	}
	const (
		size   = 100 << 20
		maxRSS = 60 << 10 // KiB
	)
	bin := cliPath(t)
	dir := filepath.Join(t.TempDir(), "store")

	want := sha256.New()
	put := exec.Command(bin, "--store", dir, "put", "artifacts", "big")
	// Not an *os.File: exec copies it into a pipe, so the CLI reads a
	// stream whose length it cannot know in advance.
	put.Stdin = io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1}), size), want)
	var out, errb bytes.Buffer
	put.Stdout, put.Stderr = &out, &errb
	if err := put.Run(); err != nil {
		t.Fatalf("put: %v\nstderr: %s", err, errb.String())
	}
	wantSum := hex.EncodeToString(want.Sum(nil))
	if !bytes.Contains(out.Bytes(), []byte("artifacts/big: 104857600 bytes, sha256 "+wantSum)) {
		t.Fatalf("put printed %q, want 104857600 bytes with sha256 %s", out.String(), wantSum)
	}
	rss := maxRSSKiB(t, put)
	t.Logf("put of %d MiB from a pipe: peak RSS %d KiB", size>>20, rss)
	if rss >= maxRSS {
		t.Errorf("put's peak RSS is %d KiB, want < %d KiB: the value was not streamed", rss, maxRSS)
	}

	got := sha256.New()
	cw := &countWriter{h: got}
	get := exec.Command(bin, "--store", dir, "get", "artifacts", "big")
	errb.Reset()
	get.Stdout, get.Stderr = cw, &errb
	if err := get.Run(); err != nil {
		t.Fatalf("get: %v\nstderr: %s", err, errb.String())
	}
	if cw.n != size {
		t.Fatalf("get wrote %d bytes, want %d", cw.n, size)
	}
	if gotSum := hex.EncodeToString(got.Sum(nil)); gotSum != wantSum {
		t.Fatalf("get returned sha256 %s, want %s", gotSum, wantSum)
	}
	rss = maxRSSKiB(t, get)
	t.Logf("get of %d MiB into a pipe: peak RSS %d KiB", size>>20, rss)
	if rss >= maxRSS {
		t.Errorf("get's peak RSS is %d KiB, want < %d KiB: the value was not streamed", rss, maxRSS)
	}
}

type countWriter struct {
	h hash.Hash
	n int64
}

func (w *countWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	return w.h.Write(p)
}

func maxRSSKiB(t *testing.T, cmd *exec.Cmd) int64 {
	t.Helper()
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatalf("no rusage for %s", cmd.Path)
	}
	return ru.Maxrss // KiB on Linux
}
