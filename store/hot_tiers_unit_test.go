package store_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

// TestHotFirstScopesAreNotEvicted: a scope listed in HotFirstScopes keeps
// its values hot however many other values are read.
func TestHotFirstScopesAreNotEvicted(t *testing.T) {
	for _, first := range []bool{false, true} {
		opts := store.Options{HotBytes: 64 << 10}
		if first {
			opts.HotFirstScopes = []string{"instructions"}
		}
		s, _ := utOpen(t, opts)
		instr := strings.Repeat("i", 20<<10)
		utPut(t, s, "instructions", "set", instr, store.PutOptions{})
		utMustGet(t, s, "instructions", "set", instr) // now hot
		for i := 0; i < 10; i++ {                     // 200 KiB of other values
			v := strings.Repeat(fmt.Sprint(i), 20<<10)
			utPut(t, s, "task", fmt.Sprint("k", i), v, store.PutOptions{})
			utMustGet(t, s, "task", fmt.Sprint("k", i), v)
		}
		hits := s.Counters().Hits.Load()
		utMustGet(t, s, "instructions", "set", instr)
		gotHit := s.Counters().Hits.Load() == hits+1
		if gotHit != first {
			t.Errorf("HotFirstScopes %v: instruction read was a hit: %v", first, gotHit)
		}
	}
}
