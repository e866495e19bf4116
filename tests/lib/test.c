/* test.c - runs each case of a test program in a forked child with a time limit. */
#include "test.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvtier.h"

/* Cases end with _exit, which skips LeakSanitizer's exit-time check; run it
 * explicitly so a leak in the library or the test fails the case. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define leak_check() __lsan_do_leak_check()
#else
#define leak_check() ((void)0)
#endif

unsigned test_timeout_s = 60;

/* Exit codes of a case's child. */
#define CASE_PASS 0
#define CASE_FAIL 1
#define CASE_SKIP 77

static int log_fd = -1; /* write end of the child's log pipe */

const char *test_errname(int rc)
{
	return kvt_errname(rc);
}

static void vlog_line(const char *prefix, const char *fmt, va_list ap)
{
	char buf[2048];
	int n = snprintf(buf, sizeof(buf), "%s", prefix);
	if (n < 0)
		n = 0;
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		m = 0;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(buf) - 2)
		len = sizeof(buf) - 2;
	buf[len++] = '\n';
	if (log_fd >= 0) {
		ssize_t w = write(log_fd, buf, len);
		(void)w;
	}
}

void test_log(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog_line("  ", fmt, ap);
	va_end(ap);
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
	char prefix[512];
	snprintf(prefix, sizeof(prefix), "!%s:%d: ", file, line);
	va_list ap;
	va_start(ap, fmt);
	vlog_line(prefix, fmt, ap);
	va_end(ap);
	_exit(CASE_FAIL);
}

void test_skip(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vlog_line("?", fmt, ap);
	va_end(ap);
	_exit(CASE_SKIP);
}

/* Read everything the child logged; the last line starting with '!' or '?' is the reason. */
static void read_log(int fd, char *all, size_t cap, char *reason, size_t rcap)
{
	size_t len = 0;
	for (;;) {
		if (len + 1 >= cap)
			break;
		ssize_t r = read(fd, all + len, cap - 1 - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	all[len] = 0;
	reason[0] = 0;
	for (char *p = all; *p;) {
		char *nl = strchr(p, '\n');
		size_t l = nl ? (size_t)(nl - p) : strlen(p);
		if (*p == '!' || *p == '?') {
			size_t c = l - 1 < rcap - 1 ? l - 1 : rcap - 1;
			memcpy(reason, p + 1, c);
			reason[c] = 0;
		}
		p += l + (nl ? 1 : 0);
	}
}

static int run_case(const char *prog, const struct test_case *tc)
{
	int pfd[2];
	if (pipe(pfd) < 0) {
		printf("FAIL %s/%s: pipe: %s\n", prog, tc->name, strerror(errno));
		return CASE_FAIL;
	}
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		printf("FAIL %s/%s: fork: %s\n", prog, tc->name, strerror(errno));
		return CASE_FAIL;
	}
	if (pid == 0) {
		close(pfd[0]);
		log_fd = pfd[1];
		/* Own process group, so the runner can kill daemons a case started. */
		setpgid(0, 0);
		alarm(test_timeout_s);
		tc->fn();
		leak_check();
		_exit(CASE_PASS);
	}
	close(pfd[1]);
	static char all[1 << 16];
	char reason[1024];
	read_log(pfd[0], all, sizeof(all), reason, sizeof(reason));
	close(pfd[0]);
	int st = 0;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	/* Anything the case left running in its group goes too. */
	kill(-pid, SIGKILL);
	int verdict;
	if (WIFEXITED(st) && WEXITSTATUS(st) == CASE_PASS) {
		verdict = CASE_PASS;
		printf("PASS %s/%s\n", prog, tc->name);
	} else if (WIFEXITED(st) && WEXITSTATUS(st) == CASE_SKIP) {
		verdict = CASE_SKIP;
		printf("SKIP %s/%s: %s\n", prog, tc->name, reason);
	} else {
		verdict = CASE_FAIL;
		if (WIFSIGNALED(st))
			printf("FAIL %s/%s: %s%s%s\n", prog, tc->name,
			       WTERMSIG(st) == SIGALRM ? "timed out" : strsignal(WTERMSIG(st)),
			       reason[0] ? " after: " : "", reason);
		else
			printf("FAIL %s/%s: %s\n", prog, tc->name,
			       reason[0] ? reason : "exited without a reason");
	}
	if (verdict == CASE_FAIL || getenv("KVT_TEST_VERBOSE"))
		fputs(all, stdout);
	fflush(stdout);
	return verdict;
}

int test_run(const char *prog, const struct test_case *cases, size_t n, int argc, char **argv)
{
	const char *base = strrchr(prog, '/');
	base = base ? base + 1 : prog;
	const char *t = getenv("KVT_TEST_TIMEOUT");
	if (t && atoi(t) > 0)
		test_timeout_s = (unsigned)atoi(t);
	signal(SIGPIPE, SIG_IGN);
	int failed = 0;
	for (size_t i = 0; i < n; i++) {
		/* Optional filter: run only the cases named on the command line. */
		if (argc > 1) {
			bool want = false;
			for (int a = 1; a < argc; a++)
				if (strcmp(argv[a], cases[i].name) == 0)
					want = true;
			if (!want)
				continue;
		}
		if (run_case(base, &cases[i]) == CASE_FAIL)
			failed++;
	}
	return failed ? 1 : 0;
}
