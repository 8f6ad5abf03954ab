package store_test

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

const utTinyPolicy = "scopes: {task: {quota: 100B}}"

func TestQuotaRejectsAndKeepsOldValue(t *testing.T) {
	s, _ := utOpen(t, store.Options{Policy: utPolicy(t, utTinyPolicy)})
	a60 := strings.Repeat("a", 60)
	utPut(t, s, "task", "a", a60, store.PutOptions{})

	// A new key that would take the scope past its quota.
	_, err := s.Put("task", "b", strings.NewReader(strings.Repeat("b", 50)), store.PutOptions{})
	utMustFail(t, err, store.ErrOverQuota, "put past the quota")
	if errors.Is(err, store.ErrTooLarge) {
		t.Fatalf("over-quota error also matches ErrTooLarge: %v", err)
	}
	_, _, err = s.Get("task", "b")
	utMustFail(t, err, store.ErrNotFound, "Get of the refused key")
	utMustGet(t, s, "task", "a", a60)

	// Replacing a value counts only the difference: 60 -> 100 fits.
	a100 := strings.Repeat("A", 100)
	utPut(t, s, "task", "a", a100, store.PutOptions{})
	utMustGet(t, s, "task", "a", a100)
	if u, _ := s.ScopeUsage("task"); u.Bytes != 100 || u.Keys != 1 {
		t.Fatalf("usage %+v", u)
	}
	// A value larger than the whole quota: ErrTooLarge, old value intact.
	_, err = s.Put("task", "a", strings.NewReader(strings.Repeat("x", 101)), store.PutOptions{})
	utMustFail(t, err, store.ErrTooLarge, "put larger than the quota")
	if errors.Is(err, store.ErrOverQuota) {
		t.Fatalf("too-large error also matches ErrOverQuota: %v", err)
	}
	utMustGet(t, s, "task", "a", a100)
	// Even an empty scope refuses it.
	_, err = s.Put("task", "other", strings.NewReader(strings.Repeat("x", 101)), store.PutOptions{})
	utMustFail(t, err, store.ErrTooLarge, "too large for an empty key")
	// A zero-byte value fits in a full scope.
	utPut(t, s, "task", "zero", "", store.PutOptions{})

	if n := s.Counters().QuotaRejects.Load(); n != 3 {
		t.Fatalf("QuotaRejects = %d, want 3", n)
	}
	// Refused puts leave no files behind.
	if files := utBlobFiles(t, s); len(files) != 2 {
		t.Fatalf("blob files %v, want the two live values", files)
	}
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files %v", tmp)
	}
	// Other scopes keep their default quota.
	utPut(t, s, "system", "big", strings.Repeat("s", 1000), store.PutOptions{})
	utFsckClean(t, s)
}

func TestWriterRefusesPastQuotaAsDataArrives(t *testing.T) {
	s, _ := utOpen(t, store.Options{Policy: utPolicy(t, utTinyPolicy)})
	utPut(t, s, "task", "a", strings.Repeat("a", 50), store.PutOptions{})

	w, err := s.NewWriter("task", "b", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if n, err := w.Write([]byte(strings.Repeat("b", 40))); err != nil || n != 40 {
		t.Fatalf("Write within the quota: %d %v", n, err)
	}
	// 40 + 20 = 60 > 50 bytes of room: refused now, nothing written.
	n, err := w.Write([]byte(strings.Repeat("c", 20)))
	utMustFail(t, err, store.ErrOverQuota, "Write past the room")
	if n != 0 || w.Size() != 40 {
		t.Fatalf("refused Write wrote %d bytes, size now %d", n, w.Size())
	}
	// The exact room is fine.
	if _, err := w.Write([]byte(strings.Repeat("d", 10))); err != nil {
		t.Fatalf("Write up to the room: %v", err)
	}
	utMustFail(t, w.Truncate(51), store.ErrOverQuota, "Truncate past the room")
	utMustFail(t, w.Truncate(101), store.ErrTooLarge, "Truncate past the whole quota")
	_, err = w.WriteAt([]byte("z"), 100)
	utMustFail(t, err, store.ErrTooLarge, "WriteAt past the whole quota")
	_, err = w.WriteAt([]byte("z"), 50)
	utMustFail(t, err, store.ErrOverQuota, "WriteAt past the room")
	// Overwriting inside the value and shrinking are always fine.
	if _, err := w.WriteAt([]byte("XY"), 10); err != nil {
		t.Fatal(err)
	}
	if err := w.Truncate(45); err != nil {
		t.Fatal(err)
	}
	if w.Size() != 45 {
		t.Fatalf("size %d", w.Size())
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	want := strings.Repeat("b", 10) + "XY" + strings.Repeat("b", 28) + strings.Repeat("d", 5)
	utMustGet(t, s, "task", "b", want)
	if u, _ := s.ScopeUsage("task"); u.Bytes != 95 || u.Keys != 2 {
		t.Fatalf("usage %+v", u)
	}
}

// A writer admitted while data arrived is checked again at Commit: another
// put may have used the room meanwhile.
func TestQuotaCheckedAgainAtCommit(t *testing.T) {
	s, _ := utOpen(t, store.Options{Policy: utPolicy(t, utTinyPolicy)})
	w, err := s.NewWriter("task", "late", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte(strings.Repeat("l", 50))); err != nil {
		t.Fatal(err)
	}
	utPut(t, s, "task", "early", strings.Repeat("e", 60), store.PutOptions{})
	_, err = w.Commit()
	utMustFail(t, err, store.ErrOverQuota, "Commit past the quota")
	_, _, err = s.Get("task", "late")
	utMustFail(t, err, store.ErrNotFound, "Get of the refused key")
	utMustGet(t, s, "task", "early", strings.Repeat("e", 60))
	if _, err := os.Stat(s.BlobPath(utFP(strings.Repeat("l", 50)))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused value's blob was left: %v", err)
	}
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files %v", tmp)
	}
	if n := s.Counters().QuotaRejects.Load(); n != 1 {
		t.Fatalf("QuotaRejects %d", n)
	}
	utFsckClean(t, s)
}

func TestTTLBoundaryWithInjectedClock(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	e := utPut(t, s, "task", "k", "value", store.PutOptions{})
	p := utPut(t, s, "task", "short", "6h value", store.PutOptions{TTL: 6 * time.Hour})
	expiry := utT0.Add(24 * time.Hour)
	if !e.ExpiresAt.Equal(expiry) || !p.ExpiresAt.Equal(utT0.Add(6*time.Hour)) {
		t.Fatalf("expiries %v %v", e.ExpiresAt, p.ExpiresAt)
	}

	clk.Set(expiry.Add(-time.Nanosecond))
	utMustGet(t, s, "task", "k", "value")
	if _, err := s.Lookup("task", "k"); err != nil {
		t.Fatalf("Lookup one ns before expiry: %v", err)
	}
	names := utListNames(t, s, "task")
	if !slices.Equal(names, []string{"k"}) {
		t.Fatalf("List one ns before expiry: %v (the 6h key must be gone)", names)
	}

	clk.Set(expiry)
	_, _, err := s.Get("task", "k")
	utMustFail(t, err, store.ErrNotFound, "Get at the instant of expiry")
	_, err = s.Lookup("task", "k")
	utMustFail(t, err, store.ErrNotFound, "Lookup at the instant of expiry")
	_, err = s.Open("task", "k")
	utMustFail(t, err, store.ErrNotFound, "Open at the instant of expiry")
	if names := utListNames(t, s, "task"); len(names) != 0 {
		t.Fatalf("List at expiry: %v", names)
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	task := utScopeStats(t, st, "task")
	if task.Keys != 0 || task.Bytes != 0 || task.ExpiredKeys != 2 || task.ExpiredBytes != int64(len("value")+len("6h value")) {
		t.Fatalf("stats of a scope with only expired keys: %+v", task)
	}
	// An expired key is not updatable, renamable or deletable: it is gone.
	_, err = s.UpdateMeta("task", "k", func(e *index.Entry) error { return nil })
	utMustFail(t, err, store.ErrNotFound, "UpdateMeta of an expired key")
	utMustFail(t, s.Rename("task", "k", "k2"), store.ErrNotFound, "Rename of an expired key")
	utMustFail(t, s.Delete("task", "k"), store.ErrNotFound, "Delete of an expired key")
	// Delete removed it all the same.
	if u, _ := s.ScopeUsage("task"); u.Keys != 1 {
		t.Fatalf("usage after deleting an expired key: %+v", u)
	}
	// Writing the key again brings it back with a fresh expiry.
	e = utPut(t, s, "task", "k", "again", store.PutOptions{})
	if !e.ExpiresAt.Equal(expiry.Add(24 * time.Hour)) {
		t.Fatalf("new expiry %v", e.ExpiresAt)
	}
	utMustGet(t, s, "task", "k", "again")
}

func TestScopeWithoutTTLNeverExpires(t *testing.T) {
	s, clk := utOpen(t, store.Options{Policy: utPolicy(t, "scopes: {project: {ttl: 0}}")})
	e := utPut(t, s, "project", "forever", "v", store.PutOptions{})
	if !e.ExpiresAt.IsZero() || e.TTL != 0 {
		t.Fatalf("entry of a ttl-0 scope: expires %v ttl %v", e.ExpiresAt, e.TTL)
	}
	clk.Add(100 * 365 * 24 * time.Hour)
	utMustGet(t, s, "project", "forever", "v")
	// A per-key TTL still applies.
	utPut(t, s, "project", "brief", "v", store.PutOptions{TTL: time.Hour})
	clk.Add(time.Hour)
	if _, err := s.Lookup("project", "brief"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("per-key TTL in a ttl-0 scope: %v", err)
	}
}

func TestListAndStats(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "b", "bb", store.PutOptions{})
	utPut(t, s, "task", "a", "a", store.PutOptions{})
	utPut(t, s, "task", "c", "ccc", store.PutOptions{TTL: time.Minute})
	utPut(t, s, "system", "s", "ssss", store.PutOptions{})
	if names := utListNames(t, s, "task"); !slices.Equal(names, []string{"a", "b", "c"}) {
		t.Fatalf("List: %v", names)
	}
	clk.Add(time.Minute)
	if names := utListNames(t, s, "task"); !slices.Equal(names, []string{"a", "b"}) {
		t.Fatalf("List hides expired: %v", names)
	}
	if names := utListNames(t, s, "artifacts"); len(names) != 0 {
		t.Fatalf("List of an empty scope: %v", names)
	}
	if _, err := s.List("nosuch"); !errors.Is(err, store.ErrBadScope) {
		t.Fatalf("List of an unknown scope: %v", err)
	}
	utMustGet(t, s, "task", "a", "a")
	utMustGet(t, s, "task", "a", "a")
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	task := utScopeStats(t, st, "task")
	if task.Keys != 2 || task.Bytes != 3 || task.ExpiredKeys != 1 || task.ExpiredBytes != 3 ||
		task.QuotaBytes != 100<<20 || task.TTLHours != 24 || task.Utilisation != 3.0/float64(100<<20) {
		t.Fatalf("task stats %+v", task)
	}
	sys := utScopeStats(t, st, "system")
	if sys.Keys != 1 || sys.Bytes != 4 || sys.TTLHours != 168 {
		t.Fatalf("system stats %+v", sys)
	}
	if st.Keys != 3 || st.Bytes != 7 || st.QuotaBytes != 335<<20 || len(st.Scopes) != 5 {
		t.Fatalf("totals %+v", st)
	}
	if st.Hits != 1 || st.Misses != 1 || st.HotEntries != 1 || st.HotBytes != 1 {
		t.Fatalf("read counters %+v", st)
	}
	var order []string
	for _, sc := range st.Scopes {
		order = append(order, sc.Name)
	}
	if !slices.Equal(order, []string{"system", "instructions", "project", "task", "artifacts"}) {
		t.Fatalf("stats order %v", order)
	}
}

func TestPruneReclaimsExpired(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "a", "aaa", store.PutOptions{TTL: time.Hour})
	utPut(t, s, "task", "b", "bbb", store.PutOptions{})
	utPut(t, s, "artifacts", "c", "bbb", store.PutOptions{TTL: time.Hour}) // shares b's blob
	utPut(t, s, "system", "d", "ddd", store.PutOptions{TTL: 90 * time.Minute})
	utFsckClean(t, s) // also waits for the startup sweep
	// An unreferenced blob file and a stray tmp file.
	orphan := s.BlobPath(utFP("nobody's"))
	if err := os.WriteFile(orphan, []byte("nobody's"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.Dir()+"/tmp/leftover.tmp", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	clk.Add(time.Hour)
	res, err := s.Prune()
	if err != nil {
		t.Fatal(err)
	}
	if res.Entries != 2 || res.Bytes != 6 || res.Files != 2 {
		t.Fatalf("Prune = %+v, want 2 entries, 6 bytes, 2 files", res)
	}
	if _, err := os.Stat(s.BlobPath(utFP("aaa"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob of a pruned entry left: %v", err)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan blob left: %v", err)
	}
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files left: %v", tmp)
	}
	utMustGet(t, s, "task", "b", "bbb")
	utMustGet(t, s, "system", "d", "ddd")
	if u, _ := s.ScopeUsage("task"); u.Bytes != 3 || u.Keys != 1 {
		t.Fatalf("task usage %+v", u)
	}
	if u, _ := s.ScopeUsage("artifacts"); u.Bytes != 0 || u.Keys != 0 {
		t.Fatalf("artifacts usage %+v", u)
	}
	if files := utBlobFiles(t, s); len(files) != 2 {
		t.Fatalf("blob files after prune: %v", files)
	}
	// Nothing more to do.
	if res, err := s.Prune(); err != nil || res != (store.PruneResult{}) {
		t.Fatalf("second Prune = %+v, %v", res, err)
	}
	clk.Add(30 * time.Minute)
	if res, _ := s.Prune(); res.Entries != 1 || res.Bytes != 3 {
		t.Fatalf("third Prune = %+v", res)
	}
	utFsckClean(t, s)
}

func TestExpiredReclaimedWhenPutNeedsRoom(t *testing.T) {
	s, clk := utOpen(t, store.Options{Policy: utPolicy(t, utTinyPolicy)})
	old := strings.Repeat("o", 80)
	utPut(t, s, "task", "old", old, store.PutOptions{TTL: time.Hour})
	_, err := s.Put("task", "new", strings.NewReader(strings.Repeat("n", 80)), store.PutOptions{})
	utMustFail(t, err, store.ErrOverQuota, "put while the old entry lives")

	clk.Add(time.Hour)
	utPut(t, s, "task", "new", strings.Repeat("n", 80), store.PutOptions{})
	utMustGet(t, s, "task", "new", strings.Repeat("n", 80))
	if u, _ := s.ScopeUsage("task"); u.Bytes != 80 || u.Keys != 1 {
		t.Fatalf("usage after reclaim: %+v", u)
	}
	if _, err := os.Stat(s.BlobPath(utFP(old))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reclaimed entry's blob left: %v", err)
	}
	utFsckClean(t, s)
}

// The same reclaim happens at Commit, when the room was there as the data
// arrived but not any more when the value is published.
func TestExpiredReclaimedAtCommit(t *testing.T) {
	s, clk := utOpen(t, store.Options{Policy: utPolicy(t, utTinyPolicy)})
	dying := strings.Repeat("d", 60)
	utPut(t, s, "task", "dying", dying, store.PutOptions{TTL: time.Hour})
	w, err := s.NewWriter("task", "w", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// 60 + 30 <= 100: admitted as it arrives.
	if _, err := w.Write([]byte(strings.Repeat("w", 30))); err != nil {
		t.Fatal(err)
	}
	// Meanwhile another put takes the scope to 80 bytes.
	utPut(t, s, "task", "live", strings.Repeat("l", 20), store.PutOptions{})
	// "dying" dies but still counts until reclaimed: 80 + 30 > 100.
	clk.Add(2 * time.Hour)
	if _, err := w.Commit(); err != nil {
		t.Fatalf("Commit that fits once expired entries are reclaimed: %v", err)
	}
	utMustGet(t, s, "task", "w", strings.Repeat("w", 30))
	utMustGet(t, s, "task", "live", strings.Repeat("l", 20))
	if u, _ := s.ScopeUsage("task"); u.Bytes != 50 || u.Keys != 2 {
		t.Fatalf("usage %+v", u)
	}
	if _, err := os.Stat(s.BlobPath(utFP(dying))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reclaimed blob left: %v", err)
	}
	utFsckClean(t, s)
}

func TestClearScope(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "a", "1", store.PutOptions{})
	utPut(t, s, "task", "b", "2", store.PutOptions{})
	utPut(t, s, "task", "c", "shared", store.PutOptions{})
	utPut(t, s, "system", "keep", "shared", store.PutOptions{})
	n, err := s.Clear("task")
	if err != nil || n != 3 {
		t.Fatalf("Clear = %d, %v", n, err)
	}
	if names := utListNames(t, s, "task"); len(names) != 0 {
		t.Fatalf("List after Clear: %v", names)
	}
	if u, _ := s.ScopeUsage("task"); u != (quota.Usage{}) {
		t.Fatalf("usage after Clear: %+v", u)
	}
	utMustGet(t, s, "system", "keep", "shared")
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("blob files after Clear: %v", files)
	}
	if _, err := s.Clear("nosuch"); !errors.Is(err, store.ErrBadScope) {
		t.Fatalf("Clear of an unknown scope: %v", err)
	}
	utFsckClean(t, s)
}

func utListNames(t testing.TB, s *store.Store, scope string) []string {
	t.Helper()
	es, err := s.List(scope)
	if err != nil {
		t.Fatalf("List %s: %v", scope, err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Key)
	}
	return out
}

func utScopeStats(t testing.TB, st store.Stats, name string) store.ScopeStats {
	t.Helper()
	for _, sc := range st.Scopes {
		if sc.Name == name {
			return sc
		}
	}
	t.Fatalf("no stats for scope %s", name)
	return store.ScopeStats{}
}

// TestListAttrsAgreesWithList: the filesystem's listing (ListAttrs) has
// exactly List's keys, in order, with List's attributes, and hides an entry
// from the instant it expires.
func TestListAttrsAgreesWithList(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "b", "bb", store.PutOptions{Meta: map[string]string{"x": "y"}, ContentType: "text/x"})
	utPut(t, s, "task", "a", "a", store.PutOptions{Mode: 0o600, UID: 5, GID: 6})
	utPut(t, s, "task", "c", "ccc", store.PutOptions{TTL: time.Minute})
	check := func(want []string) {
		t.Helper()
		full, err := s.List("task")
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.ListAttrs("task")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(full) || len(got) != len(want) {
			t.Fatalf("ListAttrs %d keys, List %d, want %v", len(got), len(full), want)
		}
		for i := range got {
			if got[i].Key != want[i] || got[i].Key != full[i].Key || got[i].Attrs != full[i].Attrs() {
				t.Fatalf("ListAttrs[%d] = %+v, List has %+v", i, got[i], full[i])
			}
		}
	}
	check([]string{"a", "b", "c"})
	clk.Add(time.Minute - time.Nanosecond)
	check([]string{"a", "b", "c"})
	clk.Add(time.Nanosecond)
	check([]string{"a", "b"})
	if _, err := s.ListAttrs("nosuch"); !errors.Is(err, store.ErrBadScope) {
		t.Fatalf("ListAttrs of an unknown scope: %v", err)
	}
}
