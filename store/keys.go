package store

import (
	"fmt"
	"time"
)

// MaxKeyLen is the longest key, in bytes (a file name's limit).
const MaxKeyLen = 255

// ValidateKey checks a key against the contract: ^[A-Za-z0-9][A-Za-z0-9._-]*$,
// at most 255 bytes, and not a reserved name (leading '.' or '_', which the
// mount uses for virtual files).
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrBadKey)
	case len(key) > MaxKeyLen:
		return ErrNameTooLong
	case key[0] == '.' || key[0] == '_':
		return fmt.Errorf("%w: %q", ErrReservedKey, key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			i > 0 && (c == '.' || c == '_' || c == '-')) {
			return fmt.Errorf("%w: %q: byte %d is %q (allowed: letters, digits, and . _ - after the first)", ErrBadKey, key, i, c)
		}
	}
	return nil
}

// Limits on per-key metadata given with a put.
const (
	maxContentType = 255
	maxMetaEntries = 256
	maxMetaName    = 255
	maxMetaValue   = 64 << 10
	maxTTL         = 100 * 365 * 24 * time.Hour
)

func validateContentType(ct string) error {
	if len(ct) > maxContentType {
		return fmt.Errorf("%w: content type longer than %d bytes", ErrBadArgument, maxContentType)
	}
	for i := 0; i < len(ct); i++ {
		if ct[i] < 0x20 || ct[i] > 0x7e {
			return fmt.Errorf("%w: content type %q has a control or non-ASCII byte", ErrBadArgument, ct)
		}
	}
	return nil
}

// ValidateMetaName checks the name of a free metadata field: letters,
// digits, '.', '_' and '-', 1 to 255 bytes.
func ValidateMetaName(name string) error {
	if name == "" || len(name) > maxMetaName {
		return fmt.Errorf("%w: metadata name must be 1 to %d bytes", ErrBadArgument, maxMetaName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: metadata name %q: only letters, digits, '.', '_' and '-'", ErrBadArgument, name)
		}
	}
	return nil
}

func validateMeta(meta map[string]string) error {
	if len(meta) > maxMetaEntries {
		return fmt.Errorf("%w: more than %d metadata fields", ErrBadArgument, maxMetaEntries)
	}
	for k, v := range meta {
		if err := ValidateMetaName(k); err != nil {
			return err
		}
		if len(v) > maxMetaValue {
			return fmt.Errorf("%w: metadata %q longer than %d bytes", ErrBadArgument, k, maxMetaValue)
		}
	}
	return nil
}

func validateTTL(ttl time.Duration) error {
	if ttl < 0 || ttl > maxTTL {
		return fmt.Errorf("%w: ttl %s out of range (0 to 100 years)", ErrBadArgument, ttl)
	}
	return nil
}
