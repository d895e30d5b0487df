/*
 * job.c - the shared geometry of a model-parallel job (job.h): grid,
 * micro-batch rows, the serial trainer's step/evaluation sequence, and
 * message sequence numbers.  Pure, any thread.
 */
#include "engine/job.h"

#include <string.h>

mp_status_t mp_engine_geom_init(const mp_spec_t *spec, int64_t train_n, int64_t test_n,
                                mp_engine_geom_t *geom_p, mp_errbuf_t *err)
{
    mp_engine_geom_t g;
    memset(&g, 0, sizeof(g));
    g.pp = spec->parallel.pp;
    g.tp = spec->parallel.tp;
    g.dp = spec->parallel.dp;
    g.m = spec->parallel.micro_batches;
    if (g.pp < 1 || g.tp < 1 || g.dp < 1 || g.m < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "parallel: pp, tp, dp and micro_batches must be "
                             "positive");
    }
    g.nranks = g.pp * g.tp * g.dp;
    g.feeder_rank = (uint32_t)g.nranks;
    g.batch = spec->train.batch_size;
    if (g.batch % ((int64_t)g.dp * g.m) != 0) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "train.batch_size: %lld is not divisible by parallel.dp * "
                             "parallel.micro_batches = %lld",
                             (long long)g.batch, (long long)g.dp * g.m);
    }
    g.replica_rows = g.batch / g.dp;
    g.mb_rows = g.replica_rows / g.m;
    /* A spec filled by hand (tests) may leave seq at 0: one position. */
    int64_t seq = spec->model.seq > 0 ? spec->model.seq : 1;
    g.in_dim = spec->model.input * seq;
    g.label_dim = seq;
    g.classes = spec->model.layers[spec->model.nlayers - 1].out_dim;
    g.train_n = train_n;
    g.test_n = test_n;
    g.steps_per_epoch = train_n / g.batch;
    if (g.steps_per_epoch < 1) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "train.batch_size: %lld is larger than the %lld training samples",
                             (long long)g.batch, (long long)train_n);
    }
    g.total_steps =
        spec->train.steps >= 0 ? spec->train.steps : g.steps_per_epoch * spec->train.epochs;
    g.epochs = (g.total_steps + g.steps_per_epoch - 1) / g.steps_per_epoch;
    g.eval_rows = g.mb_rows;
    g.eval_chunks = test_n > 0 ? (test_n + g.eval_rows - 1) / g.eval_rows : 0;
    *geom_p = g;
    return MP_OK;
}

int64_t mp_engine_geom_replica_chunks(const mp_engine_geom_t *g, int dp_rank)
{
    if (g->eval_chunks <= dp_rank) {
        return 0;
    }
    return (g->eval_chunks - dp_rank + g->dp - 1) / g->dp;
}

int64_t mp_engine_geom_chunk_rows(const mp_engine_geom_t *g, int64_t c)
{
    int64_t first = c * g->eval_rows;
    int64_t left = g->test_n - first;
    return left < g->eval_rows ? left : g->eval_rows;
}

void mp_engine_geom_next(const mp_engine_geom_t *g, int64_t *it, mp_engine_ev_t *ev_p)
{
    mp_engine_ev_t ev = {.kind = MP_ENGINE_EV_END, .index = *it};
    int64_t ht = g->test_n > 0 ? 1 : 0;
    int64_t per = g->steps_per_epoch + ht;
    int64_t e = *it / per;
    if (e < g->epochs) {
        int64_t r = *it - e * per;
        int64_t left = g->total_steps - e * g->steps_per_epoch;
        int64_t in_epoch = left < g->steps_per_epoch ? left : g->steps_per_epoch;
        ev.epoch = e;
        if (r < in_epoch) {
            ev.kind = MP_ENGINE_EV_TRAIN;
            ev.step = e * g->steps_per_epoch + r + 1;
            ev.step_in_epoch = r;
        } else if (r == in_epoch && ht) {
            ev.kind = MP_ENGINE_EV_EVAL;
            ev.step = e * g->steps_per_epoch + in_epoch;
        }
    }
    if (ev.kind != MP_ENGINE_EV_END) {
        (*it)++;
    }
    *ev_p = ev;
}

uint64_t mp_engine_geom_seq(const mp_engine_geom_t *g, int dp_rank, const mp_engine_ev_t *ev)
{
    int64_t trains = ev->kind == MP_ENGINE_EV_TRAIN ? ev->step - 1 : ev->step;
    int64_t evals = g->test_n > 0 ? ev->epoch : 0;
    return (uint64_t)trains * (uint64_t)g->m +
           (uint64_t)evals * (uint64_t)mp_engine_geom_replica_chunks(g, dp_rank);
}

int64_t mp_engine_geom_seek(const mp_engine_geom_t *g, int64_t step)
{
    if (step <= 0) {
        return 0;
    }
    /* Training step k of epoch e is event e * per + (k - 1 - e * spe). */
    int64_t per = g->steps_per_epoch + (g->test_n > 0 ? 1 : 0);
    int64_t e = (step - 1) / g->steps_per_epoch;
    return e * per + (step - e * g->steps_per_epoch);
}
