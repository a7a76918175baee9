/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * muserload: post-copy memory loading for userspace.
 *
 * This header is the single source of truth of the ABI: the module and the
 * userspace crate generate their Rust definitions from it with bindgen, and
 * the selftests include it as it is. Documentation/muserload.rst describes
 * every ioctl and every errno.
 */
#ifndef _UAPI_LINUX_MUSERLOAD_H
#define _UAPI_LINUX_MUSERLOAD_H

#include <linux/ioctl.h>
#include <linux/types.h>

/* The ABI version this header describes; see MUSERLOAD_IOC_API. */
#define MUSERLOAD_API 1

/* ioctl type 0xBD, free in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define MUSERLOAD_IOCTL_BASE 0xBD

/* ioctl numbers, kept as plain constants so that bindgen can see them. */
#define _MUSERLOAD_API 0x00

/*
 * struct muserload_api - the handshake.
 * @api:      in: the ABI version the caller speaks, MUSERLOAD_API.
 *            out: the version the module speaks.
 * @features: in: the MUSERLOAD_FEATURE_* bits the caller needs.
 *            out: every feature bit the module supports.
 *
 * Fails with EINVAL if @api is not a version the module speaks or if @features
 * asks for a bit the module does not support; the module writes its own
 * version and features back in both cases, so a caller can see why.
 */
struct muserload_api {
	__u64 api;
	__u64 features;
};

#define MUSERLOAD_IOC_API _IOWR(MUSERLOAD_IOCTL_BASE, _MUSERLOAD_API, \
				struct muserload_api)

#endif /* _UAPI_LINUX_MUSERLOAD_H */
