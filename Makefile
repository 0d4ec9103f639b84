# Bulwark build. `make` builds build/bulwark; see `make help`.
CC       ?= gcc
BUILD    ?= build
OPT      ?= -O2
SAN      ?=
CFLAGS   += -std=gnu11 $(OPT) -g -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
            -D_GNU_SOURCE -Isrc $(shell pkg-config --cflags libpq) -pthread -MMD -MP $(SAN)
LDFLAGS  += -pthread $(SAN)
LIBS     := -lev -lssl -lcrypto -lcjson -lpg_query -llmdb -lhs -lm -lcurl -lpq

SRCS     := $(shell find src -name '*.c' | sort)
LIBSRCS  := $(filter-out src/main.c,$(SRCS))
OBJS     := $(LIBSRCS:%.c=$(BUILD)/obj/%.o)
UNITSRC  := $(sort $(wildcard tests/unit/test_*.c))
UNITBIN  := $(UNITSRC:tests/unit/%.c=$(BUILD)/tests/%)
PYTHON   := /usr/bin/python3
# `bulwark help` and the man page come from one text (docs/cli.txt).
HELPOBJ  := $(BUILD)/obj/gen/help.o
# make install: PREFIX/DESTDIR as usual; the unit file and examples go under PREFIX.
PREFIX   ?= /usr/local
DESTDIR  ?=
BINDIR   ?= $(PREFIX)/bin
MANDIR   ?= $(PREFIX)/share/man
DOCDIR   ?= $(PREFIX)/share/doc/bulwark
UNITDIR  ?= $(PREFIX)/lib/systemd/system

.PHONY: all deps test unit integration asan asan-ci tsan fuzz soak bench demo demo-stop format clean help man install

all: $(BUILD)/bulwark $(BUILD)/bulwark.1

help:
	@echo "targets: all unit integration test asan asan-ci tsan fuzz soak bench demo demo-stop format man install clean"

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/gen/help.c: docs/cli.txt scripts/txt2c.awk
	@mkdir -p $(dir $@)
	awk -f scripts/txt2c.awk docs/cli.txt > $@.tmp && mv $@.tmp $@

$(HELPOBJ): $(BUILD)/gen/help.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/bulwark.1: docs/cli.txt scripts/txt2man.awk
	@mkdir -p $(dir $@)
	awk -f scripts/txt2man.awk docs/cli.txt > $@.tmp && mv $@.tmp $@

man: $(BUILD)/bulwark.1

$(BUILD)/libbulwark.a: $(OBJS) $(HELPOBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/bulwark: $(BUILD)/obj/src/main.o $(BUILD)/libbulwark.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libbulwark.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libbulwark.a $(LDFLAGS) $(LIBS) -lcmocka

deps:
	@scripts/install-deps.sh

# Unit tests: every tests/unit/test_*.c is one cmocka binary; all run, failures counted.
# A binary that runs longer than UNIT_TIMEOUT seconds is killed and counts as failed.
UNIT_TIMEOUT ?= 300
unit: $(UNITBIN)
	@fail=0; for t in $(UNITBIN); do echo "== $$t"; \
	   timeout -k 10 $(UNIT_TIMEOUT) $$t; rc=$$?; \
	   if [ $$rc -eq 124 ] || [ $$rc -eq 137 ]; then \
	     echo "[  FAILED  ] 1 test(s): $$t killed after $(UNIT_TIMEOUT)s"; fi; \
	   [ $$rc -eq 0 ] || fail=1; done; \
	 if [ $$fail -ne 0 ]; then echo "unit: FAILED"; exit 1; fi; echo "unit: all passed"

integration: $(BUILD)/bulwark
	BULWARK_BIN=$(abspath $(BUILD)/bulwark) $(PYTHON) -m pytest -v $(or $(INTEGRATION_TESTS),tests/integration) $(PYTEST_ARGS)

test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) integration

asan: deps
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" all unit
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  $(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" integration

# ThreadSanitizer: the unit tests, then the integration modules that exercise threads
# (docs/scaling.md says why these): worker loops, console questions across loops, audit and
# approval notifies, the key store, the metrics scrape, drain and reload. The first race
# report ends the gateway (halt_on_error), which fails the test that was running.
TSAN_TESTS ?= test_workers.py test_approvals.py test_lifecycle.py test_identity.py \
              test_metrics.py test_audit_e2e.py test_psql.py
TSAN_FLAGS := BUILD=build/tsan OPT=-O1 SAN="-fsanitize=thread -fno-omit-frame-pointer"
tsan: deps
	TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" $(MAKE) $(TSAN_FLAGS) all unit
	TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1" BULWARK_TEST_WORKER_CLIENTS=48 \
	  $(MAKE) $(TSAN_FLAGS) integration \
	  INTEGRATION_TESTS="$(addprefix tests/integration/,$(TSAN_TESTS))"

# What CI runs under the sanitizers (the whole `make asan` takes about 30 minutes on a
# loaded 2-core machine): the unit tests and the integration tests of the wire protocol,
# the gate and masking in the data path, against the sanitized gateway.
ASAN_CI_TESTS := tests/integration/test_bad_input.py tests/integration/test_protocol.py \
                 tests/integration/test_policy_protocol.py tests/integration/test_masking_e2e.py \
                 tests/integration/test_policy_e2e.py
asan-ci: deps
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" all unit
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  BULWARK_BIN=$(abspath build/asan/bulwark) $(PYTHON) -m pytest -v $(ASAN_CI_TESTS)

# Soak (not in CI): SOAK_SECONDS (600) of 64 clients, then RSS, audit verify and record
# counts are checked (tests/soak/soak.py).
soak: all
	BULWARK_BIN=$(abspath $(BUILD)/bulwark) $(PYTHON) tests/soak/soak.py

bench: deps all
	bench/run.sh $(BENCH_ARGS)

demo: deps all
	scripts/demo.sh

demo-stop:
	@scripts/demo.sh stop

# The binary, its man page, the systemd unit (ExecStart pointing at BINDIR) and the
# example configuration; nothing outside DESTDIR$(PREFIX) is touched (docs/install.md).
install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
	  $(DESTDIR)$(DOCDIR)/examples/policies
	install -m 0755 $(BUILD)/bulwark $(DESTDIR)$(BINDIR)/bulwark
	install -m 0644 $(BUILD)/bulwark.1 $(DESTDIR)$(MANDIR)/man1/bulwark.1
	sed 's|/usr/local/bin/bulwark|$(BINDIR)/bulwark|g' contrib/bulwark.service \
	  > $(DESTDIR)$(UNITDIR)/bulwark.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/bulwark.service
	install -m 0644 contrib/bulwark.json $(DESTDIR)$(DOCDIR)/examples/bulwark.json
	install -m 0644 contrib/policies/analyst.json $(DESTDIR)$(DOCDIR)/examples/policies/analyst.json

format:
	clang-format -i $$(find src tests/unit -name '*.[ch]')

clean:
	rm -rf build

include tests/fuzz/fuzz.mk

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
