package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// summary is the median and range of one series.
type summary struct{ med, lo, hi float64 }

func summarize(v []float64) (summary, bool) {
	if len(v) == 0 {
		return summary{}, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{med, s[0], s[len(s)-1]}, true
}

// num formats a figure with about three significant digits.
func num(v float64) string {
	switch a := max(v, -v); {
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

func ratioString(s summary) string {
	return fmt.Sprintf("**%s×** (%s–%s)", num(s.med), num(s.lo), num(s.hi))
}

// ratios divides fuse by native repetition by repetition.
func ratios(nat, fuse []float64) []float64 {
	n := min(len(nat), len(fuse))
	out := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		if nat[i] > 0 {
			out = append(out, fuse[i]/nat[i])
		}
	}
	return out
}

type pairRow struct {
	label, unit    string
	natName, nat   string // the native side's name and metric
	fuse           string
	higherIsFaster bool
}

func (b *bench) pairRows() []pairRow {
	sz := b.o.sz
	big := fmt.Sprintf("%d MB", sz.bigSize>>20)
	keys := fmt.Sprintf("%dk keys", sz.keys/1000)
	return []pairRow{
		{"1. open+read+close 20 KB, loop, per op", "µs", "tmpfs", "orc.tmpfs", "orc.fuse", false},
		{fmt.Sprintf("2. `cat` 20 KB as a process (median of %d per rep)", sz.cats), "ms", "tmpfs", "cat.tmpfs", "cat.fuse", false},
		{"3a. " + big + " sequential read, first after mount (SHA-256 verify; blob in host page cache)", "MB/s", "tmpfs", "big.tmpfs", "big.fuse.cold", true},
		{"3b. " + big + " sequential read, repeat (verification remembered)", "MB/s", "tmpfs", "big.tmpfs", "big.fuse.repeat", true},
		{"3c. " + big + " sequential read, first after mount, blob evicted (disk + verify)", "MB/s", "tmpfs", "big.tmpfs", "big.fuse.disk", true},
		{"3d. the same (3c) against the blob file read directly from ext4, evicted", "MB/s", "ext4", "big.ext4.disk", "big.fuse.disk", true},
		{"4a. getdents+lstat of " + keys + ", first listing after mount", "ms", "tmpfs", "ls.tmpfs.1", "ls.fuse.1", false},
		{"4a′. the same (4a) without the lstat of `_index.json`", "ms", "tmpfs", "ls.tmpfs.1", "ls.fuse.noindex.1", false},
		{"4b. getdents+lstat of " + keys + ", second listing", "ms", "tmpfs", "ls.tmpfs.2", "ls.fuse.2", false},
		{"4b′. the same (4b) without the lstat of `_index.json`", "ms", "tmpfs", "ls.tmpfs.2", "ls.fuse.noindex.2", false},
		{"4c. `ls -l` process of " + keys + " (after 4a and 4b)", "ms", "tmpfs", "lsproc.tmpfs", "lsproc.fuse", false},
		{"5a. durable 4 KB write: create+write+close through the mount vs write+fsync+close+rename", "µs", "ext4", "write.native", "write.fuse", false},
		{"5b. the same vs write+fsync+close+rename+fsync(dir)", "µs", "ext4", "write.nativedir", "write.fuse", false},
	}
}

type soloRow struct{ label, unit, metric string }

var soloRows = []soloRow{
	{"6a. `mount --daemon` until it returns", "ms", "mount"},
	{"6b. daemon busy after mount returned (store's background blob sweep)", "ms", "settle"},
	{"6c. `unmount` until the store is released", "ms", "unmount"},
	{"6d. daemon VmRSS right after mount", "MiB", "rss.mount"},
	{"6e. daemon VmRSS after the listings", "MiB", "rss.listing"},
	{"6f. daemon VmRSS at the end (listings, reads, writes, LRU filled)", "MiB", "rss.end"},
	{"6g. daemon VmHWM (peak RSS)", "MiB", "hwm.end"},
	{"4d. lstat of `_index.json` within listing 4a (generated to size it)", "ms", "ls.fuse.index.1"},
	{"4e. lstat of `_index.json` within listing 4b", "ms", "ls.fuse.index.2"},
}

func (b *bench) med(metric string) float64 {
	s, _ := summarize(b.res.vals[metric])
	return s.med
}

func (b *bench) ratioMed(nat, fuse string) float64 {
	s, _ := summarize(ratios(b.res.vals[nat], b.res.vals[fuse]))
	return s.med
}

func (b *bench) report(w io.Writer, m machine) {
	res := b.res
	sz := b.o.sz
	fmt.Fprintf(w, "## iriskvfs vs tmpfs, side by side\n\n")
	fmt.Fprintf(w, "- machine: %s\n", m.oneLine())
	fmt.Fprintf(w, "- command: `%s` (`make bench-fuse` is `go run ./cmd/iriskvfs-bench`)\n",
		strings.Join(append([]string{"iriskvfs-bench"}, os.Args[1:]...), " "))
	fmt.Fprintf(w, "- %d repetitions in %v; load average at start %s, at end %s; 1-min load per repetition %v\n",
		b.o.reps, res.elapsed.Round(1e9), res.loadStart, res.loadEnd, res.loads)
	fmt.Fprintf(w, "- the client runs with GODEBUG=asyncpreemptoff=1 (no runtime signals interrupting its FUSE requests); the daemon with the caller's environment\n")
	fmt.Fprintf(w, "- drop_slab in /proc/vmstat: %d at start, %d at end (a change means someone dropped the kernel's caches mid-run)\n", res.slabStart, res.slabEnd)
	fmt.Fprintf(w, "- iriskvfs mount: read_ahead_kb %s; listed directory held %d entries (keys + `_index.json`); LRU at the end: %d values, %.1f MiB\n",
		res.readAhead, res.listEntries, res.hotEntries, float64(res.hotBytes)/(1<<20))
	fmt.Fprintf(w, "- sizes: hot file %d B; %d × open+read+close per rep after %d warm-up; %d `cat` per side per rep; %d MB file with 1 MiB reads; %d keys of %d B; %d writes of %d B per side per rep\n\n",
		sz.hotSize, sz.hotIters, sz.hotWarm, sz.cats, sz.bigSize>>20, sz.keys, sz.keySize, sz.writes, sz.writeSize)

	fmt.Fprintf(w, "Median (min–max) over %d repetitions. The ratio is iriskvfs/native per repetition, then the median of those ratios: for times above 1 is slower, for MB/s below 1 is slower.\n\n", b.o.reps)
	fmt.Fprintf(w, "| workload | unit | native | native median (min–max) | iriskvfs median (min–max) | ratio iriskvfs/native |\n")
	fmt.Fprintf(w, "| --- | --- | --- | --- | --- | --- |\n")
	for _, r := range b.pairRows() {
		ns, ok1 := summarize(res.vals[r.nat])
		fs, ok2 := summarize(res.vals[r.fuse])
		rs, ok3 := summarize(ratios(res.vals[r.nat], res.vals[r.fuse]))
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.label, r.unit, r.natName, ns, fs, ratioString(rs))
	}
	fmt.Fprintf(w, "\n| iriskvfs only | unit | median (min–max) |\n| --- | --- | --- |\n")
	for _, r := range soloRows {
		if s, ok := summarize(res.vals[r.metric]); ok {
			fmt.Fprintf(w, "| %s | %s | %s |\n", r.label, r.unit, s)
		}
	}

	fmt.Fprintf(w, "\n### Targets (issue 3; issue 6 where it is stricter or adds one)\n\n")
	fmt.Fprintf(w, "| target | measured (median) | met? |\n| --- | --- | --- |\n")
	yes := func(ok bool) string {
		if ok {
			return "met"
		}
		return "**missed**"
	}
	cat := b.ratioMed("cat.tmpfs", "cat.fuse")
	fmt.Fprintf(w, "| `cat` as a process within 1.1× tmpfs | %s× | %s |\n", num(cat), yes(cat <= 1.1))
	orc := b.ratioMed("orc.tmpfs", "orc.fuse")
	fmt.Fprintf(w, "| open+read+close within 10× tmpfs (issue 6: 5×) | %s× | %s |\n", num(orc), yes(orc <= 10))
	cold := b.ratioMed("big.tmpfs", "big.fuse.cold")
	again := b.ratioMed("big.tmpfs", "big.fuse.repeat")
	fmt.Fprintf(w, "| %d MB sequential read at least 0.8× tmpfs: first read after mount (SHA-256 of the whole value at open) | %s× | %s |\n",
		sz.bigSize>>20, num(cold), yes(cold >= 0.8))
	fmt.Fprintf(w, "| the same, repeat read | %s× | %s |\n", num(again), yes(again >= 0.8))
	ls1 := b.ratioMed("ls.tmpfs.1", "ls.fuse.1")
	ls2 := b.ratioMed("ls.tmpfs.2", "ls.fuse.2")
	fmt.Fprintf(w, "| `ls -l` (getdents+lstat) of %d keys within 3× tmpfs, first listing | %s× | %s |\n", sz.keys, num(ls1), yes(ls1 <= 3))
	fmt.Fprintf(w, "| the same, repeat listing at native speed (issue 6) | %s× | %s |\n", num(ls2), yes(ls2 <= 1.05))
	lsp := b.ratioMed("lsproc.tmpfs", "lsproc.fuse")
	fmt.Fprintf(w, "| real `ls -l` process within 3× tmpfs | %s× | %s |\n", num(lsp), yes(lsp <= 3))
	hwm := b.med("hwm.end")
	fmt.Fprintf(w, "| daemon memory bounded with %d keys and a full LRU (issue 6: under 150 MB) | RSS %s MiB at the end, peak %s MiB | %s |\n",
		sz.keys, num(b.med("rss.end")), num(hwm), yes(hwm < 150))
	wr := b.ratioMed("write.native", "write.fuse")
	fmt.Fprintf(w, "| durable 4 KB write within 2× native write+fsync+rename (issue 6) | %s× (%s× against +fsync(dir)) | %s |\n",
		num(wr), num(b.ratioMed("write.nativedir", "write.fuse")), yes(wr <= 2))
	mt := b.med("mount")
	fmt.Fprintf(w, "| mount with %d keys under 1 s (issue 6) | %s ms | %s |\n", sz.keys, num(mt), yes(mt < 1000))

	if len(res.rt) > 0 {
		fmt.Fprintf(w, "\n### FUSE requests per operation (`mount --debug`, counted from go-fuse's log; `mount --daemon --debug` took %v)\n\n", res.rtMount.Round(1e6))
		fmt.Fprintf(w, "| operation | requests |\n| --- | --- |\n")
		for _, c := range res.rt {
			fmt.Fprintf(w, "| %s | %s |\n", c.label, c)
		}
	}
}
