/* wordlm's thread pool (threads.c): parallel regions for the kernels of kernels.c.
 *
 * A region runs fn(job, team) on up to n threads, the caller's included (team id 0). Its work is a
 * sequence of phases, each a number of items that any thread of the team may take; a phase begins
 * once every item of the one before is done. Which thread computes an item never changes its bits,
 * so a kernel whose items write disjoint outputs gives the same result on any number of threads. */
#ifndef WORDLM_THREADS_H
#define WORDLM_THREADS_H

#include <stdint.h>

#include "kernels.h"

#define POOL_MAX 256 /* threads of one region, the caller's included */

typedef struct phases phases_t;

typedef struct {
    int id, n;      /* this thread's number in the team (0: the caller), and the team's size */
    phases_t *ph;   /* NULL for a team of one */
    unsigned phase; /* the last phase this thread ran */
    uint64_t total; /* items of every phase up to that one */
    uint64_t did;   /* items this thread has done, every phase so far */
} team_t;

typedef void (*item_fn)(void *ctx, int64_t item);
typedef void (*region_fn)(void *job, team_t *team);
typedef void (*task_fn)(const void *job, int64_t item);

/* the team's next phase: fn(ctx, i) for the items i < items this thread takes, then wait until every
 * item of the phase is done (what their threads wrote is then visible to this one) */
WL_INTERNAL void wl_phase(team_t *t, int64_t items, item_fn fn, void *ctx);

/* fn(job, team) on up to n threads: fewer where workers cannot start, one where the pool is busy
 * (another thread's region) */
WL_INTERNAL void wl_run_region(int n, region_fn fn, void *job);

/* fn(job, i) for every i < items on up to `threads` threads, the caller's included; fewer where the
 * items or the work (multiply-adds) are too few to pay for one */
WL_INTERNAL void wl_parallel_for(int threads, int64_t items, int64_t work, task_fn fn, const void *job);

#endif
