package fs

import (
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// shownMeta is what an entry holds besides its attributes (index.Attrs):
// what only the extended attributes show.
type shownMeta struct {
	contentType string
	ttl         time.Duration
	flags       uint32
	meta        map[string]string
}

func metaOf(e *index.Entry) shownMeta {
	return shownMeta{contentType: e.ContentType, ttl: e.TTL, flags: e.Flags, meta: e.Meta}
}

// setIn puts m into e.
func (m *shownMeta) setIn(e *index.Entry) {
	e.ContentType, e.TTL, e.Flags, e.Meta = m.contentType, m.ttl, m.flags, m.meta
}
