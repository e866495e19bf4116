/* log.c - levelled log lines on stderr, one write(2) per line so lines from
 * different threads never interleave; to the journal instead when stderr is
 * connected to it (journal.c). */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

static enum log_level current_level = LOG_INFO;

void log_set_level(enum log_level level)
{
	current_level = level;
}

enum log_level log_get_level(void)
{
	return current_level;
}

/* syslog priorities (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG) by enum log_level. */
static const int journal_priority[] = { [LOG_ERROR] = 3, [LOG_WARN] = 4, [LOG_INFO] = 6,
					 [LOG_DEBUG] = 7 };

static void log_vmsg(enum log_level level, const struct log_fields *f, const char *fmt,
		     va_list ap) __attribute__((format(printf, 3, 0)));
static void log_vmsg(enum log_level level, const struct log_fields *f, const char *fmt,
		     va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "kvtierd: %s: ", log_level_name(level));
	if (n < 0)
		return;
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (m < 0)
		return;
	/* The journal has PRIORITY= and SYSLOG_IDENTIFIER=, so MESSAGE= is the bare
	 * text; if the journal cannot be reached the line goes to stderr as usual. */
	if (journal_wanted() && (unsigned)level < sizeof(journal_priority) / sizeof(int) &&
	    journal_send_line(journal_priority[level], line + n, f) == 0)
		return;
	size_t len = (size_t)n + (size_t)m;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2;
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	if (level > current_level)
		return;
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, NULL, fmt, ap);
	va_end(ap);
}

void log_with(enum log_level level, const struct log_fields *f, const char *fmt, ...)
{
	if (level > current_level)
		return;
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, f, fmt, ap);
	va_end(ap);
}
