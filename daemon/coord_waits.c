/*
 * coord_waits.c - the live wait-for graph of a running job (`mpar-client
 * waits`, DESIGN.md "Interfaces").  Every heartbeat of a node carries what
 * each of its executors does now (engine/executor.h's probe: the action,
 * what it waits for from which rank, since when); this file keeps the
 * latest per rank in the job's record and, when asked, builds the graph:
 * a rank that waits on a peer points at it, a rank in a TP or DP collective
 * at the members of its group that are elsewhere, the coordinator's feeder
 * at every rank that does not wait on it.  The roots are the ranks the
 * waits end at that cannot move: a rank whose node stopped reporting (its
 * process stopped or dead), or one long in compute; if the waits end in a
 * cycle instead, the graph says so (the schedule's simulator should make
 * one impossible).  libuv thread, like all of the coordinator.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "daemon/coord_internal.h"
#include "proto/json.h"

/* A rank computing this long, with others waiting on it, is a root. */
#define LONG_COMPUTE_MS 5000
/* Shorter waits are the pipeline's normal hand-offs: the ranks' states come
 * from heartbeats taken at different moments, so two fresh waits on each
 * other are no cycle, just two samples of a moving job.  Only a wait that
 * lasts is an edge of the graph (the threshold grows with the heartbeat,
 * which bounds how old a sample is). */
#define LONG_WAIT_MIN_MS 1000

/* A probe's string into a fixed field ("" for NULL). */
static void copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src != NULL ? src : "");
}

void coord_waits_heartbeat(mp_coord_t *c, mp_coord_node_t *n, const Mpar__Heartbeat *hb)
{
    uint64_t now = uv_now(c->d->loop);
    for (size_t i = 0; i < hb->n_shards; i++) {
        const Mpar__ShardProbe *p = hb->shards[i];
        coord_job_t *j = coord_job_by_id(c, p->job_id != NULL ? p->job_id : "");
        if (j == NULL || j->run == NULL || p->rank >= j->info.n_placement ||
            strcmp(j->info.placement[p->rank]->node, n->name) != 0) {
            continue; /* stale, or not this node's rank: ignored */
        }
        if (j->probes == NULL) {
            j->probes = mp_calloc(j->info.n_placement, sizeof(*j->probes));
            if (j->probes == NULL) {
                continue;
            }
        }
        coord_probe_t *q = &j->probes[p->rank];
        q->have = true;
        copy(q->phase, sizeof(q->phase), p->phase);
        copy(q->op, sizeof(q->op), p->op);
        copy(q->wait, sizeof(q->wait), p->wait);
        q->mb = p->mb;
        q->peer = p->peer;
        q->step = p->step;
        q->age_ms = p->age_ms;
        q->got_ms = now;
    }
}

static mp_coord_node_t *node_named(mp_coord_t *c, const char *name)
{
    for (mp_coord_node_t *n = c->nodes; n != NULL; n = n->next) {
        if (strcmp(n->name, name) == 0) {
            return n;
        }
    }
    return NULL;
}

void mp_coord_waits_free(Mpar__WaitGraph *g)
{
    if (g == NULL) {
        return;
    }
    for (size_t i = 0; i < g->n_shards; i++) {
        mp_free(g->shards[i]);
    }
    for (size_t i = 0; i < g->n_blocking; i++) {
        mp_free(g->blocking[i]->why);
        mp_free(g->blocking[i]);
    }
    mp_free(g->shards);
    mp_free(g->blocking);
    mp_free(g->cycle_ranks);
    mp_free(g->verdict);
    mp_free(g);
}

/* The graph's working state: vertices 0..nr-1 are the ranks, nr the feeder. */
typedef struct {
    int nr;
    bool *edge;   /* [(nr+1)^2]: edge[a * (nr+1) + b], a waits on b */
    bool *sink;   /* [nr+1]: waits on nobody */
    bool *reach;  /* [nr+1]: some sink is reachable from it */
    bool *waited; /* [nr+1]: somebody waits on it */
    char **why;   /* [nr]: why a sink cannot move ("" when it can) */
} graph_t;

static bool group_wait(const char *w)
{
    return strcmp(w, "tp_collective") == 0 || strcmp(w, "dp_allreduce") == 0;
}

/* Ranks of k's group for a TP or DP collective. */
static bool same_group(const Mpar__PlacementEntry *a, const Mpar__PlacementEntry *b, bool tp)
{
    return tp ? a->stage == b->stage && a->dp == b->dp : a->stage == b->stage && a->tp == b->tp;
}

static char *dup_printf(const char *fmt, ...) MP_PRINTF(1, 2);

static char *dup_printf(const char *fmt, ...)
{
    char buf[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    size_t n = strlen(buf) + 1;
    char *s = mp_malloc(n);
    if (s != NULL) {
        memcpy(s, buf, n);
    }
    return s;
}

mp_status_t mp_coord_waits(mp_coord_t *c, const char *id, Mpar__WaitGraph **graph_p,
                           mp_errbuf_t *err)
{
    coord_job_t *j = coord_job_by_id(c, id);
    if (j == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOTFOUND, "no job %s", id);
    }
    Mpar__WaitGraph *g = mp_calloc(1, sizeof(*g));
    if (g == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
    }
    mpar__wait_graph__init(g);
    g->job_id = j->id;
    g->state = (char *)mp_proto_enum_short(&mpar__job_state__descriptor, (int)j->info.state);
    int nr = (int)j->info.n_placement;
    if (j->info.state != MPAR__JOB_STATE__JOB_STATE_RUNNING || nr == 0) {
        g->verdict = dup_printf("job %s is %s: no waits to show", j->id, g->state);
        *graph_p = g;
        return MP_OK;
    }
    uint64_t now = uv_now(c->d->loop);
    uint64_t hb = c->d->cfg.heartbeat_ms;
    uint64_t long_wait = 2 * hb > LONG_WAIT_MIN_MS ? 2 * hb : LONG_WAIT_MIN_MS;
    size_t nv = (size_t)nr + 1;
    graph_t gr = {.nr = nr};
    gr.edge = mp_calloc(nv * nv, sizeof(bool));
    gr.sink = mp_calloc(nv, sizeof(bool));
    gr.reach = mp_calloc(nv, sizeof(bool));
    gr.waited = mp_calloc(nv, sizeof(bool));
    gr.why = mp_calloc(nv, sizeof(char *));
    g->shards = mp_calloc((size_t)nr, sizeof(*g->shards));
    g->blocking = mp_calloc((size_t)nr + 1, sizeof(*g->blocking));
    g->cycle_ranks = mp_calloc(nv, sizeof(uint32_t));
    if (gr.edge == NULL || gr.sink == NULL || gr.reach == NULL || gr.waited == NULL ||
        gr.why == NULL || g->shards == NULL || g->blocking == NULL || g->cycle_ranks == NULL) {
        mp_free(gr.edge);
        mp_free(gr.sink);
        mp_free(gr.reach);
        mp_free(gr.waited);
        mp_free(gr.why);
        mp_coord_waits_free(g);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
    }
    Mpar__PlacementEntry **pl = j->info.placement;
    /* Each rank as its node last told, and what it waits on. */
    for (int k = 0; k < nr; k++) {
        Mpar__ShardWait *w = mp_calloc(1, sizeof(*w));
        if (w == NULL) {
            continue;
        }
        mpar__shard_wait__init(w);
        g->shards[g->n_shards++] = w;
        const coord_probe_t *p = j->probes != NULL ? &j->probes[k] : NULL;
        mp_coord_node_t *n = node_named(c, pl[k]->node);
        w->rank = (uint32_t)k;
        w->stage = pl[k]->stage;
        w->tp = pl[k]->tp;
        w->dp = pl[k]->dp;
        w->node = pl[k]->node;
        w->node_state = (char *)(n != NULL ? mp_proto_enum_short(&mpar__node_state__descriptor,
                                                                 (int)n->info.state)
                                           : "UNKNOWN");
        w->report_age_ms = n != NULL ? now - n->last_hb_mono : 0;
        w->stale = n == NULL || n->info.state != MPAR__NODE_STATE__NODE_STATE_ALIVE ||
                   w->report_age_ms >= 2 * hb;
        w->peer = -1;
        w->mb = -1;
        w->phase = w->op = w->wait = "";
        if (p != NULL && p->have) {
            w->phase = (char *)p->phase;
            w->op = (char *)p->op;
            w->wait = (char *)p->wait;
            w->mb = p->mb;
            w->peer = p->peer;
            w->step = p->step;
            w->for_ms = p->age_ms + (now - p->got_ms);
            w->since_unix_ms = mpard_now_ms() - w->for_ms;
        }
        if (w->stale) {
            /* Whatever it said last, it does not move now. */
            gr.sink[k] = true;
            gr.why[k] =
                dup_printf("node %s has not reported for %llu ms (%s): its process is "
                           "stopped or dead",
                           pl[k]->node, (unsigned long long)w->report_age_ms, w->node_state);
        } else if (p == NULL || !p->have) {
            gr.sink[k] = true; /* no report yet: starting */
        } else if (w->wait[0] == '\0' || w->for_ms < long_wait) {
            gr.sink[k] = true; /* computing, or a short wait: it moves */
            if (strcmp(w->phase, "TRAIN") == 0 || strcmp(w->phase, "EVAL") == 0) {
                if (w->for_ms >= LONG_COMPUTE_MS) {
                    gr.why[k] =
                        dup_printf("in %s of micro-batch %d for %.1f s",
                                   w->op[0] ? w->op : "compute", w->mb, (double)w->for_ms / 1000.0);
                }
            }
        } else if (group_wait(w->wait)) {
            bool tp = strcmp(w->wait, "tp_collective") == 0;
            for (int q = 0; q < nr; q++) {
                const coord_probe_t *o = j->probes != NULL ? &j->probes[q] : NULL;
                bool in_same = o != NULL && o->have && strcmp(o->wait, w->wait) == 0;
                if (q != k && same_group(pl[k], pl[q], tp) && !in_same) {
                    gr.edge[(size_t)k * nv + (size_t)q] = true;
                }
            }
            bool any = false;
            for (int q = 0; q < nr; q++) {
                any = any || gr.edge[(size_t)k * nv + (size_t)q];
            }
            gr.sink[k] = !any; /* the whole group is in it: it moves */
        } else if (w->peer >= 0 && w->peer <= nr) {
            gr.edge[(size_t)k * nv + (size_t)w->peer] = true;
        } else {
            gr.sink[k] = true;
        }
    }
    /* The feeder waits on the ranks that do not wait on it (their tokens,
     * and the sends it has queued to them). */
    bool feeder_out = false;
    for (int k = 0; k < nr; k++) {
        if (!gr.edge[(size_t)k * nv + (size_t)nr]) {
            gr.edge[(size_t)nr * nv + (size_t)k] = true;
            feeder_out = true;
        }
    }
    gr.sink[nr] = !feeder_out;
    for (size_t a = 0; a < nv; a++) {
        for (size_t b = 0; b < nv; b++) {
            gr.waited[b] = gr.waited[b] || (gr.edge[a * nv + b] && a < (size_t)nr);
        }
    }
    /* Which vertices reach a sink: backwards from the sinks. */
    for (size_t v = 0; v < nv; v++) {
        gr.reach[v] = gr.sink[v];
    }
    for (bool grew = true; grew;) {
        grew = false;
        for (size_t a = 0; a < nv; a++) {
            for (size_t b = 0; b < nv && !gr.reach[a]; b++) {
                if (gr.edge[a * nv + b] && gr.reach[b]) {
                    gr.reach[a] = grew = true;
                }
            }
        }
    }
    /* The roots: sinks that cannot move and are waited on (a stopped
     * node's ranks always count: nothing they do can be seen). */
    int nblock = 0, nwaiting = 0;
    for (int k = 0; k < nr; k++) {
        nwaiting += !gr.sink[k];
        /* A silent node's ranks count when someone waits on them, or once
         * the silence is long, beyond a heartbeat or two lost in a busy
         * moment. */
        bool silent_long = g->shards[k]->report_age_ms >= 5 * hb &&
                           g->shards[k]->report_age_ms >= 2 * LONG_WAIT_MIN_MS;
        if (!gr.sink[k] || gr.why[k] == NULL ||
            !(gr.waited[k] || (g->shards[k]->stale && silent_long))) {
            continue;
        }
        Mpar__BlockingShard *b = mp_calloc(1, sizeof(*b));
        if (b == NULL) {
            continue;
        }
        mpar__blocking_shard__init(b);
        b->rank = (uint32_t)k;
        b->stage = pl[k]->stage;
        b->tp = pl[k]->tp;
        b->dp = pl[k]->dp;
        b->node = pl[k]->node;
        b->why = gr.why[k];
        gr.why[k] = NULL;
        g->blocking[g->n_blocking++] = b;
        nblock++;
    }
    if (gr.sink[nr] && gr.waited[nr]) {
        /* Everyone waits on the feeder, which waits on nobody: it is the
         * coordinator's own data thread that holds the job up. */
        Mpar__BlockingShard *b = mp_calloc(1, sizeof(*b));
        if (b != NULL) {
            mpar__blocking_shard__init(b);
            b->rank = (uint32_t)nr;
            b->node = c->d->cfg.name;
            b->why = dup_printf("every rank waits on the coordinator's data feeder");
            g->blocking[g->n_blocking++] = b;
            nblock++;
        }
    }
    /* A cycle: vertices from which no sink is reachable.  Walk one. */
    int start = -1;
    for (size_t v = 0; v < nv && start < 0; v++) {
        if (!gr.reach[v]) {
            start = (int)v;
        }
    }
    if (start >= 0) {
        g->cycle = 1;
        int *seen_at = mp_calloc(nv, sizeof(int));
        int v = start, pos = 1;
        while (seen_at != NULL && seen_at[v] == 0) {
            seen_at[v] = pos++;
            int next = -1;
            for (size_t b = 0; b < nv && next < 0; b++) {
                if (gr.edge[(size_t)v * nv + b] && !gr.reach[b]) {
                    next = (int)b;
                }
            }
            if (next < 0) {
                break; /* cannot happen: a vertex that reaches no sink has such an edge */
            }
            v = next;
        }
        /* v is the first vertex met twice: the cycle runs from it. */
        int first = v;
        do {
            g->cycle_ranks[g->n_cycle_ranks++] = (uint32_t)v;
            int next = -1;
            for (size_t b = 0; b < nv && next < 0; b++) {
                if (gr.edge[(size_t)v * nv + b] && !gr.reach[b]) {
                    next = (int)b;
                }
            }
            v = next;
        } while (v >= 0 && v != first && g->n_cycle_ranks < nv);
        mp_free(seen_at);
    }
    char ranks[200] = "";
    size_t off = 0;
    for (size_t i = 0; i < g->n_blocking && off < sizeof(ranks); i++) {
        int w = snprintf(ranks + off, sizeof(ranks) - off, "%s%u on %s", i ? ", " : "",
                         g->blocking[i]->rank, g->blocking[i]->node);
        off += w > 0 ? (size_t)w : 0;
    }
    if (g->cycle) {
        char cyc[200] = "";
        off = 0;
        for (size_t i = 0; i < g->n_cycle_ranks && off < sizeof(cyc); i++) {
            int w =
                snprintf(cyc + off, sizeof(cyc) - off, "%s%u", i ? " -> " : "", g->cycle_ranks[i]);
            off += w > 0 ? (size_t)w : 0;
        }
        g->verdict = dup_printf("the waits form a cycle: ranks %s -> %u (the schedule's simulator "
                                "should rule this out: a bug to report)%s%s",
                                cyc, g->n_cycle_ranks ? g->cycle_ranks[0] : 0u,
                                nblock ? "; blocked also by ranks " : "", nblock ? ranks : "");
    } else if (nblock > 0) {
        g->verdict = dup_printf("blocked by rank%s %s: %s", nblock > 1 ? "s" : "", ranks,
                                g->blocking[0]->why);
    } else {
        g->verdict = dup_printf("no shard is blocked: %d of %d ranks have waited on a peer for "
                                "over %llu ms, the rest compute or hand off",
                                nwaiting, nr, (unsigned long long)long_wait);
    }
    for (size_t v = 0; v < nv; v++) {
        mp_free(gr.why[v]);
    }
    mp_free(gr.edge);
    mp_free(gr.sink);
    mp_free(gr.reach);
    mp_free(gr.waited);
    mp_free(gr.why);
    *graph_p = g;
    return MP_OK;
}
