# libFuzzer targets (tests/fuzz/README.md). Included by the Makefile.
#   make fuzz [FUZZ_SECONDS=60 | FUZZ_TIME=60] [FUZZ_TARGETS="fuzz_jwt fuzz_intent"]
# builds every tests/fuzz/fuzz_*.c with clang, ASan and UBSan against a library
# built the same way (build/fuzz/), replays the seed corpora and kept crash
# inputs, then fuzzes each target for FUZZ_SECONDS and prints its executions.
# FUZZ_TIME is another name for FUZZ_SECONDS.
FUZZ_SECONDS ?= $(or $(FUZZ_TIME),60)
FUZZ_CC      ?= clang
FUZZ_BUILD   := build/fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_SRC     := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN     := $(FUZZ_SRC:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_TARGETS ?= $(notdir $(FUZZ_BIN))

.PHONY: fuzz fuzz-build fuzz-lib

fuzz-lib:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=$(FUZZ_CC) OPT=-O1 \
	  SAN="-fsanitize=fuzzer-no-link $(FUZZ_SAN)" $(FUZZ_BUILD)/libbulwark.a

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/*.h fuzz-lib
	$(FUZZ_CC) -std=gnu11 -O1 -g -Wall -Wextra -Werror -Wno-unused-parameter -D_GNU_SOURCE \
	  -Isrc -pthread -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $< $(FUZZ_BUILD)/libbulwark.a $(LIBS)

fuzz-build: $(FUZZ_BIN)

fuzz: fuzz-build
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS) $(FUZZ_TARGETS)
