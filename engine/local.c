/*
 * local.c - runs a whole model-parallel job in one process (local.h): one
 * thread per shard executor and one for the feeder, one UCX context, the
 * workers' addresses exchanged through memory between barriers.  The shard
 * threads report to callbacks here, which aggregate losses, evaluations
 * and timelines under one mutex; at the end the shards of replica 0 write
 * their parameter blocks into full tensors.  The caller's thread only
 * starts and joins the others and assembles the result.
 */
#include "engine/local.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/log.h"
#include "engine/feeder.h"
#include "engine/internal.h"
#include "engine/stats.h"
#include "model/npy.h"
#include "parallel/placement.h"

/* A barrier that a failing thread can break, so nobody waits forever. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, count, gen;
    bool broken;
} bar_t;

static int bar_wait(bar_t *b)
{
    pthread_mutex_lock(&b->mu);
    int gen = b->gen;
    if (!b->broken && ++b->count == b->n) {
        b->count = 0;
        b->gen++;
        pthread_cond_broadcast(&b->cv);
    }
    while (gen == b->gen && !b->broken) {
        pthread_cond_wait(&b->cv, &b->mu);
    }
    int rc = gen == b->gen ? -1 : 0;
    pthread_mutex_unlock(&b->mu);
    return rc;
}

static void bar_break(bar_t *b)
{
    pthread_mutex_lock(&b->mu);
    b->broken = true;
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

typedef struct shared shared_t;

typedef struct {
    shared_t *sh;
    int rank; /* the feeder: nranks */
    mp_exec_t *ex;
} th_t;

struct shared {
    const mp_spec_t *spec;
    const mp_engine_local_opts_t *o;
    mp_engine_result_t *res;
    mp_xport_ctx_t *ctx;
    int n; /* shards */
    bar_t bar;
    void **addr;
    size_t *len;
    mp_engine_geom_t g;

    pthread_mutex_t mu;
    mp_status_t st;
    mp_errbuf_t err;
    mp_exec_t **execs;
    mp_feeder_t *feeder;

    /* Per training step: losses of the replicas; the steps' windows and
     * stage busy times (for the bubble fraction) in stats. */
    double *loss_sum; /* [steps] */
    int *loss_count;  /* [steps] */
    mp_engine_stats_t *stats;
    double *eval_loss; /* [epochs] */
    int64_t *eval_correct;
    int *eval_count;
    double eval_ns; /* wall time of evaluations so far (for progress) */
    uint64_t t_start;
    int64_t steps_seen, samples_seen;
};

static void record_error(shared_t *sh, mp_status_t st, const mp_errbuf_t *err)
{
    pthread_mutex_lock(&sh->mu);
    if (sh->st == MP_OK) {
        sh->st = st;
        sh->err = *err;
    } else {
        mp_warn("engine: also: %s", err->msg);
    }
    if (!sh->o->isolate_failures) {
        for (int r = 0; r < sh->n; r++) {
            if (sh->execs[r] != NULL) {
                mp_exec_cancel(sh->execs[r]);
            }
        }
        if (sh->feeder != NULL) {
            mp_feeder_cancel(sh->feeder);
        }
    }
    pthread_mutex_unlock(&sh->mu);
}

static void progress(shared_t *sh, const mp_engine_ev_t *ev, bool eval, double test_loss,
                     double test_acc)
{
    const mp_engine_geom_t *g = &sh->g;
    mp_train_result_t *tr = &sh->res->train;
    double secs = (double)(mp_engine_now_ns() - sh->t_start) * 1e-9 - sh->eval_ns * 1e-9;
    mp_train_progress_t p = {
        .epoch = ev->epoch + 1,
        .epochs = g->epochs,
        .step = ev->step,
        .steps = g->total_steps,
        .step_in_epoch = eval ? g->steps_per_epoch : ev->step_in_epoch + 1,
        .steps_per_epoch = g->steps_per_epoch,
        .loss = ev->step > 0 ? tr->losses[ev->step - 1] : NAN,
        .samples_per_s = secs > 0 ? (double)sh->samples_seen / secs : 0.0,
        .tokens_per_s =
            secs > 0 ? (double)(sh->samples_seen * g->label_dim) / secs : 0.0,
        .eval = eval,
        .test_loss = test_loss,
        .test_accuracy = test_acc,
    };
    sh->o->on_progress(&p, sh->o->arg);
}

static void on_report(const mp_exec_report_t *rep, void *arg)
{
    th_t *th = arg;
    shared_t *sh = th->sh;
    const mp_engine_geom_t *g = &sh->g;
    mp_engine_result_t *res = sh->res;
    pthread_mutex_lock(&sh->mu);
    if (rep->ev.kind == MP_ENGINE_EV_TRAIN) {
        int64_t i = rep->ev.step - 1;
        mp_engine_stats_add(sh->stats, rep);
        /* Keep the latest step's timeline of every shard. */
        mp_exec_span_t *sp = mp_realloc(res->spans[rep->rank],
                                        (size_t)(rep->nspans > 0 ? rep->nspans : 1) * sizeof(*sp));
        if (sp != NULL) {
            memcpy(sp, rep->spans, (size_t)rep->nspans * sizeof(*sp));
            res->spans[rep->rank] = sp;
            res->nspans[rep->rank] = rep->nspans;
        }
        if (rep->has_loss) {
            sh->loss_sum[i] += rep->loss_sum;
            if (++sh->loss_count[i] == g->dp) {
                /* Per position, as the serial trainer. */
                res->train.losses[i] = sh->loss_sum[i] / (double)(g->batch * g->label_dim);
                sh->steps_seen++;
                sh->samples_seen += g->batch;
                if (sh->o->on_progress != NULL) {
                    progress(sh, &rep->ev, false, 0.0, 0.0);
                }
            }
        }
    } else if (rep->has_loss) {
        int64_t e = rep->ev.epoch;
        sh->eval_loss[e] += rep->loss_sum;
        sh->eval_correct[e] += rep->correct;
        if (rep->dp_rank == 0) {
            sh->eval_ns += (double)(rep->t1_ns - rep->t0_ns);
        }
        if (++sh->eval_count[e] == g->dp) {
            mp_train_result_t *tr = &res->train;
            double positions = (double)(g->test_n * g->label_dim);
            tr->test_loss = sh->eval_loss[e] / positions;
            tr->test_accuracy = (double)sh->eval_correct[e] / positions;
            tr->epoch_test_accuracy[e] = tr->test_accuracy;
            if (sh->o->on_progress != NULL) {
                progress(sh, &rep->ev, true, tr->test_loss, tr->test_accuracy);
            }
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (th->rank == sh->o->fail_rank && rep->ev.kind == MP_ENGINE_EV_TRAIN &&
        rep->ev.step == sh->o->fail_at_step) {
        mp_exec_cancel(th->ex);
    }
}

/* The feeder thread also sizes the aggregation tables, before anyone reports. */
static mp_status_t alloc_tables(shared_t *sh, mp_errbuf_t *err)
{
    const mp_engine_geom_t *g = &sh->g;
    size_t steps = (size_t)(g->total_steps > 0 ? g->total_steps : 1);
    size_t epochs = (size_t)(g->epochs > 0 ? g->epochs : 1);
    mp_train_result_t *tr = &sh->res->train;
    sh->loss_sum = mp_calloc(steps, sizeof(double));
    sh->loss_count = mp_calloc(steps, sizeof(int));
    mp_status_t st = mp_engine_stats_create(g->pp, g->total_steps, &sh->stats);
    sh->eval_loss = mp_calloc(epochs, sizeof(double));
    sh->eval_correct = mp_calloc(epochs, sizeof(int64_t));
    sh->eval_count = mp_calloc(epochs, sizeof(int));
    tr->losses = mp_calloc(steps, sizeof(double));
    tr->epoch_test_accuracy = mp_calloc(epochs, sizeof(double));
    if (st != MP_OK || sh->loss_sum == NULL || sh->loss_count == NULL || sh->eval_loss == NULL ||
        sh->eval_correct == NULL || sh->eval_count == NULL || tr->losses == NULL ||
        tr->epoch_test_accuracy == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "engine: out of memory for the result tables");
    }
    return MP_OK;
}

static void *feeder_main(void *p)
{
    th_t *th = p;
    shared_t *sh = th->sh;
    mp_errbuf_t err = {{0}};
    mp_feeder_t *f = NULL;
    mp_feeder_opts_t fo = {.spec = sh->spec, .job = 1, .timeout_ms = sh->o->timeout_ms};
    mp_status_t st = mp_feeder_create(sh->ctx, &fo, &f, &err);
    if (st == MP_OK) {
        sh->g = *mp_feeder_geom(f);
        st = alloc_tables(sh, &err);
    }
    if (st == MP_OK) {
        st = mp_feeder_address(f, &sh->addr[sh->n], &sh->len[sh->n]);
        if (st != MP_OK) {
            mp_errbuf_set(&err, st, "feeder: no worker address: %s", mp_strerror(st));
        }
    }
    if (st != MP_OK) {
        record_error(sh, st, &err);
        bar_break(&sh->bar);
        mp_feeder_destroy(f);
        return NULL;
    }
    pthread_mutex_lock(&sh->mu);
    sh->feeder = f;
    pthread_mutex_unlock(&sh->mu);
    if (bar_wait(&sh->bar) == 0 && bar_wait(&sh->bar) == 0) {
        sh->t_start = mp_engine_now_ns();
        st = mp_feeder_connect(f, (const void *const *)sh->addr, sh->len, &err);
        if (st == MP_OK) {
            st = mp_feeder_run(f, &err);
        }
        if (st != MP_OK) {
            record_error(sh, st, &err);
        }
        bar_wait(&sh->bar);
        mp_feeder_disconnect(f);
        bar_wait(&sh->bar);
    }
    pthread_mutex_lock(&sh->mu);
    sh->feeder = NULL;
    pthread_mutex_unlock(&sh->mu);
    mp_feeder_destroy(f);
    return NULL;
}

/* Replica 0's shards write their blocks into the full tensors. */
static mp_status_t gather_weights(shared_t *sh, th_t *th, int stage, int tp_rank, mp_errbuf_t *err)
{
    const mp_spec_t *spec = sh->spec;
    mp_part_t part;
    mp_status_t st = mp_part_build(spec, &part, err);
    if (st != MP_OK) {
        return st;
    }
    for (int l = 0; l < spec->model.nlayers; l++) {
        if (!mp_part_stage_runs(&part, spec->parallel.pp, stage, l)) {
            continue; /* another stage's, or another chunk's */
        }
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
            float *blk = mp_malloc((size_t)(rows * cols) * sizeof(float));
            mp_tp_slice_t s;
            if (blk == NULL) {
                return mp_errbuf_set(err, MP_ERR_NOMEM, "engine: out of memory gathering weights");
            }
            st = mp_exec_param_download(th->ex, l, p, blk, &s);
            if (st != MP_OK) {
                mp_free(blk);
                return mp_errbuf_set(err, st, "engine: reading layer %d param %d: %s", l, p,
                                     mp_strerror(st));
            }
            float *full = sh->res->weights[l][p];
            if (!s.replicated || tp_rank == 0) {
                mp_tp_slice_scatter(&s, blk, full);
            }
            mp_free(blk);
        }
    }
    return MP_OK;
}

static void *shard_main(void *p)
{
    th_t *th = p;
    shared_t *sh = th->sh;
    mp_errbuf_t err = {{0}};
    int stage, t, d;
    mp_place_coords(sh->spec->parallel.pp, sh->spec->parallel.tp, th->rank, &stage, &t, &d);
    if (bar_wait(&sh->bar) != 0) {
        return NULL;
    }
    int ndev = sh->o->device_kind == MP_BACKEND_CUDA ? mp_backend_cuda_device_count() : 0;
    mp_exec_opts_t eo = {
        .spec = sh->spec,
        .job = 1,
        .stage = stage,
        .tp_rank = t,
        .dp_rank = d,
        .threads = sh->o->threads > 0 ? sh->o->threads : 1,
        .device_kind = sh->o->device_kind,
        .device = ndev > 0 ? th->rank % ndev : 0,
        .tf32 = sh->o->tf32,
        .stage_through_host = sh->o->stage_through_host,
        .train_n = sh->g.train_n,
        .test_n = sh->g.test_n,
        .timeout_ms = sh->o->timeout_ms,
        .on_report = on_report,
        .arg = th,
    };
    mp_status_t st = mp_exec_create(sh->ctx, &eo, &th->ex, &err);
    if (st == MP_OK) {
        st = mp_exec_address(th->ex, &sh->addr[th->rank], &sh->len[th->rank]);
        if (st != MP_OK) {
            mp_errbuf_set(&err, st, "rank %d: no worker address: %s", th->rank, mp_strerror(st));
        }
    }
    if (st != MP_OK) {
        record_error(sh, st, &err);
        bar_break(&sh->bar);
        mp_exec_destroy(th->ex);
        return NULL;
    }
    pthread_mutex_lock(&sh->mu);
    sh->execs[th->rank] = th->ex;
    pthread_mutex_unlock(&sh->mu);
    if (bar_wait(&sh->bar) == 0) {
        st = mp_exec_connect(th->ex, (const void *const *)sh->addr, sh->len, &err);
        if (st == MP_OK) {
            st = mp_exec_run(th->ex, &err);
        }
        if (st == MP_OK && d == 0) {
            st = gather_weights(sh, th, stage, t, &err);
        }
        if (st != MP_OK) {
            record_error(sh, st, &err);
        }
        if (d == 0 && t == 0) {
            sh->res->stage_slots[stage] = mp_exec_slots(th->ex);
            sh->res->stage_act_bytes[stage] =
                (int64_t)mp_exec_slots(th->ex) * mp_exec_slot_bytes(th->ex);
        }
        /* Everyone is done sending before anyone closes. */
        bar_wait(&sh->bar);
        mp_exec_disconnect(th->ex);
        bar_wait(&sh->bar);
    }
    pthread_mutex_lock(&sh->mu);
    sh->execs[th->rank] = NULL;
    pthread_mutex_unlock(&sh->mu);
    mp_exec_destroy(th->ex);
    return NULL;
}

mp_engine_local_opts_t mp_engine_local_opts_default(void)
{
    mp_engine_local_opts_t o;
    memset(&o, 0, sizeof(o));
    o.fail_rank = -1;
    return o;
}

/* Bubble and throughput from the per-step windows and busy times. */
static void finish_result(shared_t *sh)
{
    const mp_engine_geom_t *g = &sh->g;
    mp_engine_result_t *res = sh->res;
    mp_train_result_t *tr = &res->train;
    double secs = 0.0;
    res->bubble_fraction = mp_engine_stats_bubble(sh->stats, &secs);
    tr->steps = g->total_steps;
    tr->epochs_done = g->epochs;
    tr->samples = g->total_steps * g->batch;
    tr->final_loss = g->total_steps > 0 ? tr->losses[g->total_steps - 1] : NAN;
    tr->has_test = g->test_n > 0;
    tr->seconds = secs;
    tr->samples_per_s = secs > 0 ? (double)tr->samples / secs : 0.0;
    tr->tokens_per_s = tr->samples_per_s * (double)g->label_dim;
    snprintf(tr->device, sizeof(tr->device), "%s",
             sh->o->device_kind == MP_BACKEND_CUDA ? "cuda" : "cpu");
}

mp_status_t mp_engine_run_local(const mp_spec_t *spec, const mp_engine_local_opts_t *opts,
                                mp_engine_result_t *res, mp_errbuf_t *err)
{
    mp_engine_local_opts_t defaults = mp_engine_local_opts_default();
    if (opts == NULL) {
        opts = &defaults;
    }
    memset(res, 0, sizeof(*res));
    /* The run's own copy of the spec, with the cut as explicit stages, so
     * that every shard and the weight gather agree on it. */
    mp_spec_t *run_spec = mp_malloc(sizeof(*run_spec));
    if (run_spec == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "engine: out of memory");
    }
    *run_spec = *spec;
    mp_status_t cst = mp_engine_cut_plan(spec, opts->threads, opts->device_kind == MP_BACKEND_CPU,
                                         &res->cut, err);
    if (cst != MP_OK) {
        mp_free(run_spec);
        return cst;
    }
    mp_engine_cut_apply(run_spec, &res->cut);
    spec = run_spec;
    int n = spec->parallel.pp * spec->parallel.tp * spec->parallel.dp;
    shared_t sh;
    memset(&sh, 0, sizeof(sh));
    sh.spec = spec;
    sh.o = opts;
    sh.res = res;
    sh.n = n;
    res->nranks = n;
    res->nstages = spec->parallel.pp;
    pthread_mutex_init(&sh.mu, NULL);
    pthread_mutex_init(&sh.bar.mu, NULL);
    pthread_cond_init(&sh.bar.cv, NULL);
    sh.bar.n = n + 1;
    sh.addr = mp_calloc((size_t)n + 1, sizeof(void *));
    sh.len = mp_calloc((size_t)n + 1, sizeof(size_t));
    sh.execs = mp_calloc((size_t)n, sizeof(mp_exec_t *));
    res->spans = mp_calloc((size_t)n, sizeof(mp_exec_span_t *));
    res->nspans = mp_calloc((size_t)n, sizeof(int));
    th_t *th = mp_calloc((size_t)n + 1, sizeof(th_t));
    pthread_t *tid = mp_calloc((size_t)n + 1, sizeof(pthread_t));
    mp_status_t st = MP_OK;
    if (sh.addr == NULL || sh.len == NULL || sh.execs == NULL || res->spans == NULL ||
        res->nspans == NULL || th == NULL || tid == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "engine: out of memory");
        goto out;
    }
    for (int l = 0; l < spec->model.nlayers && st == MP_OK; l++) {
        for (int p = 0; p < mp_layer_nparams(&spec->model.layers[l]); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(&spec->model.layers[l], p, &rows, &cols);
            res->weights[l][p] = mp_calloc((size_t)(rows * cols), sizeof(float));
            if (res->weights[l][p] == NULL) {
                st = mp_errbuf_set(err, MP_ERR_NOMEM, "engine: out of memory for the weights");
                break;
            }
        }
    }
    if (st != MP_OK) {
        goto out;
    }
    mp_xport_ctx_opts_t co = {.tls = opts->tls};
    st = mp_xport_ctx_create(&co, &sh.ctx);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "engine: cannot create the UCX context: %s", mp_strerror(st));
        goto out;
    }
    int started = 0;
    for (int r = 0; r <= n; r++) {
        th[r] = (th_t){.sh = &sh, .rank = r};
        if (pthread_create(&tid[r], NULL, r == n ? feeder_main : shard_main, &th[r]) != 0) {
            mp_errbuf_t e;
            mp_errbuf_set(&e, MP_ERR_NOMEM, "engine: cannot start thread %d", r);
            record_error(&sh, MP_ERR_NOMEM, &e);
            bar_break(&sh.bar);
            break;
        }
        started++;
    }
    for (int r = 0; r < started; r++) {
        pthread_join(tid[r], NULL);
    }
    mp_xport_ctx_destroy(sh.ctx);
    st = sh.st;
    if (st != MP_OK) {
        *err = sh.err;
        goto out;
    }
    finish_result(&sh);
    if (opts->save_weights != NULL) {
        st = mp_npy_save_weights(opts->save_weights, spec, res->weights, err);
    }

out:
    for (int r = 0; r <= n && sh.addr != NULL; r++) {
        mp_free(sh.addr[r]);
    }
    mp_free(sh.addr);
    mp_free(sh.len);
    mp_free(sh.execs);
    mp_free(th);
    mp_free(tid);
    mp_free(sh.loss_sum);
    mp_free(sh.loss_count);
    mp_engine_stats_destroy(sh.stats);
    mp_free(sh.eval_loss);
    mp_free(sh.eval_correct);
    mp_free(sh.eval_count);
    pthread_cond_destroy(&sh.bar.cv);
    pthread_mutex_destroy(&sh.bar.mu);
    pthread_mutex_destroy(&sh.mu);
    if (st != MP_OK) {
        mp_engine_result_free(res);
    }
    mp_free(run_spec);
    return st;
}

void mp_engine_result_free(mp_engine_result_t *res)
{
    mp_train_result_free(&res->train);
    for (int l = 0; l < MP_SPEC_MAX_LAYERS; l++) {
        for (int p = 0; p < MP_SPEC_MAX_PARAMS; p++) {
            mp_free(res->weights[l][p]);
            res->weights[l][p] = NULL;
        }
    }
    if (res->spans != NULL) {
        for (int r = 0; r < res->nranks; r++) {
            mp_free(res->spans[r]);
        }
    }
    mp_free(res->spans);
    mp_free(res->nspans);
    res->spans = NULL;
    res->nspans = NULL;
}
