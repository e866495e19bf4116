/*
 * tenant.h - per-tenant accounting of the host tier: bytes held, blocks, what
 * eviction could free, and quota overrides. A small table sorted by tenant id
 * (there are few tenants: one per uid or mapped uid); records are allocated one by
 * one so that blocks can point at theirs while the table grows.
 */
#ifndef KVT_STORE_TENANT_H
#define KVT_STORE_TENANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tenant {
	uint32_t id;
	bool quota_set;     /* an override exists (quota then applies, 0 = unlimited) */
	uint64_t quota;
	uint64_t bytes;     /* chunk-rounded bytes held: committed, pending, and deleted
			     * blocks still referenced */
	uint64_t blocks;    /* committed blocks in the index */
	uint64_t evictable; /* chunk-rounded bytes eviction could take right now */
	uint64_t users;     /* blocks holding space, plus temporary holds */
};

struct tenant_table {
	struct tenant **v; /* sorted by id */
	size_t n, cap;
};

/* The record of id, or NULL. */
struct tenant *tenant_find(const struct tenant_table *tt, uint32_t id);

/* The record of id, created (all zero) if absent. Returns 0 or -ENOMEM. */
int tenant_get(struct tenant_table *tt, uint32_t id, struct tenant **out);

/* Free the record if nothing uses it and it carries no override. */
void tenant_put_if_idle(struct tenant_table *tt, struct tenant *t);

/* Free every record. */
void tenant_table_destroy(struct tenant_table *tt);

#endif /* KVT_STORE_TENANT_H */
