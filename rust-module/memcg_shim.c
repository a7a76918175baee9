// SPDX-License-Identifier: GPL-2.0
/*
 * The memory-cgroup helpers memcg.rs needs and the module's Rust code cannot
 * reach: mem_cgroup_put() and set_active_memcg() are static inline, and the
 * kernel crate wraps neither. Nothing else belongs here.
 */
#include <linux/memcontrol.h>
#include <linux/sched/mm.h>

struct mem_cgroup *muserload_memcg_get_current(void);
void muserload_memcg_put(struct mem_cgroup *memcg);
struct mem_cgroup *muserload_memcg_set_active(struct mem_cgroup *memcg);

/* The memory cgroup of current's mm, with a reference; NULL without memcg. */
struct mem_cgroup *muserload_memcg_get_current(void)
{
	return get_mem_cgroup_from_mm(current->mm);
}

void muserload_memcg_put(struct mem_cgroup *memcg)
{
	mem_cgroup_put(memcg);
}

/* Charges current's __GFP_ACCOUNT allocations to @memcg; returns the previous one. */
struct mem_cgroup *muserload_memcg_set_active(struct mem_cgroup *memcg)
{
	return set_active_memcg(memcg);
}
