/*
 * journal.c - native journal logging for kvtierd (see journal.h). The location
 * fields (CODE_FILE=...) would name this file for every line, so they are left out.
 */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include "journal.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "kvtier.h"

/* Where journald listens for the native protocol (systemd-journald.service(8)). */
#define JOURNAL_SOCKET "/run/systemd/journal/socket"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool wanted;

static void decide(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;

	/* "DEVICE:INODE" of the stream systemd connected; if stderr is something
	 * else now (a redirect, a test's log file), the admin chose that: keep it. */
	if (!js || sscanf(js, "%llu:%llu", &dev, &ino) != 2)
		return;
	if (fstat(STDERR_FILENO, &st) < 0)
		return;
	if ((unsigned long long)st.st_dev != dev || (unsigned long long)st.st_ino != ino)
		return;
	/* sd_journal_send drops lines silently (returns 0) when the journal socket
	 * is missing; under systemd the socket unit keeps it, so check once here. */
	wanted = stat(JOURNAL_SOCKET, &st) == 0 && S_ISSOCK(st.st_mode);
}

bool journal_wanted(void)
{
	pthread_once(&once, decide);
	return wanted;
}

/* Project codes have their own band from -1000 down (kvtier.h); above it, the
 * codes are -errno. */
static bool is_errno(int err)
{
	return err < 0 && err > -1000;
}

/* The error's name: the project's table first, then glibc's errno names. */
static const char *error_name(int err)
{
	const char *n = kvt_errname(err);

	if (strcmp(n, "UNKNOWN") != 0 || !is_errno(err))
		return n;
	n = strerrorname_np(-err);
	return n ? n : "UNKNOWN";
}

int journal_send_line(int priority, const char *msg, const struct log_fields *f)
{
	char prio[32], tenant[32], op[64], error[64], errn[32];
	char *text;
	struct iovec iov[7];
	int n = 0, rc;

	if (priority < 0 || priority > 7)
		priority = 6;
	/* MESSAGE= plus the text, in one piece (iovecs are whole fields). */
	size_t ml = strlen(msg);
	text = malloc(8 + ml + 1);
	if (!text)
		return -ENOMEM; /* the caller falls back to stderr */
	memcpy(text, "MESSAGE=", 8);
	memcpy(text + 8, msg, ml + 1);
	iov[n++] = (struct iovec){ text, 8 + ml };
	snprintf(prio, sizeof(prio), "PRIORITY=%d", priority);
	iov[n++] = (struct iovec){ prio, strlen(prio) };
	iov[n++] = (struct iovec){ (char *)"SYSLOG_IDENTIFIER=kvtierd", 25 };
	if (f && f->has_tenant) {
		snprintf(tenant, sizeof(tenant), "TENANT=%u", f->tenant);
		iov[n++] = (struct iovec){ tenant, strlen(tenant) };
	}
	if (f && f->op) {
		snprintf(op, sizeof(op), "OP=%s", f->op);
		iov[n++] = (struct iovec){ op, strlen(op) };
	}
	if (f && f->error) {
		snprintf(error, sizeof(error), "ERROR=%s", error_name(f->error));
		iov[n++] = (struct iovec){ error, strlen(error) };
		if (is_errno(f->error)) {
			snprintf(errn, sizeof(errn), "ERRNO=%d", -f->error);
			iov[n++] = (struct iovec){ errn, strlen(errn) };
		}
	}
	rc = sd_journal_sendv(iov, n);
	free(text);
	return rc;
}
