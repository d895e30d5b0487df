/*
 * test_xport_harness.h - runs a function on N UCX ranks, either as threads
 * of this process (one context, a worker per thread) or as forked processes
 * on loopback (a context each), with every rank connected to every other.
 * Addresses travel through memory (threads) or pipes (processes).
 */
#ifndef MP_TEST_XPORT_HARNESS_H
#define MP_TEST_XPORT_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

#include "transport/ucx.h"

#define XH_MAX_RANKS 8

/* Runs on each rank; eps[rank] is NULL.  Returns 0 for success, else a code the test reports. */
typedef int (*xh_rank_fn)(mp_xport_worker_t *w, mp_xport_ep_t **eps, uint32_t rank, uint32_t n,
                          void *arg);

typedef struct {
    int64_t timeout_ms; /* the workers' default wait timeout; 0 = 10000 */
    int kill_rank;      /* processes only: SIGKILL this rank ... */
    int kill_after_ms;  /* ... this long after every rank started fn; kill_rank < 0: nobody */
    int deadline_s;     /* the whole run; 0 = 60 */
    int backstop_ms;    /* worker options (0: the worker's defaults) */
    int spin_us;
} xh_opts_t;

/* Each returns 0 when every rank returned 0; codes[r] gets rank r's code
 * (-1 for a process killed or lost, -2 for a setup failure). */
int xh_run_threads(uint32_t n, xh_rank_fn fn, void *arg, const xh_opts_t *opts, int codes[]);
int xh_run_procs(uint32_t n, xh_rank_fn fn, void *arg, const xh_opts_t *opts, int codes[]);

/* Inside fn: rank j's worker address, to connect a fresh endpoint (e.g. after a failure). */
int xh_peer_address(uint32_t j, const void **addr_p, size_t *len_p);

/* Deterministic test data: a value in [-1, 1) of (seed, rank, index). */
float xh_value(uint32_t seed, uint32_t rank, size_t i);

#endif
