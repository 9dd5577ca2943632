/* wordlm's thread pool: the parallel regions of the kernels (kernels.c's decoder and recurrent
 * layers). threads.h says what a caller sees.
 *
 * A pool of worker threads, started once per process on the first call that asks for more than one
 * thread and grown to the largest count asked (at most POOL_MAX). A call runs one parallel region:
 * fn(job, team) on the caller (team id 0) and on workers 1 .. n-1. Each worker waits on its own
 * slot: spinning for IDLE_SPIN_NS after its last region (the next call often comes soon), then
 * asleep on a futex, so that idle workers burn no CPU between calls; waits inside a region spin,
 * then sleep, the same way. The work of a region is in phases of items that any thread of the team
 * may take (below): a thread that the machine's other processes keep off its core delays nobody
 * unless it holds an item, and a worker that has not started by the time the caller is done with
 * the region is called off rather than waited for.
 * One region at a time: a call that finds the pool busy (another Python thread's call; ctypes
 * releases the GIL) runs its region alone, which gives the same bits. After fork() the child has no
 * workers (pthread_atfork resets the pool) and starts new ones on first use. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threads.h"

#ifndef MIN_WORK /* multiply-adds worth a thread: ~20 us of AVX2 kernel. A worker still spinning joins
                  * in ~1 us; an asleep one in ~50, or is called off if the caller has done all by
                  * then. (A C harness may set it lower, to run threads on small sizes.) */
#define MIN_WORK (1 << 20)
#endif

#define SPIN_NS 20000      /* a worker's wait inside a region spins this long, then sleeps: longer
                            * than a few phases, and the thread waited for is off its core */
#define CALLER_SPIN_NS 200000 /* the caller's, which is the call's critical path: a futex wake takes
                               * ~50 us to get a sleeper running again (the 2-core EPYC VM) */
#define IDLE_SPIN_NS 50000 /* a worker waits this long for the next region before it sleeps (the
                            * LSTM's call and the decoder's come ~20 us apart) */

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#ifdef __linux__
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
/* sleep while *word == old (the kernel checks, atomically with going to sleep); wake every sleeper */
static void futex_wait(atomic_uint *word, unsigned old) {
    syscall(SYS_futex, (void *)word, FUTEX_WAIT_PRIVATE, old, NULL, NULL, 0);
}
static void futex_wake(atomic_uint *word) {
    syscall(SYS_futex, (void *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
#else
#include <sched.h>
static void futex_wait(atomic_uint *word, unsigned old) { (void)word, (void)old, sched_yield(); }
static void futex_wake(atomic_uint *word) { (void)word; }
#endif
#include <signal.h>
#include <time.h>

/* a word that threads wait on until it changes, and how many of them sleep on it */
typedef struct {
    atomic_uint value;
    atomic_uint sleepers;
} waitword_t;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* return once w->value != old (acquire): spin for spin_ns, then sleep. The sleepers count and the
 * value are sequentially consistent on both sides, so a waker either sees this sleeper or it sees the
 * new value. */
static void await_change(waitword_t *w, unsigned old, int64_t spin_ns) {
    if (atomic_load_explicit(&w->value, memory_order_acquire) != old) return;
    int64_t until = now_ns() + spin_ns;
    for (unsigned i = 1; atomic_load_explicit(&w->value, memory_order_acquire) == old; i++) {
        cpu_relax();
        if (i % 64 == 0 && now_ns() > until) {
            atomic_fetch_add(&w->sleepers, 1);
            while (atomic_load(&w->value) == old) futex_wait(&w->value, old);
            atomic_fetch_sub(&w->sleepers, 1);
            return;
        }
    }
}

/* after changing w->value with a sequentially consistent store or read-modify-write */
static void wake_waiters(waitword_t *w) {
    if (atomic_load(&w->sleepers)) futex_wake(&w->value);
}

/* Phases: a region's work as a sequence of phases, each a number of items that every thread of the
 * team may take, its own share first (the items [items * id / n, items * (id + 1) / n): what it took
 * in the phase before, still in its caches), then, after waiting STEAL_NS for the others, what remains
 * of theirs; a phase begins once every item of the one before is done. Which thread computes an item
 * never changes its bits.
 *
 * The end of a phase is a barrier on its critical path (the LSTM's is one per step, ~3 us of work at
 * batch 1 on two threads), so it moves as few cache lines as it can: each thread publishes the count of
 * items it has done on a line of its own and a waiting thread reads the others' lines until they add
 * up (one shared counter and a phase word took three transfers one after another: ~460 ns a phase on
 * the 2-core Xeon VM against ~230 ns); a thread looks into another's share, which moves that share's
 * line, only once it has waited STEAL_NS; and a phase's sleepers have a word of their own that only a
 * thread that sees them touches. */
#define STEAL_NS 2000

typedef struct {
    _Alignas(64) atomic_ullong next; /* (phase << 32) | the next item of this share not yet taken */
} share_t;

typedef struct {
    _Alignas(64) atomic_ullong count; /* items this thread has done, every phase so far */
} done_t;

struct phases {
    waitword_t asleep; /* threads asleep until a phase is done, and a count their waker raises */
    share_t share[POOL_MAX];
    done_t done[POOL_MAX];
};

/* an item of phase p that nobody has taken, from this thread's share or (steal) anyone's, or -1 */
static int64_t take_item(phases_t *ph, unsigned p, int64_t items, int id, int n, int steal) {
    for (int k = 0; k < (steal ? n : 1); k++) {
        int o = (id + k) % n;
        uint64_t size = (uint64_t)(items * (o + 1) / n - items * o / n);
        atomic_ullong *next = &ph->share[o].next;
        unsigned long long v = atomic_load_explicit(next, memory_order_relaxed); /* the atomic's own type */
        for (;;) { /* a share last taken from in an earlier phase is whole; in a later one, empty for p */
            unsigned vp = (unsigned)(v >> 32);
            uint64_t i = vp == p ? (v & 0xffffffffu) : vp < p ? 0 : size;
            if (i >= size) break;
            if (atomic_compare_exchange_weak_explicit(next, &v, ((uint64_t)p << 32) | (i + 1), memory_order_relaxed,
                                                      memory_order_relaxed))
                return items * o / n + (int64_t)i;
        }
    }
    return -1;
}

/* whether every item up to this thread's phase is done (a thread already in the next phase may have
 * counted some of its items too) */
static int phase_done(const team_t *t) {
    uint64_t sum = 0;
    for (int i = 0; i < t->n; i++) sum += atomic_load(&t->ph->done[i].count);
    return sum >= t->total;
}

/* fn(ctx, i) for the items of phase p this thread takes, then its count of items done published, and
 * the phase's sleepers woken if that ended it. Sequentially consistent on both sides (here: the count,
 * then the sleepers; a sleeper: the sleepers, then the counts), so either the sleeper sees the count
 * or this thread sees the sleeper. Returns how many items it ran. */
static int64_t run_items(team_t *t, unsigned p, int64_t items, item_fn fn, void *ctx, int steal) {
    int64_t mine = 0;
    for (int64_t i; (i = take_item(t->ph, p, items, t->id, t->n, steal)) >= 0; mine++) fn(ctx, i);
    if (!mine) return 0;
    atomic_store(&t->ph->done[t->id].count, t->did += (uint64_t)mine);
    if (atomic_load(&t->ph->asleep.sleepers) && phase_done(t)) {
        atomic_fetch_add(&t->ph->asleep.value, 1);
        wake_waiters(&t->ph->asleep);
    }
    return mine;
}

/* the team's next phase: fn(ctx, i) for the items i < items this thread takes, then wait until every
 * item of the phase is done (what their threads wrote is then visible to this one): spin, reading the
 * others' counts (and, after STEAL_NS, taking what they have not started), then sleep */
void wl_phase(team_t *t, int64_t items, item_fn fn, void *ctx) {
    unsigned p = ++t->phase;
    t->total += (uint64_t)items;
    if (t->n == 1) {
        for (int64_t i = 0; i < items; i++) fn(ctx, i);
        return;
    }
    phases_t *ph = t->ph;
    run_items(t, p, items, fn, ctx, 0);
    int64_t start = now_ns(), spin = t->id ? SPIN_NS : CALLER_SPIN_NS;
    for (unsigned i = 1; !phase_done(t); i++) {
        cpu_relax();
        if (i % 64) continue;
        int64_t waited = now_ns() - start;
        if (waited > STEAL_NS && run_items(t, p, items, fn, ctx, 1)) continue;
        if (waited <= spin) continue;
        atomic_fetch_add(&ph->asleep.sleepers, 1);
        for (unsigned v; v = atomic_load(&ph->asleep.value), !phase_done(t);) futex_wait(&ph->asleep.value, v);
        atomic_fetch_sub(&ph->asleep.sleepers, 1);
        return;
    }
}

enum { IDLE, POSTED, RUNNING };

typedef struct {
    _Alignas(64) waitword_t state; /* IDLE, POSTED (a region waits for this worker), RUNNING */
    region_fn fn;                  /* the region: written while IDLE, before POSTED */
    void *job;
    int n;
} slot_t;

static struct {
    pthread_mutex_t lock; /* held by the caller running a region (and around fork) */
    int workers;          /* started: worker i (team id i + 1) waits on slot[i] */
    _Alignas(64) waitword_t pending; /* workers posted a region and not done with it */
    phases_t ph;
    slot_t slot[POOL_MAX - 1];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *worker_main(void *arg) {
    int i = (int)(intptr_t)arg;
    slot_t *s = &pool.slot[i];
    for (;;) {
        unsigned v = atomic_load_explicit(&s->state.value, memory_order_acquire), posted = POSTED;
        if (v != POSTED) {
            await_change(&s->state, v, IDLE_SPIN_NS);
            continue;
        }
        if (!atomic_compare_exchange_strong(&s->state.value, &posted, RUNNING)) continue; /* called off */
        team_t team = {i + 1, s->n, &pool.ph, 0, 0, 0};
        s->fn(s->job, &team);
        atomic_store(&s->state.value, IDLE);
        if (atomic_fetch_sub(&pool.pending.value, 1) == 1) wake_waiters(&pool.pending);
    }
    return NULL;
}

/* fork: the child's copy of the pool has no threads; it starts new ones when asked */
static void pool_prepare(void) { pthread_mutex_lock(&pool.lock); }
static void pool_parent(void) { pthread_mutex_unlock(&pool.lock); }
static void pool_child(void) {
    pool.workers = 0;
    atomic_store(&pool.pending.value, 0), atomic_store(&pool.pending.sleepers, 0);
    atomic_store(&pool.ph.asleep.sleepers, 0);
    for (int i = 0; i < POOL_MAX - 1; i++)
        atomic_store(&pool.slot[i].state.value, IDLE), atomic_store(&pool.slot[i].state.sleepers, 0);
    pthread_mutex_unlock(&pool.lock);
}
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(pool_prepare, pool_parent, pool_child); }

/* start workers (the pool's lock held) until there are `want`, or one fails to start; workers take
 * no signals (Python's are for the main thread) */
static void pool_grow(int want) {
    pthread_once(&atfork_once, register_atfork);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (pthread_t tid; pool.workers < want; pool.workers++)
        if (pthread_create(&tid, &attr, worker_main, (void *)(intptr_t)pool.workers) != 0) break;
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* fn(job, team) on up to n threads: fewer where workers cannot start, one where the pool is busy;
 * workers that had not started when the caller returned from fn do not run it at all */
void wl_run_region(int n, region_fn fn, void *job) {
    if (n > POOL_MAX) n = POOL_MAX;
    if (n <= 1 || pthread_mutex_trylock(&pool.lock) != 0) {
        team_t solo = {0, 1, NULL, 0, 0, 0};
        fn(job, &solo);
        return;
    }
    if (pool.workers < n - 1) pool_grow(n - 1);
    if (n > pool.workers + 1) n = pool.workers + 1;
    for (int i = 0; i < n; i++) {
        atomic_store_explicit(&pool.ph.share[i].next, 0, memory_order_relaxed);
        atomic_store_explicit(&pool.ph.done[i].count, 0, memory_order_relaxed);
    }
    atomic_store(&pool.pending.value, (unsigned)(n - 1));
    for (int i = 0; i < n - 1; i++) {
        slot_t *s = &pool.slot[i];
        s->fn = fn, s->job = job, s->n = n;
        atomic_store(&s->state.value, POSTED);
        wake_waiters(&s->state);
    }
    team_t me = {0, n, n > 1 ? &pool.ph : NULL, 0, 0, 0};
    fn(job, &me);
    for (int i = 0; i < n - 1; i++) { /* call off those that have not started */
        unsigned posted = POSTED;
        if (atomic_compare_exchange_strong(&pool.slot[i].state.value, &posted, IDLE))
            atomic_fetch_sub(&pool.pending.value, 1);
    }
    for (unsigned left; (left = atomic_load_explicit(&pool.pending.value, memory_order_acquire)) != 0;)
        await_change(&pool.pending, left, CALLER_SPIN_NS);
    pthread_mutex_unlock(&pool.lock);
}

typedef struct {
    task_fn fn;
    const void *job;
    int64_t items;
} items_t;

static void run_item(void *arg, int64_t i) {
    const items_t *p = arg;
    p->fn(p->job, i);
}

static void items_region(void *arg, team_t *team) {
    items_t *p = arg;
    wl_phase(team, p->items, run_item, p);
}

/* fn(job, i) for every i < items on up to `threads` threads of the pool, the caller's included;
 * fewer where the items or the work (multiply-adds) are too few to pay for one. */
void wl_parallel_for(int threads, int64_t items, int64_t work, task_fn fn, const void *job) {
    int64_t n = threads;
    if (n > items) n = items;
    if (n > 1 + work / MIN_WORK) n = 1 + work / MIN_WORK;
    if (n <= 1) {
        for (int64_t i = 0; i < items; i++) fn(job, i);
        return;
    }
    items_t p = {fn, job, items};
    wl_run_region((int)n, items_region, &p);
}
