# kvtier - top-level build.
#
# Dependency rule (docs/ARCHITECTURE.md):
#   common/   wire protocol, error table, key derivation: depends on nothing but libc
#             and the public header.
#   client/   libkvtier and memstat: the public header and common/ only; memstat
#             uses only the public API.
#   store/    the tiers: common/ only; never calls into daemon/.
#   kernels/  paged-KV gather/scatter: CPU references (always built, linked into the
#             daemon and the unit tests) and CUDA kernels (kernels/*.cu, CUDA=1 only,
#             linked into the daemon, the GPU tests and bench_gpu_kernels).
#   daemon/   kvtierd: composes store/ and kernels/.
#
# Everything is built under $(BUILD) (default build/); the sanitizer build of the
# whole suite lives in build/asan. Targets:
#   all       daemon, library (.so and .a), memstat, example engine, tests, benchmarks
#   run       build and start kvtierd in the foreground on the embedded configuration
#   check     unit + integration + bad-input tests (fast, one build)
#   test      check, then the same suite under ASan+UBSan; ends with "N passed, N failed"
#   bench     run the benchmarks, results under bench/results/
#   test-gpu  build and run the GPU tests (tests/gpu/gtest_*.c, CUDA=1 only; each one
#             skips, exit 77, when no CUDA device is present)
#   install   PREFIX (default /usr/local), DESTDIR honoured: binaries, library, header,
#             kvtier.pc, man pages, systemd units, sysusers/tmpfiles snippets, the
#             configuration (an existing one is kept) and its example
#   uninstall the same files, except the configuration in SYSCONFDIR
#   clean
#
# CUDA ?= 1 when nvcc is on PATH or at /usr/local/cuda/bin/nvcc, else 0 (make CUDA=0
# turns it off; NVCC=, CUDA_HOME= point elsewhere). With CUDA=1, kernels/*.cu are
# compiled by nvcc (sm_90 and sm_80 code, compute_80 PTX), C code gets -DKVT_HAVE_CUDA=1
# and the CUDA headers, the daemon's link line gets the static CUDA runtime, `all` also
# builds the GPU tests and bench_gpu_kernels. Without CUDA everything else builds.

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
               -Iinclude -Icommon -Istore -Ikernels -Idaemon -Itests/lib
ifeq ($(SAN),1)
BASE_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SAN_LDFLAGS := -fsanitize=address,undefined
endif
ALL_CFLAGS := $(BASE_CFLAGS) $(CFLAGS) -DKVT_BIN_DIR='"$(abspath $(BUILD))/bin"'
ALL_LDFLAGS := -pthread $(SAN_LDFLAGS) $(LDFLAGS)

# ---- CUDA (see the header) -----------------------------------------------------
NVCC_FOUND := $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard /usr/local/cuda/bin/nvcc))
CUDA ?= $(if $(NVCC_FOUND),1,0)
ifeq ($(CUDA),1)
NVCC ?= $(NVCC_FOUND)
ifeq ($(NVCC),)
$(error CUDA=1 but no nvcc on PATH or at /usr/local/cuda/bin/nvcc: pass NVCC=/path/to/nvcc, or CUDA=0)
endif
CUDA_HOME   ?= $(abspath $(dir $(firstword $(shell command -v $(NVCC) 2>/dev/null) $(NVCC)))..)
CUDA_INC    ?= $(CUDA_HOME)/include
CUDA_LIBDIR ?= $(CUDA_HOME)/lib64
NVCCFLAGS   ?= -O3
NVCC_GENCODE := -gencode arch=compute_90,code=sm_90 -gencode 'arch=compute_80,code=[sm_80,compute_80]'
NVCC_WARN   := -Xcompiler -Wall,-Wextra
ifeq ($(WERROR),1)
NVCC_WARN   += -Werror all-warnings -Xcompiler -Werror
endif
# nvcc objects are never sanitized; C code calling them still is under SAN=1. No
# exceptions and no thread-safe statics, so they need no C++ runtime: C links them.
ALL_NVCCFLAGS := $(NVCC_GENCODE) $(NVCCFLAGS) $(NVCC_WARN) -std=c++17 \
                 -Xcompiler -fPIC,-fno-exceptions,-fno-threadsafe-statics \
                 -Iinclude -Icommon -Ikernels
ALL_CFLAGS  += -DKVT_HAVE_CUDA=1 -isystem $(CUDA_INC)
CUDA_LIBS   := -L$(CUDA_LIBDIR) -lcudart_static -ldl -lrt
else ifneq ($(CUDA),0)
$(error CUDA must be 0 or 1, not '$(CUDA)')
endif

# ---- sources -------------------------------------------------------------------
COMMON_SRC := common/proto.c common/errors.c common/key.c
STORE_SRC  := $(sort $(wildcard store/*.c))
KERNELS_SRC := $(sort $(wildcard kernels/*.c))
KERNELS_CU  := $(sort $(wildcard kernels/*.cu))
DAEMON_SRC := $(sort $(wildcard daemon/*.c))
LIB_SRC    := $(sort $(filter-out client/memstat.c,$(wildcard client/*.c)))
TESTLIB_SRC := tests/lib/test.c tests/lib/harness.c tests/lib/blocks.c

UNIT_TESTS  := $(patsubst tests/unit/%.c,%,$(sort $(wildcard tests/unit/test_*.c)))
INTEG_TESTS := $(patsubst tests/integ/%.c,%,$(sort $(wildcard tests/integ/itest_*.c)))
BENCHES     := $(patsubst bench/%.c,%,$(sort $(filter-out bench/bench_gpu_%.c,$(wildcard bench/bench_*.c))))
GPU_TESTS   := $(patsubst tests/gpu/%.c,%,$(sort $(wildcard tests/gpu/gtest_*.c)))
GPU_BENCHES := $(patsubst bench/%.c,%,$(sort $(wildcard bench/bench_gpu_*.c)))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
pic = $(patsubst %.c,$(BUILD)/pic/%.o,$(1))

COMMON_OBJ  := $(call obj,$(COMMON_SRC))
STORE_OBJ   := $(call obj,$(STORE_SRC))
KERNELS_OBJ := $(call obj,$(KERNELS_SRC))
# kernels/x.cu -> $(BUILD)/obj/kernels/x.cu.o, so a kernels/x.c can never collide;
# none with CUDA=0.
KERNELS_CU_OBJ := $(if $(filter 1,$(CUDA)),$(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(KERNELS_CU)))
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
# The power-cut file system the integration tests mount (FUSE); left out, and its
# test skipped, where libfuse3 is not installed.
FUSE_OK     := $(shell pkg-config --exists fuse3 2>/dev/null && echo 1)
TEST_TOOLS  := $(if $(FUSE_OK),$(BUILD)/tests/tools/pcfs)
TEST_BINS   := $(addprefix $(BUILD)/tests/,$(UNIT_TESTS) $(INTEG_TESTS)) $(TEST_TOOLS)
BENCH_BINS  := $(addprefix $(BUILD)/bench/,$(BENCHES))
GPU_TEST_BINS  := $(addprefix $(BUILD)/tests/gpu/,$(GPU_TESTS))
GPU_BENCH_BINS := $(addprefix $(BUILD)/bench/,$(GPU_BENCHES))

STORE_LIBS  := -lxxhash -lzstd -luring -llmdb
DAEMON_LIBS := $(STORE_LIBS) -lsystemd $(CUDA_LIBS)
RPATH       := -Wl,-rpath,'$$ORIGIN/../lib'

.PHONY: all deps run check test test-unit test-integ test-asan test-gpu bench install uninstall clean memstat
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

$(BIN_DAEMON): $(DAEMON_OBJ) $(STORE_OBJ) $(KERNELS_OBJ) $(KERNELS_CU_OBJ) $(COMMON_OBJ)
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
$(BUILD)/tests/test_%: $(BUILD)/obj/tests/unit/test_%.o $(TESTLIB_OBJ) $(STORE_OBJ) $(KERNELS_OBJ) $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) $(STORE_LIBS)

$(BUILD)/tests/itest_%: $(BUILD)/obj/tests/integ/itest_%.o $(TESTLIB_OBJ) $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) -lxxhash

# No sanitizers: a FUSE server's leaks and timing are not what the tests check.
$(BUILD)/tests/tools/pcfs: tests/tools/pcfs.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -Wall -Wextra $(shell pkg-config --cflags fuse3) $< -o $@ \
		$(shell pkg-config --libs fuse3)

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(BUILD)/obj/bench/benchlib.o $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) $(BENCH_LIBS_$*)

BENCH_LIBS_bench_transfer := -lhiredis
BENCH_LIBS_bench_codec := $(STORE_LIBS) -lm
BENCH_LIBS_bench_io := $(STORE_LIBS)
$(BUILD)/bench/bench_codec $(BUILD)/bench/bench_io: $(STORE_OBJ)
$(BUILD)/bench/bench_replay $(BUILD)/bench/bench_policy: $(call obj,bench/trace.c store/policy_lru.c store/policy_2q.c)

# Unit tests of daemon pieces link those pieces too.
$(BUILD)/tests/test_config: $(call obj,daemon/config.c)

# ---- CUDA objects, GPU tests and the GPU benchmark (CUDA=1) ----------------------
ifeq ($(CUDA),1)
all: $(GPU_TEST_BINS) $(GPU_BENCH_BINS)

$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(ALL_NVCCFLAGS) -MMD -MP -MF $(@:.o=.d) -MT $@ -c $< -o $@

# GPU tests: C, linked with the kernels (CPU references and CUDA) and cudart.
$(BUILD)/tests/gpu/gtest_%: $(BUILD)/obj/tests/gpu/gtest_%.o $(call obj,tests/lib/test.c) \
		$(KERNELS_OBJ) $(KERNELS_CU_OBJ) $(COMMON_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(CUDA_LIBS)

# gtest_region drives a real kvtierd (gpu_backend = cuda) through libkvtier.
$(BUILD)/tests/gpu/gtest_region: $(BUILD)/obj/tests/gpu/gtest_region.o $(TESTLIB_OBJ) \
		$(KERNELS_OBJ) $(KERNELS_CU_OBJ) $(COMMON_OBJ) $(LIB_A)
	@mkdir -p $(dir $@)
	$(CC) $(filter %.o,$^) -o $@ $(ALL_LDFLAGS) $(LIB_A) -lxxhash $(CUDA_LIBS)

# The daemon's CUDA backend (daemon/gpu_cuda.c) launches the kernels.
$(BIN_DAEMON): $(KERNELS_CU_OBJ)

$(GPU_BENCH_BINS): $(KERNELS_OBJ) $(KERNELS_CU_OBJ)
$(foreach b,$(GPU_BENCHES),$(eval BENCH_LIBS_$(b) := $(CUDA_LIBS)))

test-gpu: $(GPU_TEST_BINS)
	@sh tests/run.sh --gpu $(BUILD)
else
test-gpu:
	@echo "make test-gpu: CUDA is off (CUDA=0, or no nvcc on PATH or at" \
		"/usr/local/cuda/bin/nvcc); install the CUDA toolkit or pass NVCC=/path/to/nvcc" >&2
	@exit 1
endif

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
