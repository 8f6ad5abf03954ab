//go:build race

package fs

// raceEnabled: the race detector is on (sync.Pool then drops items at
// random, so pooled buffers count as allocations).
const raceEnabled = true
