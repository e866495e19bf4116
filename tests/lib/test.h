/*
 * test.h - the test framework: each test case runs in its own forked child with
 * a time limit, so a crash or hang fails that case and not the whole program.
 *
 * A test program defines cases with TEST(name) and lists them in
 * TEST_MAIN(case, case, ...). Output, one line per case, is read by
 * tests/run.sh:  "PASS prog/name", "FAIL prog/name: why", "SKIP prog/name: why".
 * The program exits 0 if nothing failed, 1 otherwise.
 */
#ifndef KVT_TEST_H
#define KVT_TEST_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct test_case {
	const char *name;
	void (*fn)(void);
};

/* Fail the current case (the child exits) with a message. */
void test_fail(const char *file, int line, const char *fmt, ...)
	__attribute__((noreturn, format(printf, 3, 4)));
/* Skip the current case with a reason (the child exits). */
void test_skip(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Progress note, shown only when a case fails or KVT_TEST_VERBOSE is set. */
void test_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int test_run(const char *prog, const struct test_case *cases, size_t n, int argc,
	     char **argv);

/* Per-case time limit in seconds (default 60; $KVT_TEST_TIMEOUT overrides). */
extern unsigned test_timeout_s;

#define TEST(name) static void name(void)

#define TEST_MAIN(...)                                                                 \
	static const struct test_case test_cases_[] = { TEST_LIST_(__VA_ARGS__) };         \
	int main(int argc, char **argv)                                                    \
	{                                                                                  \
		return test_run(argv[0], test_cases_,                                      \
				sizeof(test_cases_) / sizeof(test_cases_[0]), argc, argv); \
	}

/* Expand up to 48 case names into { "name", name } entries. */
#define TEST_ENTRY_(f) { #f, f },
#define TEST_L1_(a) TEST_ENTRY_(a)
#define TEST_L2_(a, ...) TEST_ENTRY_(a) TEST_L1_(__VA_ARGS__)
#define TEST_L3_(a, ...) TEST_ENTRY_(a) TEST_L2_(__VA_ARGS__)
#define TEST_L4_(a, ...) TEST_ENTRY_(a) TEST_L3_(__VA_ARGS__)
#define TEST_L5_(a, ...) TEST_ENTRY_(a) TEST_L4_(__VA_ARGS__)
#define TEST_L6_(a, ...) TEST_ENTRY_(a) TEST_L5_(__VA_ARGS__)
#define TEST_L7_(a, ...) TEST_ENTRY_(a) TEST_L6_(__VA_ARGS__)
#define TEST_L8_(a, ...) TEST_ENTRY_(a) TEST_L7_(__VA_ARGS__)
#define TEST_L9_(a, ...) TEST_ENTRY_(a) TEST_L8_(__VA_ARGS__)
#define TEST_L10_(a, ...) TEST_ENTRY_(a) TEST_L9_(__VA_ARGS__)
#define TEST_L11_(a, ...) TEST_ENTRY_(a) TEST_L10_(__VA_ARGS__)
#define TEST_L12_(a, ...) TEST_ENTRY_(a) TEST_L11_(__VA_ARGS__)
#define TEST_L13_(a, ...) TEST_ENTRY_(a) TEST_L12_(__VA_ARGS__)
#define TEST_L14_(a, ...) TEST_ENTRY_(a) TEST_L13_(__VA_ARGS__)
#define TEST_L15_(a, ...) TEST_ENTRY_(a) TEST_L14_(__VA_ARGS__)
#define TEST_L16_(a, ...) TEST_ENTRY_(a) TEST_L15_(__VA_ARGS__)
#define TEST_L17_(a, ...) TEST_ENTRY_(a) TEST_L16_(__VA_ARGS__)
#define TEST_L18_(a, ...) TEST_ENTRY_(a) TEST_L17_(__VA_ARGS__)
#define TEST_L19_(a, ...) TEST_ENTRY_(a) TEST_L18_(__VA_ARGS__)
#define TEST_L20_(a, ...) TEST_ENTRY_(a) TEST_L19_(__VA_ARGS__)
#define TEST_L21_(a, ...) TEST_ENTRY_(a) TEST_L20_(__VA_ARGS__)
#define TEST_L22_(a, ...) TEST_ENTRY_(a) TEST_L21_(__VA_ARGS__)
#define TEST_L23_(a, ...) TEST_ENTRY_(a) TEST_L22_(__VA_ARGS__)
#define TEST_L24_(a, ...) TEST_ENTRY_(a) TEST_L23_(__VA_ARGS__)
#define TEST_L25_(a, ...) TEST_ENTRY_(a) TEST_L24_(__VA_ARGS__)
#define TEST_L26_(a, ...) TEST_ENTRY_(a) TEST_L25_(__VA_ARGS__)
#define TEST_L27_(a, ...) TEST_ENTRY_(a) TEST_L26_(__VA_ARGS__)
#define TEST_L28_(a, ...) TEST_ENTRY_(a) TEST_L27_(__VA_ARGS__)
#define TEST_L29_(a, ...) TEST_ENTRY_(a) TEST_L28_(__VA_ARGS__)
#define TEST_L30_(a, ...) TEST_ENTRY_(a) TEST_L29_(__VA_ARGS__)
#define TEST_L31_(a, ...) TEST_ENTRY_(a) TEST_L30_(__VA_ARGS__)
#define TEST_L32_(a, ...) TEST_ENTRY_(a) TEST_L31_(__VA_ARGS__)
#define TEST_L33_(a, ...) TEST_ENTRY_(a) TEST_L32_(__VA_ARGS__)
#define TEST_L34_(a, ...) TEST_ENTRY_(a) TEST_L33_(__VA_ARGS__)
#define TEST_L35_(a, ...) TEST_ENTRY_(a) TEST_L34_(__VA_ARGS__)
#define TEST_L36_(a, ...) TEST_ENTRY_(a) TEST_L35_(__VA_ARGS__)
#define TEST_L37_(a, ...) TEST_ENTRY_(a) TEST_L36_(__VA_ARGS__)
#define TEST_L38_(a, ...) TEST_ENTRY_(a) TEST_L37_(__VA_ARGS__)
#define TEST_L39_(a, ...) TEST_ENTRY_(a) TEST_L38_(__VA_ARGS__)
#define TEST_L40_(a, ...) TEST_ENTRY_(a) TEST_L39_(__VA_ARGS__)
#define TEST_L41_(a, ...) TEST_ENTRY_(a) TEST_L40_(__VA_ARGS__)
#define TEST_L42_(a, ...) TEST_ENTRY_(a) TEST_L41_(__VA_ARGS__)
#define TEST_L43_(a, ...) TEST_ENTRY_(a) TEST_L42_(__VA_ARGS__)
#define TEST_L44_(a, ...) TEST_ENTRY_(a) TEST_L43_(__VA_ARGS__)
#define TEST_L45_(a, ...) TEST_ENTRY_(a) TEST_L44_(__VA_ARGS__)
#define TEST_L46_(a, ...) TEST_ENTRY_(a) TEST_L45_(__VA_ARGS__)
#define TEST_L47_(a, ...) TEST_ENTRY_(a) TEST_L46_(__VA_ARGS__)
#define TEST_L48_(a, ...) TEST_ENTRY_(a) TEST_L47_(__VA_ARGS__)
#define TEST_NARG_(...) TEST_NARG_I_(__VA_ARGS__, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, \
				   29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, \
				   14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1)
#define TEST_NARG_I_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, _13, _14, _15, _16,  \
		     _17, _18, _19, _20, _21, _22, _23, _24, _25, _26, _27, _28, _29, _30,    \
		     _31, _32, _33, _34, _35, _36, _37, _38, _39, _40, _41, _42, _43, _44,    \
		     _45, _46, _47, _48, N, ...)                                              \
	N
#define TEST_CAT_(a, b) TEST_CAT_I_(a, b)
#define TEST_CAT_I_(a, b) a##b
#define TEST_LIST_(...) TEST_CAT_(TEST_L, TEST_CAT_(TEST_NARG_(__VA_ARGS__), _))(__VA_ARGS__)

#define CHECK(cond)                                                                    \
	do {                                                                           \
		if (!(cond))                                                           \
			test_fail(__FILE__, __LINE__, "check failed: %s", #cond);      \
	} while (0)

#define CHECK_MSG(cond, ...)                                                           \
	do {                                                                           \
		if (!(cond))                                                           \
			test_fail(__FILE__, __LINE__, __VA_ARGS__);                    \
	} while (0)

/* Compare two integers (any integer type, printed as long long). */
#define CHECK_EQ(a, b)                                                                 \
	do {                                                                           \
		long long a_ = (long long)(a), b_ = (long long)(b);                   \
		if (a_ != b_)                                                          \
			test_fail(__FILE__, __LINE__, "%s == %lld, expected %s == %lld", \
				  #a, a_, #b, b_);                                     \
	} while (0)

/* Compare a kvtier return code with the expected one, naming both. */
#define CHECK_RC(rc, want)                                                             \
	do {                                                                           \
		int rc_ = (int)(rc), want_ = (int)(want);                              \
		if (rc_ != want_)                                                      \
			test_fail(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)", \
				  #rc, rc_, test_errname(rc_), want_, test_errname(want_)); \
	} while (0)

const char *test_errname(int rc);

#endif /* KVT_TEST_H */
