/* log.h - kvtierd's logging: levelled lines on stderr ("kvtierd: LEVEL: message"),
 * or, when systemd connected stderr to the journal, journal entries with the
 * same text plus structured fields (journal.h). */
#ifndef KVTD_LOG_H
#define KVTD_LOG_H

#include "config.h"
#include "journal.h"

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* As log_msg, with structured fields for the journal (f may be NULL). */
void log_with(enum log_level level, const struct log_fields *f, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                      \
	do {                                                \
		if (log_get_level() >= LOG_DEBUG)           \
			log_msg(LOG_DEBUG, __VA_ARGS__);    \
	} while (0)

#endif /* KVTD_LOG_H */
