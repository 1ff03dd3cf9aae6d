# killswitch — PGXS build.  `make && make install`, then see README.md.

EXTENSION = killswitch
MODULE_big = killswitch
OBJS = src/killswitch.o src/approval.o src/state.o src/startup.o src/persist.o \
       src/store.o src/release.o src/json.o src/canonical.o src/files.o src/isotime.o src/events.o src/notify.o src/change.o src/rights.o \
       src/owner.o src/modetype.o src/encoding.o src/tasks.o src/api.o src/guard.o \
       src/worker.o src/dirwatch.o src/audit.o src/watch.o src/agents.o src/enforce.o src/functions.o src/allowlist.o src/running.o src/logins.o src/emergency.o src/agentlist.o src/snapshot.o src/ending.o src/alert.o src/lists.o \
       src/sessions.o src/wal.o src/standby.o src/upstream.o src/feed.o src/claim.o src/wait.o \
       src/interlock.o src/marks.o src/follow.o src/scope.o src/scopechange.o src/scopefile.o src/scopeformat.o src/scopemembers.o
DATA = sql/killswitch--1.0.sql
PGFILEDESC = "killswitch - cluster-wide kill switch for AI agents"

PG_CONFIG ?= $(firstword $(wildcard /usr/lib/postgresql/15/bin/pg_config) pg_config)
PG_CPPFLAGS = -I$(srcdir)/src -I$(libpq_srcdir)
# A standby's watcher hears its upstream through libpq (upstream.c), linked
# as contrib/dblink and postgres_fdw link it.
SHLIB_LINK_INTERNAL = $(libpq)
# Strict warnings; unused parameters are the norm for fmgr and callbacks.
PG_CFLAGS = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers

# The state-file code again, built for frontend programs.
FE_OBJS = src/store_fe.o src/json_fe.o src/canonical_fe.o src/files_fe.o src/isotime_fe.o src/scopeformat_fe.o
CLI_OBJS = src/cli/main.o src/cli/offline.o src/cli/offscope.o src/cli/online.o src/cli/fleet.o src/cli/keycheck.o
FE_PROGRAMS = test/store_vectors src/cli/killswitch
TEST_LIBS = test/hooks/ks_test_hooks.so test/faults/ks_faults.so test/shim/ks_pause.so test/shim/ks_oom.so test/shim/ks_stat_pause.so
EXTRA_CLEAN = $(PG_STAMP) bench/ks_probe test/ks_test_funcs.so test/ks_fastpath $(FE_OBJS) $(CLI_OBJS) $(FE_PROGRAMS) $(TEST_LIBS) test/fuzz/fuzz_state tmp_check results regression.diffs regression.out

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: a changed struct must rebuild every
# object that lays it out, or the module mixes two layouts.
KS_HEADERS = $(wildcard $(srcdir)/src/*.h)
$(OBJS): $(KS_HEADERS)

# Nor which PostgreSQL the objects were built for: `make PG_CONFIG=...` for
# another version or build (README "Versions") must rebuild everything, not
# install objects of the last one.  The stamp changes only when the
# pg_config, its version or its configuration does.
PG_STAMP = .pg_config.stamp
PG_STAMP_TEXT := $(PG_CONFIG) $(shell $(PG_CONFIG) --version) $(shell $(PG_CONFIG) --configure | cksum)
$(shell [ "$$(cat $(PG_STAMP) 2>/dev/null)" = '$(PG_STAMP_TEXT)' ] || echo '$(PG_STAMP_TEXT)' > $(PG_STAMP))
$(OBJS): $(PG_STAMP)

# libpgcommon and libpgport: in pkglibdir in Debian's packages, in libdir in
# an installed source build (scripts/pg-builds).
FE_LIBS = -L$(shell $(PG_CONFIG) --pkglibdir) -L$(shell $(PG_CONFIG) --libdir) -lpgcommon -lpgport -lcrypto -lm

all: $(FE_PROGRAMS)

# Frontend code links libpgcommon statically: from 18 on its encoding
# functions are exported as pg_utf_mblen_private and so on (as for initdb);
# libpq keeps the plain names.  Before 18 the flag changes nothing.
FE_CPPFLAGS = -DFRONTEND -DUSE_PRIVATE_ENCODING_FUNCS

src/%_fe.o: src/%.c src/store.h src/scopeformat.h src/compat.h $(PG_STAMP)
	$(CC) $(CFLAGS) $(PG_CFLAGS) $(FE_CPPFLAGS) $(PG_CPPFLAGS) $(CPPFLAGS) -c -o $@ $<

# The killswitch command: the same store.c, and libpq for -d.
LIBPQ_INC = -I$(shell $(PG_CONFIG) --includedir)
LIBPQ_LIB = -L$(shell $(PG_CONFIG) --libdir) -lpq

src/cli/%.o: src/cli/%.c src/cli/cli.h src/store.h src/scopeformat.h $(PG_STAMP)
	$(CC) $(CFLAGS) $(PG_CFLAGS) $(FE_CPPFLAGS) $(PG_CPPFLAGS) $(LIBPQ_INC) $(CPPFLAGS) -c -o $@ $<

src/cli/killswitch: $(CLI_OBJS) $(FE_OBJS)
	$(CC) $(CFLAGS) -o $@ $^ $(LIBPQ_LIB) $(FE_LIBS)

install: install-cli
install-cli: src/cli/killswitch
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) src/cli/killswitch '$(DESTDIR)$(bindir)/killswitch'

uninstall: uninstall-cli
uninstall-cli:
	rm -f '$(DESTDIR)$(bindir)/killswitch'

.PHONY: install-cli uninstall-cli

# The benchmark suite's latency probe (libpq only), and the suite.
bench/ks_probe: bench/ks_probe.c $(PG_STAMP)
	$(CC) $(CFLAGS) $(PG_CFLAGS) $(LIBPQ_INC) -o $@ $< $(LIBPQ_LIB)

bench:
	PG_CONFIG='$(PG_CONFIG)' bash bench/run

bench-quick:
	PG_CONFIG='$(PG_CONFIG)' bash bench/run --quick

.PHONY: bench bench-quick

# The Python and Node agents of examples/, directly and through PgBouncer,
# against a throwaway server (as root or with sudo, like bench).
examples:
	bash examples/run

.PHONY: examples

test/store_vectors: test/store_vectors.c $(FE_OBJS)
	$(CC) $(CFLAGS) $(PG_CFLAGS) $(FE_CPPFLAGS) $(PG_CPPFLAGS) $(CPPFLAGS) -o $@ $^ $(FE_LIBS)

# ---- the fuzzer: libFuzzer + ASan/UBSan on the state-file reader ----
comma := ,
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 20
FUZZ_WRAP = $(addprefix -Wl$(comma)--wrap=,palloc palloc0 palloc_extended repalloc pfree \
            pstrdup pnstrdup pg_malloc pg_malloc0 pg_realloc pg_free pg_strdup)

test/fuzz/fuzz_state: test/fuzz/fuzz_state.c test/fuzz/alloc_wrap.c src/store.c src/json.c \
                     src/canonical.c src/files.c src/isotime.c src/store.h $(PG_STAMP)
	$(FUZZ_CC) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Wno-ignored-attributes \
	  $(FE_CPPFLAGS) $(PG_CPPFLAGS) $(CPPFLAGS) -o $@ $(filter %.c,$^) $(FE_LIBS) $(FUZZ_WRAP)

# A short run (CI); for a long one: make fuzz-run FUZZ_SECONDS=3600
fuzz-run: test/fuzz/fuzz_state
	rm -rf tmp_check/fuzz && mkdir -p tmp_check/fuzz/corpus && cp test/fuzz/corpus/* tmp_check/fuzz/corpus/
	cd tmp_check/fuzz && if ../../test/fuzz/fuzz_state -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	  -print_final_stats=1 corpus > fuzz.log 2>&1; then grep -E '^(Done|stat::)' fuzz.log; \
	  else tail -60 fuzz.log; exit 1; fi

# ---- tests: each suite starts its own throwaway server (run as a non-root user) ----
PG_BINDIR := $(shell $(PG_CONFIG) --bindir)
PG_REGRESS_BIN = $(pgxsdir)/src/test/regress/pg_regress
PG_ISOLATION_BIN = $(pgxsdir)/src/test/isolation/pg_isolation_regress
TEST_CONF = test/killswitch.conf
REGRESS_TESTS = $(basename $(notdir $(filter-out sql/killswitch--%,$(wildcard sql/*.sql))))
ISOLATION_TESTS = $(basename $(notdir $(wildcard test/isolation/specs/*.spec)))
# injection_*.spec force an interleaving with injection points: a server of 17
# or later configured with --enable-injection-points (scripts/pg-builds 18).
ifeq ($(findstring --enable-injection-points,$(shell $(PG_CONFIG) --configure)),)
ISOLATION_TESTS := $(filter-out injection_%,$(ISOLATION_TESTS))
endif

# The messages of the server and of the command against PostgreSQL's error
# message style guide (scripts/check-messages), the checker's self-test first.
check-messages:
	perl scripts/check-messages --self-test
	perl scripts/check-messages

.PHONY: check-messages test-vectors test-regress test-isolation test-tap test-failover test-patroni test-alerts test-all fuzz-run

test-vectors: test/store_vectors
	test/store_vectors test/vectors/vectors.json

test-regress:
	mkdir -p tmp_check
	$(PG_REGRESS_BIN) --temp-instance=tmp_check/regress --temp-config=$(TEST_CONF) \
	  --bindir=$(PG_BINDIR) --inputdir=. --outputdir=tmp_check/regress-out \
	  --dbname=contrib_regression $(sort $(REGRESS_TESTS))

test-isolation:
	mkdir -p tmp_check
	$(PG_ISOLATION_BIN) --temp-instance=tmp_check/isolation --temp-config=$(TEST_CONF) \
	  --bindir=$(PG_BINDIR) --inputdir=test/isolation --outputdir=tmp_check/isolation-out \
	  --dbname=contrib_regression $(sort $(ISOLATION_TESTS))

# What the TAP tests bring themselves (test/t/090_bypass_matrix.pl): a
# volatile C function of no extension, loaded by its path, and a client
# that calls a function through the fast-path protocol.
test/ks_test_funcs.so: test/ks_test_funcs.c $(PG_STAMP)
	$(CC) $(CFLAGS) $(CFLAGS_SL) $(PG_CFLAGS) $(CPPFLAGS) -shared -o $@ $< $(LDFLAGS_SL)

test/ks_fastpath: test/ks_fastpath.c $(PG_STAMP)
	$(CC) $(CFLAGS) $(PG_CFLAGS) $(LIBPQ_INC) -o $@ $< $(LIBPQ_LIB)

# Built for the TAP tests only, never installed: a module that forces
# interleavings (loaded by its path, before killswitch) and a full disk on
# demand (LD_PRELOAD).  See test/hooks and test/faults.
test/hooks/ks_test_hooks.so: test/hooks/ks_test_hooks.c $(PG_STAMP)
	$(CC) $(CFLAGS) $(CFLAGS_SL) $(PG_CFLAGS) $(CPPFLAGS) -shared -o $@ $< $(LDFLAGS_SL)

test/faults/ks_faults.so: test/faults/ks_faults.c
	$(CC) -O2 -Wall -fPIC -shared -o $@ $< -ldl

# The tests' LD_PRELOAD shim that holds a process at its replace of the
# state file (test/shim/ks_pause.c): never part of the extension.
test/shim/ks_pause.so: test/shim/ks_pause.c test/shim/ks_shim_pause.h
	$(CC) $(CFLAGS) -shared -fPIC -o $@ $< -ldl

# The tests' LD_PRELOAD shim that holds the watcher between a read of the
# scope file and its next stat() of it (test/shim/ks_stat_pause.c): never part of the extension.
test/shim/ks_stat_pause.so: test/shim/ks_stat_pause.c test/shim/ks_shim_pause.h
	$(CC) $(CFLAGS) -shared -fPIC -o $@ $< -ldl

# The tests' LD_PRELOAD shim that fails one realloc() of one process on
# demand (test/shim/ks_oom.c): never part of the extension.
test/shim/ks_oom.so: test/shim/ks_oom.c
	$(CC) $(CFLAGS) -shared -fPIC -o $@ $< -ldl

# Logs and data dirs under tmp_check/tap/tmp_check: PostgreSQL::Test::Utils
# reads TESTDIR up to 15, TESTDATADIR and TESTLOGDIR from 16 on.
test-tap: test/store_vectors test/ks_test_funcs.so test/ks_fastpath $(TEST_LIBS)
	rm -rf tmp_check/tap && mkdir -p tmp_check/tap
	PATH="$(PG_BINDIR):$$PATH" TESTDIR='$(CURDIR)/tmp_check/tap' \
	  TESTDATADIR='$(CURDIR)/tmp_check/tap/tmp_check' TESTLOGDIR='$(CURDIR)/tmp_check/tap/tmp_check/log' \
	  PG_REGRESS='$(PG_REGRESS_BIN)' KS_SRCDIR='$(CURDIR)' \
	  $(PROVE) -I $(pgxsdir)/src/test/perl -I test $(PROVE_FLAGS) $(or $(TAP_TESTS),test/t/*.pl)

# A real full NOTIFY queue (8 GB, minutes): kept out of test-tap and scripts/test.
test-notify-full: test/store_vectors
	$(MAKE) test-tap TAP_TESTS=test/long/notify_queue_full.pl

.PHONY: test-notify-full

# The headers keep their layers and PostgreSQL's include rules, each compiles
# on its own, and the check fails on each violation planted in a copy
# (scripts/check-includes, ARCHITECTURE §10).
check-includes:
	bash scripts/check-includes --cc '$(CC) $(CPPFLAGS) $(CFLAGS)'
	bash scripts/check-includes --self-test --cc '$(CC) $(CPPFLAGS) $(CFLAGS)'

.PHONY: check-includes

# A real automatic failover: a pg_auto_failover monitor and two nodes on
# localhost, the primary killed while engaged (test/failover/run).
test-failover:
	PG_CONFIG='$(PG_CONFIG)' bash test/failover/run

# A switchover and a kill -9 failover with Patroni 3 and etcd on localhost,
# three nodes preloading killswitch through Patroni's configuration
# (test/patroni/run).
test-patroni:
	PG_CONFIG='$(PG_CONFIG)' bash test/patroni/run

# The alert rules (alerts/) under promtool: their unit tests, and each
# alert's tests shown to fail when the alert never fires, always fires or
# does not wait (test/alerts/run).
test-alerts:
	test/alerts/run

test-all: test-vectors test-regress test-isolation test-tap test-failover test-patroni test-alerts

# ---- other PostgreSQL versions (README "Versions") ----
# PostgreSQL 18 and an assert-enabled 15 from Debian's source packages, each
# in its own prefix outside the tree, once per machine (as root or with sudo).
pg-builds:
	bash scripts/pg-builds

# The whole suite (vectors, pg_regress, isolation, TAP) on Debian's 15, on 18
# and on the assert-enabled 15, building what is missing; as root or with
# sudo, like bench.  scripts/test runs less on 18 to stay within its hour.
test-all-versions:
	bash scripts/test-versions

# pg_regress and isolation with the servers under Valgrind's memcheck, against
# a -DUSE_VALGRIND build (as the server's user, with the extension installed
# there; `bash scripts/test-versions --valgrind` does both).
test-valgrind:
	PG_CONFIG='$(PG_CONFIG)' bash test/valgrind/run

.PHONY: pg-builds test-all-versions test-valgrind
