/* export.h - marks the definitions of libkvtier's public functions. The library is
 * built with -fvisibility=hidden and a version script; only functions defined with
 * KVT_EXPORT (and listed in client/libkvtier.map) leave it. */
#ifndef KVT_EXPORT_H
#define KVT_EXPORT_H

#ifdef KVT_BUILDING_LIB
#define KVT_EXPORT __attribute__((visibility("default")))
#else
#define KVT_EXPORT
#endif

#endif /* KVT_EXPORT_H */
