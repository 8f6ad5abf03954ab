package store

// Watch registers fn to be called after every committed change of a key:
// a put, delete, rename (both names), metadata change, expiry reclaimed by
// a prune or a write, clear, or a repair that dropped it. The mount uses it
// to invalidate the kernel's caches, whichever way the change came (the
// mount itself, the admin socket). fn runs on the committing goroutine and
// must not block. The returned function unregisters it.
func (s *Store) Watch(fn func(scope, key string)) (cancel func()) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	s.nextWatch++
	id := s.nextWatch
	next := make(map[int]func(scope, key string), len(s.watchers)+1)
	for k, v := range s.watchers {
		next[k] = v
	}
	next[id] = fn
	s.watchers = next
	return func() {
		s.watchMu.Lock()
		defer s.watchMu.Unlock()
		next := make(map[int]func(scope, key string), len(s.watchers))
		for k, v := range s.watchers {
			if k != id {
				next[k] = v
			}
		}
		s.watchers = next
	}
}

func (s *Store) changed(scope, key string) {
	s.watchMu.Lock()
	ws := s.watchers
	s.watchMu.Unlock()
	for _, fn := range ws {
		fn(scope, key)
	}
}
