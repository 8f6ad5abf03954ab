package api

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// Error is an error as the API reports it:
// {"error":{"code":"...","message":"..."}}. The client returns it too, so
// callers on either side of the wire see the same message.
type Error struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// statusTable is the one place where store errors become HTTP statuses.
var statusTable = []struct {
	err    error
	status int
	code   string
}{
	{store.ErrNotFound, http.StatusNotFound, "not_found"},
	{store.ErrNameTooLong, http.StatusBadRequest, "bad_key"},
	{store.ErrBadKey, http.StatusBadRequest, "bad_key"},
	{store.ErrBadScope, http.StatusBadRequest, "bad_scope"},
	{store.ErrBadArgument, http.StatusBadRequest, "bad_argument"},
	{store.ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large"},
	{store.ErrOverQuota, http.StatusInsufficientStorage, "quota_exceeded"},
	{store.ErrNoSpace, http.StatusInsufficientStorage, "no_space"},
	{store.ErrIntegrity, http.StatusInternalServerError, "integrity"},
	{index.ErrCorruptRecord, http.StatusInternalServerError, "integrity"},
	{store.ErrIndexDamaged, http.StatusInternalServerError, "index_damaged"},
	{store.ErrReadOnly, http.StatusServiceUnavailable, "read_only"},
	{store.ErrLocked, http.StatusServiceUnavailable, "locked"},
	{store.ErrClosed, http.StatusServiceUnavailable, "closed"},
}

// ErrorOf classifies err as the API reports it (status, code, message).
func ErrorOf(err error) *Error {
	var ae *Error
	if errors.As(err, &ae) {
		return ae
	}
	for _, m := range statusTable {
		if errors.Is(err, m.err) {
			return &Error{Status: m.status, Code: m.code, Message: err.Error()}
		}
	}
	// A backend behind a socket (the mount daemon) that does not answer.
	var oe *net.OpError
	if errors.As(err, &oe) {
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: err.Error()}
	}
	return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
}

func writeError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(map[string]*Error{"error": e})
}
