# iriskvfs: make build | test | run | bench | lint | fuzz | stress
GO        ?= go
BIN       ?= bin/iriskvfs
PKGS      := ./...
FUZZTIME  ?= 10s
MOUNT     ?= /workspace/.iris/kv-cache
STORE     ?= /workspace/.iris/kv-store

.PHONY: build test unit fuzz run bench lint clean

build:
	$(GO) build -o $(BIN) ./cmd/iriskvfs

# The full gate CI runs: lint, every test under the race detector, then a
# short run of each fuzz target on top of its committed seed corpus.
test: lint unit fuzz

unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEntry$$' -fuzztime $(FUZZTIME) ./index
	$(GO) test -run '^$$' -fuzz '^FuzzValidateKey$$' -fuzztime $(FUZZTIME) ./store
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME) ./quota
	$(GO) test -run '^$$' -fuzz '^FuzzOpenIndex$$' -fuzztime $(FUZZTIME) ./index
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(FUZZTIME) ./integration/api
	$(GO) test -run '^$$' -fuzz '^FuzzRawRequest$$' -fuzztime $(FUZZTIME) ./integration/api

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# Mounts the cache in the foreground at the default place, seeded, with the
# built-in policy. Stop it with Ctrl-C (or `bin/iriskvfs unmount` elsewhere).
run: build
	@echo "mounting $(MOUNT) (store $(STORE)) in the foreground."
	@echo "  in another shell:  ls $(MOUNT)   cat $(MOUNT)/instructions/instruction_research   echo hi > $(MOUNT)/task/hello"
	@echo "  stop:              Ctrl-C, or $(BIN) unmount $(MOUNT)"
	$(BIN) --store $(STORE) mount --seed $(MOUNT)

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 5 ./store | tee bench.out
	$(MAKE) --no-print-directory bench-fuse

# The mount side by side with native tmpfs (root, /dev/fuse; docs/BENCHMARKS.md).
bench-fuse:
	$(GO) run ./cmd/iriskvfs-bench

# The long versions of the randomized and kill tests (README, "Stress testing"):
# ~20 minutes with the defaults; root and /dev/fuse required (and loop devices, ext4).
STRESS_TIME  ?= 2m
STRESS_KILLS ?= 200
STRESS_CUTS  ?= 100
STRESS_TESTS := TestModel|TestModelRegressions|TestNoESTALEUnderReplaceChurn|TestCrashKill|TestCrashKillCLI|TestMountCrashKill|TestCrashMatrix|TestPowerCut|TestLoad|TestResourceBounds

.PHONY: stress
stress:
	IRISKVFS_REQUIRE_FUSE=1 IRISKVFS_MODEL_TIME=$(STRESS_TIME) IRISKVFS_LOAD_TIME=$(STRESS_TIME) \
	IRISKVFS_CRASH_ITERATIONS=$(STRESS_KILLS) IRISKVFS_POWERCUT_ITERATIONS=$(STRESS_CUTS) IRISKVFS_RESOURCE_ROUNDS=60 \
	$(GO) test -race -count=1 -timeout 3h -v -run '^($(STRESS_TESTS))$$' ./fs ./cmd/iriskvfs

clean:
	rm -rf bin bench.out
