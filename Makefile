# kvtier - top-level build.
#
# Dependency rule (docs/ARCHITECTURE.md):
#   common/   wire protocol, error table, key derivation: depends on nothing but libc
#             and the public header.
#   client/   libkvtier and memstat: the public header and common/ only; memstat
#             uses only the public API.
#   store/    the tiers: common/ only; never calls into daemon/.
#   kernels/  CUDA kernels and their CPU references (later).
#   daemon/   kvtierd: composes store/ and kernels/.
#
# Everything is built under $(BUILD) (default build/); the sanitizer build of the
# whole suite lives in build/asan. Targets:
#   all       daemon, library (.so and .a), memstat, example engine, tests, benchmarks
#   run       build and start kvtierd in the foreground on the embedded configuration
#   check     unit + integration + bad-input tests (fast, one build)
#   test      check, then the same suite under ASan+UBSan; ends with "N passed, N failed"
#   bench     run the benchmarks, results under bench/results/
#   install   PREFIX (default /usr/local), DESTDIR honoured: binaries, library, header,
#             kvtier.pc, man pages, systemd units, sysusers/tmpfiles snippets, the
#             configuration (an existing one is kept) and its example
#   uninstall the same files, except the configuration in SYSCONFDIR
#   clean

PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SBINDIR    ?= $(PREFIX)/sbin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
# systemd service integration (docs/OPERATIONS.md); pkg-config file for engines.
SYSUSERSDIR  ?= $(PREFIX)/lib/sysusers.d
TMPFILESDIR  ?= $(PREFIX)/lib/tmpfiles.d
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DOCDIR       ?= $(PREFIX)/share/doc/kvtier
VERSION    := $(shell sed -n 's/^\#define KVT_VERSION_STRING "\(.*\)"/\1/p' include/kvtier.h)
DESTDIR    ?=

BUILD  ?= build
SAN    ?= 0
WERROR ?= 0

CC     ?= cc
CFLAGS ?= -O2 -g
WARN   := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wpointer-arith \
          -Wformat=2 -Wvla -Wcast-align -Wwrite-strings -Wundef -Wnull-dereference
ifeq ($(WERROR),1)
WARN += -Werror
endif
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -pthread -fno-strict-aliasing $(WARN) \
               -Iinclude -Icommon -Istore -Idaemon -Itests/lib
ifeq ($(SAN),1)
BASE_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_LDFLAGS := -fsanitize=address,undefined
endif
ALL_CFLAGS := $(BASE_CFLAGS) $(CFLAGS) -DKVT_BIN_DIR='"$(abspath $(BUILD))/bin"'
ALL_LDFLAGS := -pthread $(SAN_LDFLAGS) $(LDFLAGS)

# ---- sources -------------------------------------------------------------------
COMMON_SRC := common/proto.c common/errors.c common/key.c
STORE_SRC  := $(sort $(wildcard store/*.c))
DAEMON_SRC := $(sort $(wildcard daemon/*.c))
LIB_SRC    := $(sort $(filter-out client/memstat.c,$(wildcard client/*.c)))
TESTLIB_SRC := tests/lib/test.c tests/lib/harness.c

UNIT_TESTS  := $(patsubst tests/unit/%.c,%,$(sort $(wildcard tests/unit/test_*.c)))
INTEG_TESTS := $(patsubst tests/integ/%.c,%,$(sort $(wildcard tests/integ/itest_*.c)))
BENCHES     := $(patsubst bench/%.c,%,$(sort $(wildcard bench/bench_*.c)))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
pic = $(patsubst %.c,$(BUILD)/pic/%.o,$(1))

COMMON_OBJ  := $(call obj,$(COMMON_SRC))
STORE_OBJ   := $(call obj,$(STORE_SRC))
DAEMON_OBJ  := $(call obj,$(DAEMON_SRC))
TESTLIB_OBJ := $(call obj,$(TESTLIB_SRC))
LIB_PIC     := $(call pic,$(LIB_SRC) $(COMMON_SRC))

LIBSO_NAME  := libkvtier.so
LIBSO_MAJOR := $(LIBSO_NAME).0
LIBSO_FULL  := $(LIBSO_NAME).0.1.0

BIN_DAEMON  := $(BUILD)/bin/kvtierd
BIN_MEMSTAT := $(BUILD)/bin/memstat
BIN_ENGINE  := $(BUILD)/bin/kvtier-engine
LIB_A       := $(BUILD)/lib/libkvtier.a
LIB_SO      := $(BUILD)/lib/$(LIBSO_FULL)
TEST_BINS   := $(addprefix $(BUILD)/tests/,$(UNIT_TESTS) $(INTEG_TESTS))
BENCH_BINS  := $(addprefix $(BUILD)/bench/,$(BENCHES))

STORE_LIBS  := -lxxhash -lzstd -luring -llmdb
DAEMON_LIBS := $(STORE_LIBS) -lsystemd
RPATH       := -Wl,-rpath,'$$ORIGIN/../lib'

.PHONY: all deps run check test test-unit test-integ test-asan bench install uninstall clean memstat
.DEFAULT_GOAL := all

all: $(BIN_DAEMON) $(LIB_SO) $(LIB_A) $(BIN_MEMSTAT) $(BIN_ENGINE) $(TEST_BINS) $(BENCH_BINS)

# Install missing Debian packages (quiet when everything is there).
deps:
	@sh scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -fvisibility=hidden -DKVT_BUILDING_LIB -MMD -MP -c $< -o $@

$(BIN_DAEMON): $(DAEMON_OBJ) $(STORE_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $^ -o $@ $(ALL_LDFLAGS) $(DAEMON_LIBS)

$(LIB_SO): $(LIB_PIC) client/libkvtier.map
	@mkdir -p $(dir $@)
	$(CC) -shared -Wl,-soname,$(LIBSO_MAJOR) -Wl,--version-script=client/libkvtier.map \
		-Wl,--no-undefined $(LIB_PIC) -o $@ $(ALL_LDFLAGS)
	ln -sf $(LIBSO_FULL) $(BUILD)/lib/$(LIBSO_MAJOR)
	ln -sf $(LIBSO_MAJOR) $(BUILD)/lib/$(LIBSO_NAME)

$(LIB_A): $(LIB_PIC)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^

$(BIN_MEMSTAT): $(call obj,client/memstat.c) $(LIB_SO)
	@mkdir -p $(dir $@)
	$(CC) $< -o $@ $(ALL_LDFLAGS) -L$(BUILD)/lib -lkvtier $(RPATH)

$(BIN_ENGINE): $(call obj,examples/engine.c) $(LIB_SO)
	@mkdir -p $(dir $@)
	$(CC) $< -o $@ $(ALL_LDFLAGS) -L$(BUILD)/lib -lkvtier $(RPATH)

# Unit tests link the pieces they test directly; integration tests link the
# static library (public API) plus common/ for raw protocol work.
$(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(TESTLIB_OBJ) $(STORE_OBJ) $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) $(STORE_LIBS)

$(BUILD)/tests/itest_%: $(BUILD)/obj/tests/integ/itest_%.o $(TESTLIB_OBJ) $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) -lxxhash

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) $(BENCH_LIBS_$*)

BENCH_LIBS_bench_transfer := -lhiredis
BENCH_LIBS_bench_codec := $(STORE_LIBS) -lm
BENCH_LIBS_bench_io := $(STORE_LIBS)
$(BUILD)/bench/bench_codec $(BUILD)/bench/bench_io: $(STORE_OBJ)
$(BUILD)/bench/bench_replay $(BUILD)/bench/bench_policy: $(call obj,bench/trace.c store/policy_lru.c store/policy_2q.c)

# Unit tests of daemon pieces link those pieces too.
$(BUILD)/tests/test_config: $(call obj,daemon/config.c)

run: deps $(BIN_DAEMON) $(BIN_MEMSTAT) $(BIN_ENGINE)
	@mkdir -p run
	exec $(BIN_DAEMON)

memstat: $(BIN_MEMSTAT)
	$(BIN_MEMSTAT) -s run/kvtierd.sock

check: all
	@sh tests/run.sh $(BUILD)

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory SAN=1 BUILD=$(BUILD)/asan all-tests
	@sh tests/run.sh $(BUILD) $(BUILD)/asan

.PHONY: all-tests
all-tests: $(BIN_DAEMON) $(LIB_SO) $(LIB_A) $(TEST_BINS)

bench: deps all
	@sh bench/run.sh $(BUILD)

install: $(BIN_DAEMON) $(LIB_SO) $(LIB_A) $(BIN_MEMSTAT)
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) \
		$(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSCONFDIR)/kvtier $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) \
		$(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BIN_DAEMON) $(DESTDIR)$(SBINDIR)/kvtierd
	install -m 0755 $(BIN_MEMSTAT) $(DESTDIR)$(BINDIR)/memstat
	install -m 0755 $(LIB_SO) $(DESTDIR)$(LIBDIR)/$(LIBSO_FULL)
	ln -sf $(LIBSO_FULL) $(DESTDIR)$(LIBDIR)/$(LIBSO_MAJOR)
	ln -sf $(LIBSO_MAJOR) $(DESTDIR)$(LIBDIR)/$(LIBSO_NAME)
	install -m 0644 $(LIB_A) $(DESTDIR)$(LIBDIR)/libkvtier.a
	install -m 0644 include/kvtier.h $(DESTDIR)$(INCLUDEDIR)/kvtier.h
	install -m 0644 docs/man/memstat.1 $(DESTDIR)$(MANDIR)/man1/memstat.1
	install -m 0644 docs/man/kvtier.3 $(DESTDIR)$(MANDIR)/man3/kvtier.3
	install -m 0644 docs/man/kvtierd.conf.5 $(DESTDIR)$(MANDIR)/man5/kvtierd.conf.5
	install -m 0644 docs/man/kvtierd.8 $(DESTDIR)$(MANDIR)/man8/kvtierd.8
	# The unit names the installed daemon and configuration (its source says
	# /usr/local/sbin and /etc, the defaults, so it verifies as it is).
	sed -e 's|/usr/local/sbin/kvtierd|$(SBINDIR)/kvtierd|' \
		-e 's|/etc/kvtier/kvtierd.conf|$(SYSCONFDIR)/kvtier/kvtierd.conf|' \
		systemd/kvtierd.service >$(DESTDIR)$(UNITDIR)/kvtierd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/kvtierd.service
	install -m 0644 systemd/kvtierd.socket $(DESTDIR)$(UNITDIR)/kvtierd.socket
	install -m 0644 systemd/kvtier.sysusers.conf $(DESTDIR)$(SYSUSERSDIR)/kvtier.conf
	install -m 0644 systemd/kvtier.tmpfiles.conf $(DESTDIR)$(TMPFILESDIR)/kvtier.conf
	# libdir and includedir relative to ${prefix} when they are under it, so that
	# pkg-config --define-prefix can relocate a DESTDIR tree.
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		-e 's|^libdir=$(PREFIX)/|libdir=$${exec_prefix}/|' \
		-e 's|^includedir=$(PREFIX)/|includedir=$${prefix}/|' \
		client/kvtier.pc.in >$(DESTDIR)$(PKGCONFIGDIR)/kvtier.pc
	chmod 0644 $(DESTDIR)$(PKGCONFIGDIR)/kvtier.pc
	install -m 0644 systemd/kvtierd.conf $(DESTDIR)$(DOCDIR)/kvtierd.conf.example
	install -m 0644 docs/OPERATIONS.md $(DESTDIR)$(DOCDIR)/OPERATIONS.md
	test -e $(DESTDIR)$(SYSCONFDIR)/kvtier/kvtierd.conf || \
		install -m 0644 systemd/kvtierd.conf $(DESTDIR)$(SYSCONFDIR)/kvtier/kvtierd.conf

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/kvtierd $(DESTDIR)$(BINDIR)/memstat \
		$(DESTDIR)$(LIBDIR)/$(LIBSO_FULL) $(DESTDIR)$(LIBDIR)/$(LIBSO_MAJOR) \
		$(DESTDIR)$(LIBDIR)/$(LIBSO_NAME) $(DESTDIR)$(LIBDIR)/libkvtier.a \
		$(DESTDIR)$(INCLUDEDIR)/kvtier.h $(DESTDIR)$(MANDIR)/man1/memstat.1 \
		$(DESTDIR)$(MANDIR)/man3/kvtier.3 $(DESTDIR)$(MANDIR)/man5/kvtierd.conf.5 \
		$(DESTDIR)$(MANDIR)/man8/kvtierd.8 $(DESTDIR)$(UNITDIR)/kvtierd.service \
		$(DESTDIR)$(UNITDIR)/kvtierd.socket $(DESTDIR)$(SYSUSERSDIR)/kvtier.conf \
		$(DESTDIR)$(TMPFILESDIR)/kvtier.conf $(DESTDIR)$(PKGCONFIGDIR)/kvtier.pc \
		$(DESTDIR)$(DOCDIR)/kvtierd.conf.example $(DESTDIR)$(DOCDIR)/OPERATIONS.md
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/kvtier/kvtierd.conf (your configuration)"

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj $(BUILD)/pic -name '*.d' 2>/dev/null)
