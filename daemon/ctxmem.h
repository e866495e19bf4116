/* ctxmem.h - the daemon's saved contexts and memory records (ctxmem.c). */
#ifndef KVTD_CTXMEM_H
#define KVTD_CTXMEM_H

#include <stdbool.h>
#include <stdint.h>

#include "proto.h"

struct server;
struct conn;

/* Open the metadata store under data_dir and register its event source. */
int ctxmem_open(struct server *s);
void ctxmem_close(struct server *s); /* NULL-safe on a server without it */
bool ctxmem_handles(uint16_t opcode);
void ctxmem_dispatch(struct conn *c, const struct kvt_hdr *h, const uint8_t *body);
bool ctxmem_is_tag(const void *tag);
void ctxmem_handle(struct server *s);
void ctxmem_tick(struct server *s);
bool ctxmem_busy(const struct server *s);
bool ctxmem_failed(const struct server *s);
/* Per-tenant counts of contexts and records (and the store's own, for admins). */
void ctxmem_stats(struct conn *c, struct kvt_stats_writer *w);

#endif /* KVTD_CTXMEM_H */
