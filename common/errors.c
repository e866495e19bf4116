/*
 * errors.c - names and messages for the KVT_E* codes, generated from the single
 * KVT_ERRNO_MAP table in kvtier.h so the enum, the names and the messages can
 * never disagree; and the library's version string.
 */
#include "kvtier.h"

#include "export.h"

KVT_EXPORT const char *kvt_strerror(int err)
{
	switch (err) {
#define KVT_ERR_MSG_(name, value, msg) \
	case value:                    \
		return msg;
		KVT_ERRNO_MAP(KVT_ERR_MSG_)
#undef KVT_ERR_MSG_
	}
	return "unknown error";
}

KVT_EXPORT const char *kvt_errname(int err)
{
	switch (err) {
#define KVT_ERR_NAME_(name, value, msg) \
	case value:                     \
		return #name;
		KVT_ERRNO_MAP(KVT_ERR_NAME_)
#undef KVT_ERR_NAME_
	}
	return "UNKNOWN";
}

KVT_EXPORT const char *kvt_version(void)
{
	return KVT_VERSION_STRING;
}
