package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkPutOrderInterleaved4K compares the two ways of making a new
// blob's name durable (durable.go) at the same moments on the same disk:
// per op, one durable 4 KiB put into a store using the portable order
// (fsync, rename, fsync of the directory) and one into a store using the
// order detected for its filesystem, alternating which goes first. It
// reports each one's mean and their ratio (detected/portable); on a
// filesystem without the fast order both stores use the portable one.
func BenchmarkPutOrderInterleaved4K(b *testing.B) {
	open := func(order nameDurability, detected bool) *Store {
		s, err := Open(b.TempDir(), Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		<-s.sweepDone
		if !detected {
			s.durability = order
		}
		return s
	}
	portable := open(syncDirAfterRename, false)
	fast := open(0, true)
	b.Logf("detected order: %s", fast.durability)
	run := rand.Uint64()
	value := func(tag, i int) []byte {
		v := make([]byte, 4096)
		r := rand.NewPCG(run, uint64(i)<<1|uint64(tag))
		for j := 0; j < len(v); j += 8 {
			binary.LittleEndian.PutUint64(v[j:], r.Uint64())
		}
		return v
	}
	var tPortable, tFast time.Duration
	put := func(s *Store, tag, i int, acc *time.Duration) {
		v := value(tag, i)
		t0 := time.Now()
		if _, err := s.Put("task", fmt.Sprintf("p%08d", i), bytes.NewReader(v), PutOptions{}); err != nil {
			b.Fatal(err)
		}
		*acc += time.Since(t0)
	}
	b.SetBytes(2 * 4096)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			put(portable, 0, i, &tPortable)
			put(fast, 1, i, &tFast)
		} else {
			put(fast, 1, i, &tFast)
			put(portable, 0, i, &tPortable)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(tPortable.Nanoseconds())/float64(b.N), "portable-ns/op")
	b.ReportMetric(float64(tFast.Nanoseconds())/float64(b.N), "detected-ns/op")
	b.ReportMetric(float64(tFast)/float64(tPortable), "detected/portable")
}

// BenchmarkPutOrder4K is a durable 4 KiB put with each order alone (for
// counting syncs with strace: `-bench PutOrder4K/portable`).
func BenchmarkPutOrder4K(b *testing.B) {
	for _, order := range durabilityOrders {
		name := "portable"
		if order == fileSyncAfterRename {
			name = "rename-first"
		}
		b.Run(name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			<-s.sweepDone
			s.durability = order
			run := rand.Uint64()
			v := make([]byte, 4096)
			b.SetBytes(4096)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				binary.LittleEndian.PutUint64(v, run)
				binary.LittleEndian.PutUint64(v[8:], uint64(i))
				if _, err := s.Put("task", fmt.Sprintf("p%08d", i), bytes.NewReader(v), PutOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
