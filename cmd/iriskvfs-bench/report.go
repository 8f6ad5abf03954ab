package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
)

// summary is the median and range of one series.
type summary struct{ med, lo, hi float64 }

// summarize skips the repetitions without a figure (NaN).
func summarize(v []float64) (summary, bool) {
	s := make([]float64, 0, len(v))
	for _, x := range v {
		if !math.IsNaN(x) {
			s = append(s, x)
		}
	}
	if len(s) == 0 {
		return summary{}, false
	}
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{med, s[0], s[len(s)-1]}, true
}

// num formats a figure with about three significant digits.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func (s summary) String() string {
	return fmt.Sprintf("%s (%s–%s)", num(s.med), num(s.lo), num(s.hi))
}

// ratios divides target by reference repetition by repetition, skipping
// the repetitions where either has no figure.
func ratios(ref, tgt []float64) []float64 {
	n := min(len(ref), len(tgt))
	out := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		if ref[i] > 0 && !math.IsNaN(ref[i]) && !math.IsNaN(tgt[i]) {
			out = append(out, tgt[i]/ref[i])
		}
	}
	return out
}

// goal is one of the targets for iriskvfs (or its --read-only
// mount): on the ratio to the row's reference, or on the figure itself
// when the row has no reference.
type goal struct {
	who   string
	le    bool // the figure must be at most limit (else at least)
	limit float64
	text  string
}

func (g goal) met(v float64) bool {
	if g.le {
		return v <= g.limit
	}
	return v >= g.limit
}

// row is one line of the tables.
type row struct {
	id, label, unit string
	metric          string
	higher          bool     // higher is better (MB/s, ops/s)
	ref             string   // reference target for the ratios; "" for absolute figures
	only            []string // the targets shown (nil: every target with figures)
	goals           []goal
	// cols shows another target in a column of the summary (the
	// loopback column shows loopback-ext4 in the ext4 rows).
	cols map[string]string
}

func (b *bench) rows() []row {
	sz := b.o.sz
	big := fmt.Sprintf("%d MB", sz.bigSize>>20)
	keys := fmt.Sprintf("%dk files", sz.keys/1000)
	// The rows against ext4 show the peers too: their files are on it.
	onExt4 := []string{tIris, tIrisRO, tLoopExt4, tGocrypt, tRclone}
	le := map[string]string{tLoopback: tLoopExt4}
	return []row{
		{id: "1a", label: "hot small read: open+read+close 20 KB in a loop, per op", unit: "µs", metric: "orc", ref: tTmpfs,
			goals: []goal{{tIris, true, 5, "≤5×"}, {tIrisRO, true, 1.5, "--read-only ≤1.5×"}}},
		{id: "1b", label: fmt.Sprintf("hot small read: `cat` 20 KB as a process (median of %d)", sz.cats), unit: "ms", metric: "cat", ref: tTmpfs,
			goals: []goal{{tIris, true, 1.1, "≤1.1×"}}},
		{id: "2a", label: fmt.Sprintf("cold read: open+read+close 20 KB, first touch after a fresh mount and drop_caches (mean of %d files)", sz.cold), unit: "µs", metric: "cold.orc", ref: tTmpfs},
		{id: "2b", label: fmt.Sprintf("cold read: `cat` 20 KB, the same (median of %d files)", sz.cold), unit: "ms", metric: "cold.cat", ref: tTmpfs},
		{id: "2c", label: "cold open+read+close (2a), against the same files on the store's ext4 after drop_caches", unit: "µs", metric: "cold.orc", ref: tExt4, only: onExt4},
		{id: "2d", label: "cold `cat` (2b), against the same files on ext4", unit: "ms", metric: "cold.cat", ref: tExt4, only: onExt4},
		{id: "3a", label: big + " sequential read, first after the mount", unit: "MB/s", metric: "big.first", higher: true, ref: tTmpfs,
			goals: []goal{{tIris, false, 0.9, "≥0.9×"}}},
		{id: "3b", label: big + " sequential read, repeat", unit: "MB/s", metric: "big.repeat", higher: true, ref: tTmpfs,
			goals: []goal{{tIris, false, 0.9, "≥0.9×"}}},
		{id: "4a", label: "durable 4 KB write, per file (iriskvfs create+write+close; the others write+fsync+close+rename; the loopback on tmpfs, the rest on the store's ext4)", unit: "µs", metric: "write", ref: tTmpfs},
		{id: "4b", label: "the same on the store's ext4: iriskvfs, loopback over ext4 and the peers, against write+fsync+close+rename", unit: "µs", metric: "write", ref: tExt4, only: onExt4, cols: le,
			goals: []goal{{tIris, true, 2, "≤2×"}}},
		{id: "4c", label: "the same, against ext4 write+fsync+close+rename+fsync(dir)", unit: "µs", metric: "write", ref: tExt4Dir, only: onExt4, cols: le},
		{id: "5a", label: "listing (getdents+lstat) of " + keys + ", first after the mount", unit: "ms", metric: "ls.1", ref: tTmpfs,
			goals: []goal{{tIris, true, 3, "≤3×"}}},
		{id: "5b", label: "listing of " + keys + ", second", unit: "ms", metric: "ls.2", ref: tTmpfs,
			goals: []goal{{tIris, true, 1.1, "~1× (≤1.1×)"}}},
		{id: "5c", label: "`ls -l` process of " + keys + " (after 5a, 5b)", unit: "ms", metric: "lsproc", ref: tTmpfs,
			goals: []goal{{tIris, true, 3, "issue 3: ≤3×"}}},
		{id: "5f", label: "`ls -l` process of " + keys + " after drop_caches (the kernel forgot the inodes: READDIRPLUS again)", unit: "ms", metric: "lsproc.cold", ref: tTmpfs,
			goals: []goal{{tIris, true, 3, "issue 3: ≤3×"}}},
		{id: "6a", label: fmt.Sprintf("mixed agent trace, %d clients: throughput", sz.mixClients), unit: "ops/s", metric: "mix.tput", higher: true, ref: tTmpfs},
		{id: "6b", label: "mixed agent trace: p50 latency", unit: "ms", metric: "mix.p50", ref: tTmpfs},
		{id: "6c", label: "mixed agent trace: p99 latency", unit: "ms", metric: "mix.p99", ref: tTmpfs},
		{id: "7a", label: fmt.Sprintf("mount with %s until it answers", keys), unit: "ms", metric: "mount",
			goals: []goal{{tIris, true, 1000, "<1 s"}}},
		{id: "7b", label: "daemon RSS right after the mount", unit: "MB", metric: "rss.mount"},
		{id: "7c", label: "daemon RSS after the listings", unit: "MB", metric: "rss.listing"},
		{id: "7d", label: "daemon RSS at the end (iriskvfs: LRU filled)", unit: "MB", metric: "rss.end"},
		{id: "7e", label: "daemon peak RSS (VmHWM)", unit: "MB", metric: "hwm.end",
			goals: []goal{{tIris, true, 150, "<150 MB"}}},
	}
}

// extraRows are details: iriskvfs's own, and the unmount.
func (b *bench) extraRows() []row {
	big := fmt.Sprintf("%d MB", b.o.sz.bigSize>>20)
	return []row{
		{id: "3c", label: big + " read, first after the mount, blob evicted from the host page cache, against that blob file read from ext4 (evicted too)", unit: "MB/s", metric: "big.disk", higher: true, ref: tExt4},
		{id: "5d", label: "the lstat of `_index.json` within listing 5a (generated to size it)", unit: "ms", metric: "ls.index.1"},
		{id: "5e", label: "the lstat of `_index.json` within listing 5b", unit: "ms", metric: "ls.index.2"},
		{id: "6d", label: "mixed trace: p50 of the reads", unit: "ms", metric: "mix.read.p50", ref: tTmpfs},
		{id: "6e", label: "mixed trace: p50 of the writes", unit: "ms", metric: "mix.write.p50", ref: tTmpfs},
		{id: "6f", label: "mixed trace: p99 of the writes", unit: "ms", metric: "mix.write.p99", ref: tTmpfs},
		{id: "7f", label: "daemon busy after `mount` returned (the store's background blob sweep; 200 ms steps)", unit: "ms", metric: "settle"},
		{id: "7g", label: "unmount until the daemon is gone", unit: "ms", metric: "unmount"},
	}
}

// shown are the targets of r that have figures, in report order.
func (b *bench) shown(r row) []string {
	var out []string
	for _, t := range b.ts {
		if r.only != nil && !slices.Contains(r.only, t.name) {
			continue
		}
		if t.name == r.ref {
			continue
		}
		if _, ok := summarize(b.res.get(r.metric, t.name)); ok {
			out = append(out, t.name)
		}
	}
	return out
}

func (b *bench) med(metric, target string) (float64, bool) {
	s, ok := summarize(b.res.get(metric, target))
	return s.med, ok
}

// ratio is the median (and range) of target/reference, pair by pair.
func (b *bench) ratio(r row, target string) (summary, bool) {
	return summarize(ratios(b.res.get(r.metric, r.ref), b.res.get(r.metric, target)))
}

// figure is what a goal is checked on: the ratio, or the figure itself.
func (b *bench) figure(r row, target string) (float64, bool) {
	if r.ref == "" {
		return b.med(r.metric, target)
	}
	s, ok := b.ratio(r, target)
	return s.med, ok
}

func (b *bench) cell(r row, target string) string {
	v, ok := b.med(r.metric, target)
	if !ok {
		return "–"
	}
	if r.ref == "" {
		return num(v)
	}
	if s, ok := b.ratio(r, target); ok {
		return fmt.Sprintf("%s (%s×)", num(v), num(s.med))
	}
	return num(v)
}

// ahead says whether iriskvfs's median beats each installed peer's.
func (b *bench) ahead(r row) string {
	iv, ok := b.med(r.metric, tIris)
	if !ok || (r.only != nil && !slices.Contains(r.only, tGocrypt)) {
		return "–"
	}
	var behind, compared []string
	for _, p := range []string{tGocrypt, tRclone} {
		pv, ok := b.med(r.metric, p)
		if !ok {
			continue
		}
		compared = append(compared, p)
		if (r.higher && iv < pv) || (!r.higher && iv > pv) {
			behind = append(behind, p)
		}
	}
	switch {
	case len(compared) == 0:
		return "–"
	case len(behind) == 0:
		return "yes"
	default:
		return "**no**: behind " + strings.Join(behind, ", ")
	}
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (b *bench) report(w io.Writer) {
	res := b.res
	sz := b.o.sz
	m := b.info
	fmt.Fprintf(w, "## iriskvfs against tmpfs, go-fuse loopback, gocryptfs and rclone, side by side\n\n")
	fmt.Fprintf(w, "- machine: %s\n", m.oneLine())
	for _, p := range []string{tGocrypt, tRclone} {
		if pr := b.peers[p]; pr.skip != "" {
			fmt.Fprintf(w, "- %s: %s\n", p, pr.skip)
		} else {
			fmt.Fprintf(w, "- %s: %s\n", p, pr.version)
		}
	}
	fmt.Fprintf(w, "- command: `%s` (`make bench-fuse` is `go run ./cmd/iriskvfs-bench`)\n",
		strings.Join(append([]string{"iriskvfs-bench"}, os.Args[1:]...), " "))
	fmt.Fprintf(w, "- %d repetitions in %v; load average at start %s, at end %s; 1-min load per repetition %v\n",
		b.o.reps, res.elapsed.Round(1e9), res.loadStart, res.loadEnd, res.loads)
	fmt.Fprintf(w, "- drop_slab in /proc/vmstat: %d at start, %d at end; this run dropped the caches %d times itself (workload 2); more means someone else did too\n",
		res.slabStart, res.slabEnd, b.drops)
	fmt.Fprintf(w, "- the client runs with GODEBUG=asyncpreemptoff=1 (no runtime signals interrupting its FUSE requests); the daemons with the caller's environment\n")
	var ra []string
	for _, t := range b.ts {
		if v, ok := res.readAhead[t.name]; ok {
			ra = append(ra, t.name+" "+v)
		}
	}
	fmt.Fprintf(w, "- read_ahead_kb of the mounts: %s; iriskvfs's listed directory held %d entries (keys + `_index.json`); its LRU at the end: %d values, %.1f MiB\n",
		strings.Join(ra, ", "), res.listEntries, res.hotEntries, float64(res.hotBytes)/(1<<20))
	fmt.Fprintf(w, "- sizes: hot file %d B; %d × open+read+close per target per rep after %d warm-up; %d `cat` per target per rep; %d cold files of each kind; %d MB file with 1 MiB reads; %d files of %d B listed; %d writes of %d B per target per rep\n",
		sz.hotSize, sz.hotIters, sz.hotWarm, sz.cats, sz.cold, sz.bigSize>>20, sz.keys, sz.keySize, sz.writes, sz.writeSize)
	fmt.Fprintf(w, "- mixed trace (seed %d): %d clients × %d operations: %d reads, %d writes (1 KB–%d KB, log-uniform), %d deletes\n",
		mixSeed, sz.mixClients, sz.mixOps, res.mixOps["read"], res.mixOps["write"], sz.mixMaxWrite/1000, res.mixOps["delete"])
	fmt.Fprintf(w, "- targets:\n")
	for _, t := range b.ts {
		if t.skip != "" {
			fmt.Fprintf(w, "  - %s: %s\n", t.name, t.skip)
			continue
		}
		fmt.Fprintf(w, "  - %s: %s\n", t.name, t.desc)
	}
	for _, t := range b.ts {
		for _, e := range res.errs[t.name] {
			fmt.Fprintf(w, "- **%s failed**: %s\n", t.name, e)
		}
	}

	// The summary: one column per target, the targets beside
	// iriskvfs's ratio.
	cols := []string{tLoopback, tGocrypt, tRclone}
	var shownCols []string
	for _, c := range cols {
		if t := b.target(c); t != nil && t.skip == "" {
			shownCols = append(shownCols, c)
		}
	}
	fmt.Fprintf(w, "\nMedian over %d repetitions; in brackets the ratio to the reference (tmpfs unless the row says otherwise), computed repetition by repetition, then the median. For times above 1× is slower, for MB/s and ops/s below 1× is slower. Min–max are in the detailed table below.\n\n", b.o.reps)
	fmt.Fprintf(w, "| # | workload | unit | reference | iriskvfs | iriskvfs ratio | issue target | met? | iriskvfs --read-only |")
	for _, c := range shownCols {
		fmt.Fprintf(w, " %s |", c)
	}
	fmt.Fprintf(w, " iriskvfs ahead of gocryptfs and rclone? |\n|---|---|---|---|---|---|---|---|---|")
	for range shownCols {
		fmt.Fprintf(w, "---|")
	}
	fmt.Fprintf(w, "---|\n")
	for _, r := range b.rows() {
		ref := "–"
		if r.ref != "" {
			if v, ok := b.med(r.metric, r.ref); ok {
				ref = r.ref + " " + num(v)
			}
		}
		iv := "–"
		if v, ok := b.med(r.metric, tIris); ok {
			iv = num(v)
		}
		ir := "–"
		if r.ref != "" {
			if s, ok := b.ratio(r, tIris); ok {
				ir = fmt.Sprintf("**%s×**", num(s.med))
			}
		}
		var gt, gm []string
		for _, g := range r.goals {
			gt = append(gt, g.text)
			if v, ok := b.figure(r, g.who); ok {
				s := metStr(g.met(v))
				if g.who == tIrisRO {
					s = fmt.Sprintf("--read-only %s× %s", num(v), s)
				}
				gm = append(gm, s)
			} else {
				gm = append(gm, "not measured")
			}
		}
		show := func(t string) string {
			if c, ok := r.cols[t]; ok {
				return b.cell(r, c)
			}
			if r.only != nil && !slices.Contains(r.only, t) {
				return "–"
			}
			return b.cell(r, t)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.id, r.label, r.unit, ref, iv, ir,
			orDash(strings.Join(gt, "; ")), orDash(strings.Join(gm, "; ")), show(tIrisRO))
		for _, c := range shownCols {
			fmt.Fprintf(w, " %s |", show(c))
		}
		fmt.Fprintf(w, " %s |\n", b.ahead(r))
	}

	// The details: every figure with its range.
	fmt.Fprintf(w, "\n### Every figure: median (min–max) over %d repetitions, and the ratio to the reference pair by pair\n\n", b.o.reps)
	fmt.Fprintf(w, "| # | unit | target | median (min–max) | ratio to reference (min–max) |\n|---|---|---|---|---|\n")
	for _, r := range append(b.rows(), b.extraRows()...) {
		var lines []string
		if r.ref != "" {
			if s, ok := summarize(b.res.get(r.metric, r.ref)); ok {
				lines = append(lines, fmt.Sprintf("| %s | %s | %s (reference) | %s | 1 |", r.id, r.unit, r.ref, s))
			}
		}
		for _, t := range b.shown(r) {
			s, _ := summarize(b.res.get(r.metric, t))
			rs := "–"
			if r.ref != "" {
				if x, ok := b.ratio(r, t); ok {
					rs = fmt.Sprintf("%s× (%s–%s)", num(x.med), num(x.lo), num(x.hi))
				}
			}
			lines = append(lines, fmt.Sprintf("| %s | %s | %s | %s | %s |", r.id, r.unit, t, s, rs))
		}
		for _, l := range lines {
			fmt.Fprintln(w, l)
		}
	}
	fmt.Fprintf(w, "\nRows: %s\n", rowLegend(b.extraRows()))

	if len(res.rt) > 0 || len(res.rtRO) > 0 {
		fmt.Fprintf(w, "\n### FUSE requests per operation (`mount --debug`, counted from go-fuse's log; `mount --daemon --debug` took %v)\n\n", res.rtMount.Round(1e6))
		fmt.Fprintf(w, "| mount | operation | requests |\n| --- | --- | --- |\n")
		for _, c := range res.rt {
			fmt.Fprintf(w, "| iriskvfs | %s | %s |\n", c.label, c)
		}
		for _, c := range res.rtRO {
			fmt.Fprintf(w, "| iriskvfs --read-only | %s | %s |\n", c.label, c)
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func rowLegend(rows []row) string {
	var parts []string
	for _, r := range rows {
		parts = append(parts, r.id+" "+r.label)
	}
	return strings.Join(parts, "; ") + "."
}
