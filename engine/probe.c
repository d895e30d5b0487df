/*
 * probe.c - an executor's published state for the live wait-for graph: the
 * executor's thread writes it under a sequence count (a seqlock: odd while
 * a write is under way), with relaxed atomic stores only, so publishing
 * costs a few stores per action and never waits; any thread reads a
 * consistent copy by retrying while the count moves.  Owns nothing.
 */
#include <stdatomic.h>

#include "engine/executor.h"
#include "engine/internal.h"

static void begin(mp_engine_pub_t *p)
{
    uint32_t s = atomic_load_explicit(&p->seq, memory_order_relaxed);
    atomic_store_explicit(&p->seq, s + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
}

static void end(mp_engine_pub_t *p)
{
    uint32_t s = atomic_load_explicit(&p->seq, memory_order_relaxed);
    atomic_store_explicit(&p->seq, s + 1, memory_order_release);
}

void mp_engine_pub_action(mp_engine_pub_t *p, int phase, int64_t step, int op, int mb)
{
    uint64_t now = mp_engine_now_ns();
    begin(p);
    atomic_store_explicit(&p->phase, phase, memory_order_relaxed);
    atomic_store_explicit(&p->step, step, memory_order_relaxed);
    atomic_store_explicit(&p->op, op, memory_order_relaxed);
    atomic_store_explicit(&p->mb, mb, memory_order_relaxed);
    atomic_store_explicit(&p->wait, MP_EXEC_WAIT_NONE, memory_order_relaxed);
    atomic_store_explicit(&p->peer, -1, memory_order_relaxed);
    atomic_store_explicit(&p->since_ns, now, memory_order_relaxed);
    end(p);
}

void mp_engine_pub_wait(mp_engine_pub_t *p, int wait, int peer)
{
    uint64_t now = mp_engine_now_ns();
    begin(p);
    atomic_store_explicit(&p->wait, wait, memory_order_relaxed);
    atomic_store_explicit(&p->peer, wait == MP_EXEC_WAIT_NONE ? -1 : peer, memory_order_relaxed);
    atomic_store_explicit(&p->since_ns, now, memory_order_relaxed);
    end(p);
}

void mp_engine_pub_bytes(mp_engine_pub_t *p, uint64_t sent, uint64_t received)
{
    begin(p);
    atomic_store_explicit(&p->bytes_sent, sent, memory_order_relaxed);
    atomic_store_explicit(&p->bytes_received, received, memory_order_relaxed);
    end(p);
}

void mp_engine_pub_phase(mp_engine_pub_t *p, int phase)
{
    uint64_t now = mp_engine_now_ns();
    begin(p);
    atomic_store_explicit(&p->phase, phase, memory_order_relaxed);
    atomic_store_explicit(&p->op, -1, memory_order_relaxed);
    atomic_store_explicit(&p->mb, -1, memory_order_relaxed);
    atomic_store_explicit(&p->wait, MP_EXEC_WAIT_NONE, memory_order_relaxed);
    atomic_store_explicit(&p->peer, -1, memory_order_relaxed);
    atomic_store_explicit(&p->since_ns, now, memory_order_relaxed);
    end(p);
}

/* Reads p into out; retries while a write is under way (the writer never
 * waits, so this ends; after many tries the last copy is taken). */
void mp_engine_pub_read(const mp_engine_pub_t *cp, mp_exec_probe_t *out)
{
    mp_engine_pub_t *p = (mp_engine_pub_t *)cp; /* atomic loads of C11 take non-const */
    for (int tries = 0; tries < 1000; tries++) {
        uint32_t s0 = atomic_load_explicit(&p->seq, memory_order_acquire);
        out->phase = (mp_exec_phase_t)atomic_load_explicit(&p->phase, memory_order_relaxed);
        out->op = atomic_load_explicit(&p->op, memory_order_relaxed);
        out->mb = atomic_load_explicit(&p->mb, memory_order_relaxed);
        out->step = atomic_load_explicit(&p->step, memory_order_relaxed);
        out->wait = (mp_exec_wait_t)atomic_load_explicit(&p->wait, memory_order_relaxed);
        out->peer = atomic_load_explicit(&p->peer, memory_order_relaxed);
        out->since_ns = atomic_load_explicit(&p->since_ns, memory_order_relaxed);
        out->bytes_sent = atomic_load_explicit(&p->bytes_sent, memory_order_relaxed);
        out->bytes_received = atomic_load_explicit(&p->bytes_received, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        uint32_t s1 = atomic_load_explicit(&p->seq, memory_order_relaxed);
        if (s0 == s1 && (s0 & 1u) == 0) {
            return;
        }
    }
}

const char *mp_exec_wait_name(mp_exec_wait_t w)
{
    switch (w) {
    case MP_EXEC_WAIT_NONE:
        return "";
    case MP_EXEC_WAIT_INPUT:
        return "input";
    case MP_EXEC_WAIT_ACT:
        return "activation";
    case MP_EXEC_WAIT_GRAD:
        return "gradient";
    case MP_EXEC_WAIT_LABELS:
        return "labels";
    case MP_EXEC_WAIT_SEND:
        return "send";
    case MP_EXEC_WAIT_TP:
        return "tp_collective";
    case MP_EXEC_WAIT_DP:
        return "dp_allreduce";
    case MP_EXEC_WAIT_FEEDER:
        return "feeder";
    }
    return "?";
}
