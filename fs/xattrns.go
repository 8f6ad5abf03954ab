package fs

import (
	"strings"
	"syscall"
)

// Only the user namespace exists here: user.iris.* carries each entry's
// metadata. security.*, system.* (POSIX ACLs) and trusted.* are not
// supported, and every request for them says so with ENOTSUP, as a kernel
// filesystem without a handler for the namespace does. The answer matters
// for speed: `ls -l` asks every file for security.selinux and
// system.posix_acl_access, and remembers ENOTSUP per device (coreutils'
// getfilecon_cache and file_has_acl_cache) but not ENODATA, so ENOTSUP
// turns 2 round trips per listed file into 2 per listing.
func foreignXattr(attr string) bool {
	return !strings.HasPrefix(attr, "user.")
}

// absentXattr answers a get or remove of attr on a node that has no such
// attribute: ENOTSUP outside the user namespace, ENODATA inside it.
func absentXattr(attr string) syscall.Errno {
	if foreignXattr(attr) {
		return syscall.ENOTSUP
	}
	return syscall.ENODATA
}
