/*
 * reload.c - SIGHUP: rebuild the configuration as at start-up, compare it with the
 * running one key by key (config_key_format), apply the keys in live_keys[] and
 * report every other changed key as needing a restart. A key added to the
 * configuration later is therefore reported, never silently ignored, until
 * someone makes it live here.
 */
#include "reload.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sd.h"
#include "server.h"

static struct {
	const char *file; /* borrowed from argv */
	char **overrides;
	size_t n;
} origin;

void reload_set_file(const char *path)
{
	origin.file = path;
}

int reload_add_override(const char *kv)
{
	char *copy = strdup(kv);
	char **v;

	if (!copy)
		return -ENOMEM;
	v = reallocarray(origin.overrides, origin.n + 1, sizeof(*v));
	if (!v) {
		free(copy);
		return -ENOMEM;
	}
	origin.overrides = v;
	origin.overrides[origin.n++] = copy;
	return 0;
}

void reload_forget(void)
{
	for (size_t i = 0; i < origin.n; i++)
		free(origin.overrides[i]);
	free(origin.overrides);
	origin.overrides = NULL;
	origin.n = 0;
}

/* ---- what can change live -------------------------------------------------- */

static void apply_log_level(struct server *s, struct kvtd_config *n)
{
	s->cfg->log_level = n->log_level;
	log_set_level(n->log_level);
}

/* Quotas go to the host tier first; a tenant whose override was removed goes back
 * to the running tenant_quota (which itself needs a restart to change). */
static void apply_quotas(struct server *s, struct kvtd_config *n)
{
	struct kvtd_config *cur = s->cfg;

	for (size_t i = 0; i < cur->nquotas; i++) {
		bool kept = false;
		for (size_t j = 0; j < n->nquotas && !kept; j++)
			kept = n->quotas[j].tenant == cur->quotas[i].tenant;
		if (!kept && t1_set_quota(s->t1, cur->quotas[i].tenant, cur->tenant_quota) < 0)
			log_error("reload: quota of tenant %u: out of memory", cur->quotas[i].tenant);
	}
	for (size_t j = 0; j < n->nquotas; j++)
		if (t1_set_quota(s->t1, n->quotas[j].tenant, n->quotas[j].bytes) < 0)
			log_error("reload: quota of tenant %u: out of memory", n->quotas[j].tenant);
	/* Swap the arrays: the running config owns the new ones, n frees the old. */
	struct quota_entry *q = cur->quotas;
	size_t nq = cur->nquotas;
	cur->quotas = n->quotas;
	cur->nquotas = n->nquotas;
	n->quotas = q;
	n->nquotas = nq;
}

/* Read at accept (conn.c), so it applies to connections accepted from now on. */
static void apply_uid_maps(struct server *s, struct kvtd_config *n)
{
	struct kvtd_config *cur = s->cfg;
	struct uid_map_entry *m = cur->uid_maps;
	size_t nm = cur->nuid_maps;

	cur->uid_maps = n->uid_maps;
	cur->nuid_maps = n->nuid_maps;
	n->uid_maps = m;
	n->nuid_maps = nm;
}

struct live_key {
	const char *name;
	size_t off, size; /* a plain field, copied as is ... */
	void (*apply)(struct server *s, struct kvtd_config *n); /* ... or this */
};

#define LIVE_FIELD(key, field)                                              \
	{ #key, offsetof(struct kvtd_config, field),                        \
	  sizeof(((struct kvtd_config *)0)->field), NULL }

/* Every limit is read from s->cfg where it is enforced, on the loop thread, so
 * copying the value is all it takes. */
static const struct live_key live_keys[] = {
	LIVE_FIELD(max_connections, max_connections),
	LIVE_FIELD(max_frame, max_frame),
	LIVE_FIELD(max_inflight, max_inflight),
	LIVE_FIELD(max_batch, max_batch),
	LIVE_FIELD(max_regions, max_regions),
	LIVE_FIELD(max_region_size, max_region_size),
	LIVE_FIELD(max_block_size, max_block_size),
	LIVE_FIELD(idle_timeout, idle_timeout_ms),
	LIVE_FIELD(handshake_timeout, handshake_timeout_ms),
	LIVE_FIELD(frame_timeout, frame_timeout_ms),
	{ "log_level", 0, 0, apply_log_level },
	{ "quota", 0, 0, apply_quotas },
	{ "uid_map", 0, 0, apply_uid_maps },
};

static const struct live_key *find_live(const char *name)
{
	for (size_t i = 0; i < sizeof(live_keys) / sizeof(live_keys[0]); i++)
		if (strcmp(live_keys[i].name, name) == 0)
			return &live_keys[i];
	return NULL;
}

/* ---- the reload ------------------------------------------------------------- */

/* The configuration as start-up would build it now. -EINVAL with err filled. */
static int build(struct kvtd_config *n, char *err, size_t cap)
{
	config_defaults(n);
	if (origin.file && config_parse_file(n, origin.file, err, cap) < 0)
		return -EINVAL;
	for (size_t i = 0; i < origin.n; i++)
		if (config_set(n, origin.overrides[i], err, cap) < 0)
			return -EINVAL;
	return config_finish(n, err, cap) < 0 ? -EINVAL : 0;
}

int reload_config(struct server *s)
{
	const char *from = origin.file ? origin.file : "the embedded default configuration";
	struct log_fields ef = { .error = -EINVAL };
	struct kvtd_config n;
	char err[512], outcome[160];
	unsigned applied = 0, restart = 0;

	kvtd_sd_reloading();
	log_info("SIGHUP: reloading the configuration from %s", from);
	if (build(&n, err, sizeof(err)) < 0) {
		log_with(LOG_ERROR, &ef, "reload refused: %s; the running configuration stays in force",
			 err);
		config_free(&n);
		kvtd_sd_reloaded(s, "Reload refused (see the log); running configuration unchanged");
		return -EINVAL;
	}
	for (size_t i = 0; i < config_key_count(); i++) {
		const char *name = config_key_name(i);
		char was[512], now[512];

		config_key_format(s->cfg, i, was, sizeof(was));
		config_key_format(&n, i, now, sizeof(now));
		if (strcmp(was, now) == 0)
			continue;
		const struct live_key *lk = find_live(name);
		if (!lk) {
			log_warn("reload: %s: %s -> %s: needs a restart (%s stays in force until then)",
				 name, was, now, was);
			restart++;
			continue;
		}
		if (lk->apply)
			lk->apply(s, &n);
		else
			memcpy((char *)s->cfg + lk->off, (const char *)&n + lk->off, lk->size);
		log_info("reload: %s: %s -> %s", name, was, now);
		applied++;
	}
	config_free(&n); /* the arrays the running config gave up, if any */
	if (applied == 0 && restart == 0)
		snprintf(outcome, sizeof(outcome), "Reloaded: no changes");
	else
		snprintf(outcome, sizeof(outcome), "Reloaded: %u change%s applied, %u need%s a restart",
			 applied, applied == 1 ? "" : "s", restart, restart == 1 ? "s" : "");
	log_info("configuration reloaded from %s: %u change%s applied, %u need%s a restart", from,
		 applied, applied == 1 ? "" : "s", restart, restart == 1 ? "s" : "");
	kvtd_sd_reloaded(s, outcome);
	return 0;
}
