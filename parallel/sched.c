/*
 * sched.c - pipeline schedules as per-stage action lists (sched.h): the
 * registry of schedule kinds (one file each in parallel/sched/, behind
 * sched_gen.h's table), the lists' storage and the helpers the generators
 * share, and the text form.  The simulator is sched_sim.c.  Owns the
 * schedules it allocates; pure, any thread.
 */
#include "parallel/sched.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "parallel/sched_gen.h"

mp_status_t mp_sched_new(mp_sched_kind_t kind, int p, int m, mp_sched_t **sched_p)
{
    if (p < 1 || p > MP_SCHED_MAX_STAGES || m < 1 || m > MP_SCHED_MAX_MICRO) {
        return MP_ERR_INVAL;
    }
    mp_sched_t *sched = mp_calloc(1, sizeof(*sched));
    if (sched == NULL) {
        return MP_ERR_NOMEM;
    }
    sched->kind = kind;
    sched->nstages = p;
    sched->nmicro = m;
    sched->nchunks = 1;
    *sched_p = sched;
    return MP_OK;
}

mp_status_t mp_sched_push_chunk(mp_sched_t *sched, int stage, int chunk, mp_sched_op_t op, int mb)
{
    if (stage < 0 || stage >= sched->nstages || chunk < 0 || chunk >= sched->nchunks) {
        return MP_ERR_INVAL;
    }
    if (sched->count[stage] == sched->cap[stage]) {
        int cap = sched->cap[stage] > 0 ? 2 * sched->cap[stage] : 16;
        mp_sched_action_t *a = mp_realloc(sched->action[stage], sizeof(*a) * (size_t)cap);
        if (a == NULL) {
            return MP_ERR_NOMEM;
        }
        sched->action[stage] = a;
        sched->cap[stage] = cap;
    }
    sched->action[stage][sched->count[stage]++] =
        (mp_sched_action_t){.op = op, .mb = mb, .chunk = chunk, .fuse = 1};
    return MP_OK;
}

mp_status_t mp_sched_push(mp_sched_t *sched, int stage, mp_sched_op_t op, int mb)
{
    return mp_sched_push_chunk(sched, stage, 0, op, mb);
}

mp_status_t mp_sched_remove(mp_sched_t *sched, int stage, int index)
{
    if (stage < 0 || stage >= sched->nstages || index < 0 || index >= sched->count[stage]) {
        return MP_ERR_INVAL;
    }
    mp_sched_action_t *a = sched->action[stage];
    memmove(&a[index], &a[index + 1], sizeof(*a) * (size_t)(sched->count[stage] - index - 1));
    sched->count[stage]--;
    return MP_OK;
}

void mp_sched_free(mp_sched_t *sched)
{
    if (sched == NULL) {
        return;
    }
    for (int s = 0; s < sched->nstages; s++) {
        mp_free(sched->action[s]);
    }
    mp_free(sched);
}

/* The forward of mb on stage s, chunk c, with its receive and send. */
mp_status_t mp_sched_push_fwd(mp_sched_t *sched, int s, int c, int mb)
{
    int u = c * sched->nstages + s, last = sched->nstages * sched->nchunks - 1;
    mp_status_t st = MP_OK;
    if (u > 0) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_RECV_ACT, mb);
    }
    if (st == MP_OK) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_FWD, mb);
    }
    if (st == MP_OK && u < last) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_SEND_ACT, mb);
    }
    return st;
}

/* The backward of mb on stage s, chunk c, with its receive and send. */
mp_status_t mp_sched_push_bwd(mp_sched_t *sched, int s, int c, int mb)
{
    int u = c * sched->nstages + s, last = sched->nstages * sched->nchunks - 1;
    mp_status_t st = MP_OK;
    if (u < last) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_RECV_GRAD, mb);
    }
    if (st == MP_OK) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_BWD, mb);
    }
    if (st == MP_OK && u > 0) {
        st = mp_sched_push_chunk(sched, s, c, MP_SCHED_SEND_GRAD, mb);
    }
    return st;
}

mp_status_t mp_sched_push_tail(mp_sched_t *sched, int s)
{
    mp_status_t st = mp_sched_push(sched, s, MP_SCHED_DP_ALLREDUCE, -1);
    return st == MP_OK ? mp_sched_push(sched, s, MP_SCHED_OPT_STEP, -1) : st;
}

/* Indexed by mp_sched_kind_t: adding a schedule is its file plus one line here. */
static const mp_sched_gen_t *const registry[] = {
    [MP_SCHED_NAIVE] = &mp_sched_gen_naive,
    [MP_SCHED_GPIPE] = &mp_sched_gen_gpipe,
    [MP_SCHED_1F1B] = &mp_sched_gen_1f1b,
    [MP_SCHED_ZERO_BUBBLE] = &mp_sched_gen_zero_bubble,
    [MP_SCHED_INTERLEAVED_1F1B] = &mp_sched_gen_interleaved_1f1b,
};
#define NKINDS ((int)(sizeof(registry) / sizeof(registry[0])))

const mp_sched_gen_t *mp_sched_gen(mp_sched_kind_t kind)
{
    return (int)kind >= 0 && (int)kind < NKINDS ? registry[kind] : NULL;
}

int mp_sched_kind_names(const char *const **names_p)
{
    static const char *names[sizeof(registry) / sizeof(registry[0])];
    for (int k = 0; k < NKINDS; k++) {
        names[k] = registry[k]->name;
    }
    *names_p = names;
    return NKINDS;
}

bool mp_sched_kind_splits(mp_sched_kind_t kind)
{
    const mp_sched_gen_t *gen = mp_sched_gen(kind);
    return gen != NULL && gen->split;
}

mp_status_t mp_sched_check(mp_sched_kind_t kind, int p, int m, int v, mp_errbuf_t *err)
{
    if (p < 1 || p > MP_SCHED_MAX_STAGES) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.pp: %d, expected 1 to %d stages", p,
                             MP_SCHED_MAX_STAGES);
    }
    if (m < 1 || m > MP_SCHED_MAX_MICRO) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.micro_batches: %d, expected 1 to %d micro-batches", m,
                             MP_SCHED_MAX_MICRO);
    }
    const mp_sched_gen_t *gen = mp_sched_gen(kind);
    if (gen == NULL) {
        return mp_errbuf_set(err, MP_ERR_SPEC, "parallel.schedule: unknown schedule %d", (int)kind);
    }
    if (v != 1 && !gen->chunks) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.virtual_stages: %d chunks per stage need schedule "
                             "\"interleaved_1f1b\", not \"%s\"",
                             v, gen->name);
    }
    if (v < 1 || p * v > MP_SCHED_MAX_STAGES) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.virtual_stages: %d, expected 1 to %d (parallel.pp x "
                             "parallel.virtual_stages at most %d virtual stages)",
                             v, MP_SCHED_MAX_STAGES / p, MP_SCHED_MAX_STAGES);
    }
    return gen->check != NULL ? gen->check(p, m, v, err) : MP_OK;
}

mp_status_t mp_sched_build(mp_sched_kind_t kind, int p, int m, int v, mp_sched_t **sched_p,
                           mp_errbuf_t *err)
{
    mp_status_t st = mp_sched_check(kind, p, m, v, err);
    if (st != MP_OK) {
        return st;
    }
    mp_sched_t *sched = NULL;
    st = mp_sched_new(kind, p, m, &sched);
    if (st == MP_OK) {
        sched->nchunks = v;
        st = mp_sched_gen(kind)->build(sched);
    }
    if (st != MP_OK) {
        mp_sched_free(sched);
        return mp_errbuf_set(err, st, "schedule: %s", mp_strerror(st));
    }
    *sched_p = sched;
    return MP_OK;
}

bool mp_sched_stage_splits(const mp_sched_t *sched, int stage)
{
    for (int i = 0; i < sched->count[stage]; i++) {
        if (sched->action[stage][i].op == MP_SCHED_BWD_W) {
            return true;
        }
    }
    return false;
}

int mp_sched_slots(const mp_sched_t *sched, int stage, int chunk)
{
    mp_sched_op_t last = mp_sched_stage_splits(sched, stage) ? MP_SCHED_BWD_W : MP_SCHED_BWD;
    int now = 0, peak = 0;
    bool *held = mp_calloc((size_t)sched->nmicro, sizeof(bool));
    if (held == NULL) {
        return sched->nmicro;
    }
    for (int i = 0; i < sched->count[stage]; i++) {
        const mp_sched_action_t *a = &sched->action[stage][i];
        if (a->chunk != chunk || a->mb < 0 || a->mb >= sched->nmicro) {
            continue;
        }
        if ((a->op == MP_SCHED_RECV_ACT || a->op == MP_SCHED_FWD) && !held[a->mb]) {
            held[a->mb] = true;
            now++;
        } else if (a->op == last && held[a->mb]) {
            held[a->mb] = false;
            now--;
        }
        if (now > peak) {
            peak = now;
        }
    }
    mp_free(held);
    return peak > 0 ? peak : 1;
}

/* Appends chunk c's waiting W's q[0..*nq) to stage s, the last carrying their count. */
static mp_status_t fuse_flush(mp_sched_t *sched, int s, int c, int *q, int *nq)
{
    for (int j = 0; j < *nq; j++) {
        MP_TRY(mp_sched_push_chunk(sched, s, c, MP_SCHED_BWD_W, q[j]));
        sched->action[s][sched->count[s] - 1].fuse = j == *nq - 1 ? *nq : 0;
    }
    *nq = 0;
    return MP_OK;
}

mp_status_t mp_sched_fuse_w(mp_sched_t *sched, int k, mp_errbuf_t *err)
{
    if (k <= 1) {
        return MP_OK;
    }
    if (!mp_sched_kind_splits(sched->kind)) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel.fuse_w: %d needs a schedule whose backward is B then W "
                             "(zero_bubble)",
                             k);
    }
    int v = sched->nchunks;
    int *q = mp_malloc(sizeof(int) * (size_t)v * (size_t)k), *nq = mp_calloc((size_t)v, sizeof(int));
    mp_status_t st = q != NULL && nq != NULL ? MP_OK : MP_ERR_NOMEM;
    for (int s = 0; s < sched->nstages && st == MP_OK; s++) {
        /* The old list, rebuilt in place of itself. */
        mp_sched_action_t *old = sched->action[s];
        int n = sched->count[s];
        sched->action[s] = NULL;
        sched->count[s] = sched->cap[s] = 0;
        for (int i = 0; i < n && st == MP_OK; i++) {
            const mp_sched_action_t *a = &old[i];
            if (a->op == MP_SCHED_BWD_W) {
                int c = a->chunk;
                q[c * k + nq[c]++] = a->mb;
                if (nq[c] == k) {
                    st = fuse_flush(sched, s, c, q + c * k, &nq[c]);
                }
                continue;
            }
            for (int c = 0; c < v && st == MP_OK && a->op == MP_SCHED_DP_ALLREDUCE; c++) {
                st = fuse_flush(sched, s, c, q + c * k, &nq[c]);
            }
            if (st == MP_OK) {
                st = mp_sched_push_chunk(sched, s, a->chunk, a->op, a->mb);
            }
        }
        for (int c = 0; c < v && st == MP_OK; c++) {
            st = fuse_flush(sched, s, c, q + c * k, &nq[c]); /* a list without DP_ALLREDUCE */
        }
        mp_free(old);
    }
    mp_free(q);
    mp_free(nq);
    return st == MP_OK ? MP_OK : mp_errbuf_set(err, st, "schedule: %s", mp_strerror(st));
}

mp_status_t mp_sched_build_for(const mp_spec_t *spec, int p, int v, mp_sched_t **sched_p,
                               mp_errbuf_t *err)
{
    mp_sched_t *sched = NULL;
    mp_status_t st =
        mp_sched_build(spec->parallel.schedule, p, spec->parallel.micro_batches, v, &sched, err);
    if (st == MP_OK) {
        st = mp_sched_fuse_w(sched, spec->parallel.fuse_w, err);
    }
    if (st != MP_OK) {
        mp_sched_free(sched);
        return st;
    }
    *sched_p = sched;
    return MP_OK;
}

double mp_sched_bubble_predicted(mp_sched_kind_t kind, int p, int m, int v)
{
    const mp_sched_gen_t *gen = mp_sched_gen(kind);
    return gen != NULL ? gen->bubble(p, m, v) : 0.0;
}

const char *mp_sched_op_name(mp_sched_op_t op)
{
    switch (op) {
    case MP_SCHED_RECV_ACT:
        return "RECV_ACT";
    case MP_SCHED_FWD:
        return "FWD";
    case MP_SCHED_SEND_ACT:
        return "SEND_ACT";
    case MP_SCHED_RECV_GRAD:
        return "RECV_GRAD";
    case MP_SCHED_BWD:
        return "BWD";
    case MP_SCHED_SEND_GRAD:
        return "SEND_GRAD";
    case MP_SCHED_DP_ALLREDUCE:
        return "DP_ALLREDUCE";
    case MP_SCHED_OPT_STEP:
        return "OPT_STEP";
    case MP_SCHED_BWD_W:
        return "BWD_W";
    }
    return "UNKNOWN";
}

double mp_sched_bubble_theory(int p, int m)
{
    return (double)(p - 1) / (double)(m + p - 1);
}

double mp_sched_bubble_1f1b(int p, int m, int v)
{
    (void)v;
    return mp_sched_bubble_theory(p, m);
}

/* Appends text to buf like snprintf into buf + *total; *total counts the whole text. */
static void append(char *buf, size_t len, size_t *total, const char *text)
{
    size_t n = strlen(text);
    if (*total < len) {
        size_t room = len - *total - 1;
        size_t k = n < room ? n : room;
        memcpy(buf + *total, text, k);
        buf[*total + k] = '\0';
    }
    *total += n;
}

size_t mp_sched_format(const mp_sched_t *sched, char *buf, size_t len)
{
    static const char *const tok[] = {
        [MP_SCHED_RECV_ACT] = "rA",     [MP_SCHED_FWD] = "F",        [MP_SCHED_SEND_ACT] = "sA",
        [MP_SCHED_RECV_GRAD] = "rG",    [MP_SCHED_BWD] = "B",        [MP_SCHED_SEND_GRAD] = "sG",
        [MP_SCHED_DP_ALLREDUCE] = "AR", [MP_SCHED_OPT_STEP] = "OPT", [MP_SCHED_BWD_W] = "W",
    };
    size_t total = 0;
    if (len > 0) {
        buf[0] = '\0';
    }
    for (int s = 0; s < sched->nstages; s++) {
        char one[48];
        snprintf(one, sizeof(one), "stage %d:", s);
        append(buf, len, &total, one);
        for (int i = 0; i < sched->count[s]; i++) {
            const mp_sched_action_t *a = &sched->action[s][i];
            const char *t = (unsigned)a->op <= MP_SCHED_BWD_W ? tok[a->op] : "?";
            bool joined = a->op == MP_SCHED_BWD_W && i > 0 &&
                          sched->action[s][i - 1].op == MP_SCHED_BWD_W &&
                          sched->action[s][i - 1].fuse == 0;
            if (joined) {
                /* A run of W's that runs as one (parallel.fuse_w): W0+1+2. */
                snprintf(one, sizeof(one), "+%d", a->mb);
            } else if (a->mb >= 0 && sched->nchunks > 1) {
                snprintf(one, sizeof(one), " %s%d.%d", t, a->mb, a->chunk);
            } else if (a->mb >= 0) {
                snprintf(one, sizeof(one), " %s%d", t, a->mb);
            } else {
                snprintf(one, sizeof(one), " %s", t);
            }
            append(buf, len, &total, one);
        }
        append(buf, len, &total, "\n");
    }
    return total;
}
