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

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

run: build
	@echo "store: $(STORE)"
	$(BIN) --store $(STORE) stats

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 5 ./store | tee bench.out

clean:
	rm -rf bin bench.out
