package store

import (
	"fmt"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
)

// Delete removes scope/key. An expired key is removed too, but reported as
// ErrNotFound: to its users it was already gone.
func (s *Store) Delete(scope, key string) error {
	if _, err := s.checkAddress(scope, key); err != nil {
		return opErr("rm", scope, key, err)
	}
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var dropped []index.Fingerprint
	var live bool
	err := s.db.Batch(func(tx *index.Tx) error {
		dropped, live = dropped[:0], false
		old, found, err := tx.Delete(scope, key)
		if err != nil || !found {
			return err
		}
		live = !old.ExpiredAt(s.now())
		if tx.Refs(old.Fingerprint) == 0 {
			dropped = append(dropped, old.Fingerprint)
		}
		return nil
	})
	s.removeBlobs(dropped)
	if err == nil {
		s.changed(scope, key)
		if !live {
			err = ErrNotFound
		}
	}
	return opErr("rm", scope, key, err)
}

// Rename moves the value of scope/from to scope/to, replacing what to held.
// The value keeps its fingerprint and metadata; the move is one commit.
func (s *Store) Rename(scope, from, to string) error {
	if _, err := s.checkAddress(scope, from); err != nil {
		return opErr("rename", scope, from, err)
	}
	if err := ValidateKey(to); err != nil {
		return opErr("rename", scope, to, err)
	}
	if from == to {
		_, err := s.lookup(scope, from)
		return opErr("rename", scope, from, err)
	}
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var dropped []index.Fingerprint
	err := s.db.Batch(func(tx *index.Tx) error {
		dropped = dropped[:0]
		e, found, err := tx.Get(scope, from)
		if err != nil {
			return err
		}
		if !found || e.ExpiredAt(s.now()) {
			return ErrNotFound
		}
		if _, _, err := tx.Delete(scope, from); err != nil {
			return err
		}
		e.Key = to
		prev, replaced, err := tx.Put(e)
		if err != nil {
			return err
		}
		if replaced && tx.Refs(prev.Fingerprint) == 0 {
			dropped = append(dropped, prev.Fingerprint)
		}
		return nil
	})
	s.removeBlobs(dropped)
	if err == nil {
		s.changed(scope, from)
		s.changed(scope, to)
	}
	return opErr("rename", scope, from, err)
}

// UpdateMeta changes the metadata of a live entry (content type, free
// metadata, mode, owner, times, TTL) without touching its value. fn edits
// the entry; Size and Fingerprint must stay as they are. A changed TTL
// restarts the entry's life from now, unless fn set ExpiresAt itself.
func (s *Store) UpdateMeta(scope, key string, fn func(e *index.Entry) error) (index.Entry, error) {
	if _, err := s.checkAddress(scope, key); err != nil {
		return index.Entry{}, opErr("setattr", scope, key, err)
	}
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var out index.Entry
	err := s.db.Batch(func(tx *index.Tx) error {
		e, found, err := tx.Get(scope, key)
		if err != nil {
			return err
		}
		now := s.now()
		if !found || e.ExpiredAt(now) {
			return ErrNotFound
		}
		before := e
		if err := fn(&e); err != nil {
			return err
		}
		if e.Size != before.Size || e.Fingerprint != before.Fingerprint || e.Scope != scope || e.Key != key {
			return fmt.Errorf("%w: metadata update may not change the value", ErrBadArgument)
		}
		if err := validateContentType(e.ContentType); err != nil {
			return err
		}
		if err := validateMeta(e.Meta); err != nil {
			return err
		}
		if err := validateTTL(e.TTL); err != nil {
			return err
		}
		if e.Mode&^0o7777 != 0 {
			return fmt.Errorf("%w: mode %o", ErrBadArgument, e.Mode)
		}
		if e.ContentType != before.ContentType {
			e.Flags |= index.FlagContentTypeSet
		}
		if e.TTL != before.TTL || !e.ExpiresAt.Equal(before.ExpiresAt) {
			e.Flags |= index.FlagTTLSet
		}
		if e.TTL != before.TTL && e.ExpiresAt.Equal(before.ExpiresAt) {
			e.ExpiresAt = time.Time{}
			if e.TTL > 0 {
				e.ExpiresAt = now.UTC().Add(e.TTL)
			}
		}
		e.ModTime = index.ClampTime(e.ModTime)
		e.ExpiresAt = index.ClampTime(e.ExpiresAt)
		out = e
		return tx.SetMeta(e)
	})
	if err == nil {
		s.changed(scope, key)
	}
	return out, opErr("setattr", scope, key, err)
}

// List returns the live entries of scope in key order.
func (s *Store) List(scope string) ([]index.Entry, error) {
	if _, err := s.scope(scope); err != nil {
		return nil, opErr("ls", scope, "", err)
	}
	now := s.now()
	var out []index.Entry
	err := s.db.View(func(tx *index.Tx) error {
		out = make([]index.Entry, 0, tx.Usage(scope).Keys)
		return tx.ForEach(scope, func(e *index.Entry) error {
			if !e.ExpiredAt(now) {
				out = append(out, *e)
			}
			return nil
		})
	})
	if len(out) >= releaseAfterScan {
		s.releaseIndexPages()
	}
	return out, opErr("ls", scope, "", err)
}

// ListAttrs is List for a filesystem: the live keys of scope in key order,
// each with only the attributes a file shows (index.Attrs). It allocates a
// key string per name and one slice, not an entry, content type and
// metadata map per key as List does.
func (s *Store) ListAttrs(scope string) ([]index.Listed, error) {
	if _, err := s.scope(scope); err != nil {
		return nil, opErr("ls", scope, "", err)
	}
	now := s.now()
	var out []index.Listed
	err := s.db.View(func(tx *index.Tx) error {
		out = make([]index.Listed, 0, tx.Usage(scope).Keys)
		return tx.ForEachAttrs(scope, func(k []byte, a *index.Attrs) error {
			if !a.ExpiredAt(now) {
				out = append(out, index.Listed{Key: string(k), Attrs: *a})
			}
			return nil
		})
	})
	if len(out) >= releaseAfterScan {
		s.releaseIndexPages()
	}
	return out, opErr("ls", scope, "", err)
}

// ForEachLive calls fn with every entry of scope alive now, in key order,
// inside one read of the index, without holding them all: the entry is only
// valid during the call, and fn must not call the store.
func (s *Store) ForEachLive(scope string, fn func(e *index.Entry)) error {
	if _, err := s.scope(scope); err != nil {
		return opErr("ls", scope, "", err)
	}
	now := s.now()
	n := 0
	err := s.db.View(func(tx *index.Tx) error {
		return tx.ForEach(scope, func(e *index.Entry) error {
			if !e.ExpiredAt(now) {
				n++
				fn(e)
			}
			return nil
		})
	})
	if n >= releaseAfterScan {
		s.releaseIndexPages()
	}
	return opErr("ls", scope, "", err)
}

// PruneResult says what a prune reclaimed.
type PruneResult struct {
	Entries int   `json:"expired_entries"`
	Bytes   int64 `json:"bytes"`
	Files   int   `json:"unreferenced_files"`
}

// Prune removes expired entries, then blob and temporary files nothing
// references.
func (s *Store) Prune() (PruneResult, error) {
	res, err := s.PruneExpired()
	if err != nil {
		return res, err
	}
	n, err := s.sweepOrphans()
	res.Files = n
	return res, opErr("prune", "", "", err)
}

// PruneExpired removes expired entries and their blobs, without the sweep
// of every file that Prune adds: the mount's background pruner runs it.
func (s *Store) PruneExpired() (PruneResult, error) {
	if s.closed.Load() {
		return PruneResult{}, ErrClosed
	}
	var res PruneResult
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var dropped []index.Fingerprint
	var gone [][2]string
	err := s.db.Update(func(tx *index.Tx) error {
		now := s.now()
		return tx.Expired(now, func(scope, key string) error {
			e, found, err := tx.Delete(scope, key)
			if err != nil || !found {
				return err
			}
			res.Entries++
			res.Bytes += e.Size
			gone = append(gone, [2]string{scope, key})
			if tx.Refs(e.Fingerprint) == 0 {
				dropped = append(dropped, e.Fingerprint)
			}
			return nil
		})
	})
	if err != nil {
		return PruneResult{}, opErr("prune", "", "", err)
	}
	s.removeBlobs(dropped)
	for _, sk := range gone {
		s.changed(sk[0], sk[1])
	}
	return res, nil
}

// reclaimExpired removes the expired entries of one scope (a write that
// would not fit otherwise). It returns how many it removed.
func (s *Store) reclaimExpired(scope string) (int, error) {
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var dropped []index.Fingerprint
	var keys []string
	err := s.db.Update(func(tx *index.Tx) error {
		var err error
		dropped, keys, err = reclaimExpiredTx(tx, scope, s.now())
		return err
	})
	s.removeBlobs(dropped)
	if err == nil {
		for _, k := range keys {
			s.changed(scope, k)
		}
	}
	return len(keys), err
}

// reclaimExpiredTx deletes the entries of scope dead at now; it returns the
// fingerprints left without references and the keys it removed.
func reclaimExpiredTx(tx *index.Tx, scope string, now time.Time) (dropped []index.Fingerprint, removed []string, err error) {
	err = tx.Expired(now, func(sc, key string) error {
		if sc != scope {
			return nil
		}
		e, found, err := tx.Delete(sc, key)
		if err != nil || !found {
			return err
		}
		removed = append(removed, key)
		if tx.Refs(e.Fingerprint) == 0 {
			dropped = append(dropped, e.Fingerprint)
		}
		return nil
	})
	return dropped, removed, err
}

// Clear removes every entry of scope and returns how many it removed.
func (s *Store) Clear(scope string) (int, error) {
	if _, err := s.scope(scope); err != nil {
		return 0, opErr("clear", scope, "", err)
	}
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	var dropped []index.Fingerprint
	var cleared []string
	n := 0
	err := s.db.Update(func(tx *index.Tx) error {
		var keys []string
		if err := tx.ForEach(scope, func(e *index.Entry) error {
			keys = append(keys, e.Key)
			return nil
		}); err != nil {
			return err
		}
		for _, k := range keys {
			e, found, err := tx.Delete(scope, k)
			if err != nil {
				return err
			}
			if found && tx.Refs(e.Fingerprint) == 0 {
				dropped = append(dropped, e.Fingerprint)
			}
		}
		n = len(keys)
		cleared = keys
		return nil
	})
	s.removeBlobs(dropped)
	for _, k := range cleared {
		s.changed(scope, k)
	}
	return n, opErr("clear", scope, "", err)
}

// ScopeStats describe one scope.
type ScopeStats struct {
	Name         string  `json:"scope"`
	Keys         int64   `json:"keys"`
	Bytes        int64   `json:"bytes"`
	QuotaBytes   int64   `json:"quota_bytes"`
	Utilisation  float64 `json:"utilisation"`
	TTLHours     float64 `json:"ttl_hours"`
	ExpiredKeys  int64   `json:"expired_keys"`
	ExpiredBytes int64   `json:"expired_bytes"`
}

// Stats describe the whole store.
type Stats struct {
	Scopes         []ScopeStats `json:"scopes"`
	Keys           int64        `json:"keys"`
	Bytes          int64        `json:"bytes"`
	QuotaBytes     int64        `json:"quota_bytes"`
	Hits           int64        `json:"hits"`
	Misses         int64        `json:"misses"`
	VerifyFailures int64        `json:"verification_failures"`
	QuotaRejects   int64        `json:"quota_rejections"`
	// JournalCommits and Checkpoints count, since the store was opened,
	// the index commits made durable by the journal alone and the
	// checkpoints that moved them into the index file.
	JournalCommits int64 `json:"journal_commits"`
	Checkpoints    int64 `json:"checkpoints"`
	HotEntries     int   `json:"hot_entries"`
	HotBytes       int64 `json:"hot_bytes"`
	// Reads counts opens per key of the tracked scopes ("scope/key").
	Reads map[string]int64 `json:"reads,omitempty"`
}

// Stats reports usage per scope. Keys and bytes count live entries; expired
// entries not yet pruned are reported apart (they still hold disk space and,
// until reclaimed, quota).
func (s *Store) Stats() (Stats, error) {
	if s.closed.Load() {
		return Stats{}, ErrClosed
	}
	var st Stats
	now := s.now()
	err := s.db.View(func(tx *index.Tx) error {
		expired := map[string]*ScopeStats{}
		for _, sc := range s.policy.Scopes() {
			expired[sc.Name] = &ScopeStats{}
		}
		if err := tx.Expired(now, func(scope, key string) error {
			x := expired[scope]
			if x == nil {
				return nil
			}
			e, found, err := tx.Get(scope, key)
			if err != nil || !found {
				return err
			}
			x.ExpiredKeys++
			x.ExpiredBytes += e.Size
			return nil
		}); err != nil {
			return err
		}
		for _, sc := range s.policy.Scopes() {
			u := tx.Usage(sc.Name)
			x := expired[sc.Name]
			ss := ScopeStats{
				Name: sc.Name, Keys: u.Keys - x.ExpiredKeys, Bytes: u.Bytes - x.ExpiredBytes,
				QuotaBytes: sc.Quota, TTLHours: sc.TTLHours(),
				ExpiredKeys: x.ExpiredKeys, ExpiredBytes: x.ExpiredBytes,
			}
			if sc.Quota > 0 {
				ss.Utilisation = float64(ss.Bytes) / float64(sc.Quota)
			}
			st.Scopes = append(st.Scopes, ss)
			st.Keys += ss.Keys
			st.Bytes += ss.Bytes
			st.QuotaBytes += sc.Quota
		}
		return nil
	})
	st.Hits = s.counters.Hits.Load()
	st.Misses = s.counters.Misses.Load()
	st.VerifyFailures = s.counters.VerifyFailures.Load()
	st.QuotaRejects = s.counters.QuotaRejects.Load()
	st.JournalCommits = s.db.JournalCommits.Load()
	st.Checkpoints = s.db.Checkpoints.Load()
	st.HotEntries, st.HotBytes = s.hot.size()
	if len(s.tracked) > 0 {
		st.Reads = s.Reads()
	}
	return st, opErr("stats", "", "", err)
}

// ScopeUsage returns the usage counters of scope (expired entries included).
func (s *Store) ScopeUsage(scope string) (quota.Usage, error) {
	if _, err := s.scope(scope); err != nil {
		return quota.Usage{}, err
	}
	var u index.Usage
	err := s.db.View(func(tx *index.Tx) error {
		u = tx.Usage(scope)
		return nil
	})
	return quota.Usage{Bytes: u.Bytes, Keys: u.Keys}, err
}
