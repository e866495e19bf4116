/*
 * reload.h - SIGHUP: re-read the configuration the daemon was started with, apply
 * what can change while it runs, and report what cannot.
 */
#ifndef KVTD_RELOAD_H
#define KVTD_RELOAD_H

struct server;

/* Remember how the start-up configuration was assembled, so a reload repeats it:
 * the -c file (NULL: the embedded default) and each -o/-l override in command-line
 * order ("key=value", copied). reload_add_override returns 0 or -ENOMEM. */
void reload_set_file(const char *path);
int reload_add_override(const char *kv);

/* Free what the two above kept. */
void reload_forget(void);

/*
 * Build the configuration again (defaults, the file, the overrides; checked as at
 * start-up) and compare it with the running one, key by key. Keys that can change
 * live (the protocol limits, timeouts, log_level, quota, uid_map) are applied and
 * each change is logged; a changed key that cannot (socket, data_dir, the host
 * tier's shape, workers, ...) is logged as needing a restart and keeps its running
 * value. A configuration that does not parse or check is refused as a whole, with
 * the reason logged, and the running one stays in force. Limits apply to every
 * later request; HELLO reports the new ones to connections opened afterwards;
 * uid_map applies to connections accepted afterwards. Sends RELOADING=1 / READY=1
 * (sd.h). Event-loop thread only. Returns 0 (applied, possibly nothing changed) or
 * -EINVAL (refused).
 */
int reload_config(struct server *s);

#endif /* KVTD_RELOAD_H */
