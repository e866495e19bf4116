/*
 * journal.h - log lines sent to the systemd journal in its native protocol, with
 * structured fields, when standard error already goes to the journal. Kept apart
 * from log.c because <systemd/sd-journal.h> pulls in <syslog.h>, whose LOG_INFO
 * and LOG_DEBUG macros collide with enum log_level.
 */
#ifndef KVTD_JOURNAL_H
#define KVTD_JOURNAL_H

#include <stdbool.h>
#include <stdint.h>

/* The structured context of one log line. In the journal: TENANT=, OP= (the
 * opcode's name), ERROR= (the error's name, e.g. EBADMAGIC) and, for a plain
 * errno, ERRNO=; so `journalctl -u kvtierd TENANT=1000` lists one tenant's
 * events. On standard error the fields are not repeated (the message says it). */
struct log_fields {
	bool has_tenant;
	uint32_t tenant;
	const char *op; /* static string or NULL */
	int error;      /* KVT_E* code or -errno; 0 = none */
};

/* true if $JOURNAL_STREAM names the device and inode of our standard error, i.e.
 * systemd connected stderr to the journal (systemd.exec(5)). Decided once,
 * thread-safe. */
bool journal_wanted(void);

/* Send one line at syslog priority (0..7) with SYSLOG_IDENTIFIER=kvtierd and the
 * fields in f (may be NULL). Thread-safe. Returns 0, or a negative errno when the
 * journal cannot be reached (the caller then writes the line to stderr). */
int journal_send_line(int priority, const char *msg, const struct log_fields *f);

#endif /* KVTD_JOURNAL_H */
