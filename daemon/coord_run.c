/*
 * coord_run.c - the coordinator's side of a running job (DESIGN.md "The
 * pieces"): the data feeder (engine/feeder.h) and, with --save-weights,
 * the weight gatherer (engine/gather.h) on a thread of their own with
 * their own UCX workers; the wire-up (JobAssignment to every node of the
 * placement, their shards' ShardReady addresses, PeerAddresses + JobStart);
 * the per-step aggregation of the shards' reports (loss over the DP
 * replicas, samples/s, the measured bubble, evaluations, the last step's
 * timeline) into JobEvents and the job's record; and the end: SUCCEEDED
 * once every shard and the feeder are done and the weights are written,
 * FAILED on a shard's error or a lost node (the other shards are aborted),
 * or, while train.max_restarts allows, back to PENDING to resume from its
 * last checkpoint on whatever nodes are alive; CANCELLED by the user.
 * Checkpoints: each shard file reported durable is counted, and once a
 * step has all of DP replica 0's files the manifest and `latest` are
 * written on the thread pool (one commit per job at a time).  Owns the run records and the feeder threads; all
 * of this runs on the libuv thread except feeder_main.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/status.h"
#include "daemon/coord_internal.h"
#include "engine/calib.h"
#include "engine/feeder.h"
#include "engine/gather.h"
#include "engine/stats.h"
#include "model/ckpt.h"
#include "model/spec.h"
#include "model/train.h"

/* Every data-plane wait of a job's shards and feeder: long enough for a
 * step of any stage on a loaded machine; a dead peer is noticed sooner
 * (UCX peer errors, pidfds, or the abort that a lost node triggers). */
#define JOB_DATA_TIMEOUT_MS 10000
/* After a shard's error, how long to wait for a node loss that caused it,
 * so that the reason names the node that died rather than its neighbour. */
#define FAIL_GRACE_MS 400
/* Progress events: at most one per this interval (and the first and last). */
#define PROGRESS_EVERY_MS 1000

struct jobrun {
    mp_coord_t *c;
    coord_job_t *j;
    mp_spec_t *spec;
    /* Where the pipeline is cut: written by the feeder thread (which also
     * writes it into spec as explicit stages) before its ready message. */
    mp_engine_cut_t cut;
    int pp, tp, dp, nranks;
    uint32_t tag;
    mp_place_t place;
    mp_coord_node_t **rank_node; /* [nranks] */
    mp_coord_node_t **nodes;     /* the distinct nodes, [nnodes] */
    int nnodes;
    char save_dir[PATH_MAX];
    /* The id the nodes know this run by: the job's id, with "~EPOCH.RESTARTS"
     * after a restart, so that a late message of an earlier run's shards
     * never reaches this one. */
    char wire_id[64];
    /* Checkpoints: the spec's folder ("" none), and where this run resumes
     * from (the feeder thread reads `latest` before anything starts). */
    char ckpt_dir[1024];
    char try_resume[2][PATH_MAX];
    char resume_from[PATH_MAX];
    int64_t start_step;
    int64_t ck_step[8]; /* shard files reported durable, per step in flight */
    int ck_count[8];
    int64_t ck_done;      /* the newest step whose checkpoint is resolved (committed or failed) */
    int64_t ck_final;     /* the last step that writes one; the job ends after it is resolved */
    bool no_restart;      /* a failure that a restart cannot mend (a bad checkpoint) */
    bool detached;        /* a restarted job's old run, on c->old_runs */
    struct jobrun *next_old;

    /* Wire-up: every shard's worker address, by rank. */
    void **addr;
    size_t *len;
    int nready;
    bool started;

    /* Shared with the feeder thread (under mu). */
    pthread_t tid;
    bool thread_started, thread_exited;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool go, end, abort;
    mp_feeder_t *feeder;

    /* From the feeder thread's READY. */
    bool feeder_ready;
    mp_engine_geom_t g;
    void *faddr, *gaddr;
    size_t flen, glen;

    /* Progress. */
    bool *done; /* [nranks] */
    int ndone;
    bool feeder_done;
    bool aborted; /* JobAbort sent */
    bool failing; /* a shard failed; FAILED after the grace period */
    bool ended;   /* the job reached a terminal state */
    char fail_reason[1100];
    uv_timer_t grace;
    bool grace_closing, grace_closed;
    bool released;         /* ended, thread joined: freed once grace has closed */
    struct fmsg *exit_msg; /* the thread's EXITED, made before it starts */

    /* Aggregation, [steps] and [epochs]. */
    mp_engine_stats_t *stats;
    double *loss_sum;
    int *loss_count, *step_reports;
    double *eval_loss;
    int64_t *eval_correct;
    int *eval_count;
    int64_t steps_done;
    bool has_test;
    double test_loss, test_acc;
    uint64_t last_progress;
    /* The latest training step's spans of every rank (Unix-epoch ns). */
    mp_exec_span_t **tl;
    int *ntl;
    int64_t *tl_step;
};

typedef enum { FMSG_READY, FMSG_DONE, FMSG_EXITED, FMSG_RESCHEDULE } fmsg_kind_t;

typedef struct fmsg {
    mp_mbox_msg_t base;
    fmsg_kind_t kind;
    jobrun_t *r;
    mp_status_t st;
    char error[700];
    /* READY */
    mp_engine_geom_t g;
    void *faddr, *gaddr;
    size_t flen, glen;
    int64_t start_step; /* resumed from this checkpoint step (0: the start) */
    char resume_from[PATH_MAX];
    double *losses; /* the checkpoint's losses of steps 1..nlosses */
    int64_t nlosses;
} fmsg_t;

static void post(jobrun_t *r, fmsg_kind_t kind, mp_status_t st, const char *error)
{
    fmsg_t *m = mp_calloc(1, sizeof(*m));
    if (m == NULL) {
        mp_err("job: out of memory for a message of the feeder thread");
        return;
    }
    m->kind = kind;
    m->r = r;
    m->st = st;
    snprintf(m->error, sizeof(m->error), "%s", error ? error : "");
    mp_mbox_post(&r->c->mbox, &m->base);
}

/* ---- the feeder thread ---------------------------------------------------- */

static void wait_flag(jobrun_t *r, const bool *flag)
{
    pthread_mutex_lock(&r->mu);
    while (!*flag && !r->abort) {
        pthread_cond_wait(&r->cv, &r->mu);
    }
    pthread_mutex_unlock(&r->mu);
}

static void *feeder_main(void *arg)
{
    jobrun_t *r = arg;
    mp_errbuf_t err = {{0}};
    mp_xport_ctx_t *ctx = NULL;
    mp_feeder_t *f = NULL;
    mp_gather_t *gth = NULL;
    bool save = r->save_dir[0] != '\0';
    /* The cut first: the feeder and the weight gather read the partition. */
    bool cpu = true;
    for (int k = 0; k < r->nranks; k++) {
        cpu = cpu && r->place.slot[k].kind != MP_DEV_CUDA;
    }
    mp_status_t st = mp_engine_cut_plan(r->spec, 1, cpu, &r->cut, &err);
    if (st == MP_OK) {
        mp_engine_cut_apply(r->spec, &r->cut);
        st = mpard_xport_ctx(&ctx);
        if (st != MP_OK) {
            mp_errbuf_set(&err, st, "cannot create the UCX context: %s", mp_strerror(st));
        }
    }
    /* Where to resume from: the job's own checkpoint after a restart, else
     * its --resume folder; blocking reads, on this thread. */
    int64_t start_step = 0;
    char resume_from[PATH_MAX] = "";
    double *losses = NULL;
    int64_t nlosses = 0;
    for (int i = 0; i < 2 && st == MP_OK && resume_from[0] == '\0'; i++) {
        if (r->try_resume[i][0] == '\0') {
            continue;
        }
        mp_ckpt_t *ck;
        st = mp_ckpt_open(r->try_resume[i], &ck, &err);
        if (st == MP_ERR_NOTFOUND && i == 0) {
            st = MP_OK; /* no checkpoint committed yet: the --resume one, or the start */
            continue;
        }
        if (st == MP_OK) {
            st = mp_ckpt_check_spec(ck, r->spec, &err);
            start_step = mp_ckpt_step(ck);
            snprintf(resume_from, sizeof(resume_from), "%s", r->try_resume[i]);
            const double *l = mp_ckpt_losses(ck, &nlosses);
            losses = nlosses > 0 ? mp_malloc((size_t)nlosses * sizeof(double)) : NULL;
            if (losses != NULL) {
                memcpy(losses, l, (size_t)nlosses * sizeof(double));
            } else {
                nlosses = 0;
            }
            mp_ckpt_close(ck);
        }
        if (st != MP_OK) {
            char why[700];
            snprintf(why, sizeof(why), "cannot resume: %.600s", err.msg);
            mp_errbuf_set(&err, MP_ERR_FORMAT, "%s", why);
            st = MP_ERR_FORMAT; /* a restart cannot mend it */
        }
    }
    if (st == MP_OK) {
        mp_feeder_opts_t fo = {.spec = r->spec,
                               .job = r->tag,
                               .timeout_ms = JOB_DATA_TIMEOUT_MS,
                               .start_step = start_step};
        st = mp_feeder_create(ctx, &fo, &f, &err);
    }
    if (st == MP_OK && save) {
        st = mp_gather_create(ctx, r->spec, r->tag, JOB_DATA_TIMEOUT_MS, &gth, &err);
    }
    fmsg_t *ready = NULL;
    if (st == MP_OK) {
        ready = mp_calloc(1, sizeof(*ready));
        st = ready == NULL ? MP_ERR_NOMEM : mp_feeder_address(f, &ready->faddr, &ready->flen);
        if (st == MP_OK && save) {
            st = mp_gather_address(gth, &ready->gaddr, &ready->glen);
        }
        if (st != MP_OK) {
            mp_errbuf_set(&err, st, "feeder: no worker address: %s", mp_strerror(st));
            if (ready != NULL) {
                mp_free(ready->faddr);
                mp_free(ready);
            }
        }
    }
    if (st != MP_OK) {
        mp_free(losses);
        post(r, FMSG_DONE, st, err.msg);
        mp_gather_destroy(gth);
        mp_feeder_destroy(f);
        mp_mbox_post(&r->c->mbox, &r->exit_msg->base); /* the last act */
        return NULL;
    }
    pthread_mutex_lock(&r->mu);
    r->feeder = f;
    if (r->abort) {
        mp_feeder_cancel(f);
    }
    pthread_mutex_unlock(&r->mu);
    ready->kind = FMSG_READY;
    ready->r = r;
    ready->g = *mp_feeder_geom(f);
    ready->start_step = start_step;
    snprintf(ready->resume_from, sizeof(ready->resume_from), "%s", resume_from);
    ready->losses = losses;
    ready->nlosses = nlosses;
    mp_mbox_post(&r->c->mbox, &ready->base);

    wait_flag(r, &r->go);
    pthread_mutex_lock(&r->mu);
    bool go = r->go && !r->abort;
    pthread_mutex_unlock(&r->mu);
    bool connected = false;
    if (go) {
        st = mp_feeder_connect(f, (const void *const *)r->addr, r->len, &err);
        connected = st == MP_OK;
        if (st == MP_OK) {
            st = mp_feeder_run(f, &err);
        }
        if (st == MP_OK && save) {
            st = mp_gather_run(gth, (const void *const *)r->addr, r->len, &err);
            if (st == MP_OK) {
                st = mp_fs_mkdir_p(r->save_dir, 0755, &err);
            }
            if (st == MP_OK) {
                st = mp_gather_save(gth, r->save_dir, &err);
            }
            if (st == MP_OK) {
                mp_info("job %s: weights saved in %s", r->j->id, r->save_dir);
            }
        }
        post(r, FMSG_DONE, st, st == MP_OK ? NULL : err.msg);
        /* The shards may still read what the feeder sent: close at the end. */
        wait_flag(r, &r->end);
    }
    pthread_mutex_lock(&r->mu);
    r->feeder = NULL;
    pthread_mutex_unlock(&r->mu);
    if (connected) {
        mp_feeder_disconnect(f);
    }
    mp_gather_destroy(gth);
    mp_feeder_destroy(f);
    /* The last act: the loop joins this thread when it reads this. */
    mp_mbox_post(&r->c->mbox, &r->exit_msg->base);
    return NULL;
}

/* ---- messages to the nodes ------------------------------------------------- */

static void send_nodes(jobrun_t *r, Mpar__Envelope *env)
{
    for (int i = 0; i < r->nnodes; i++) {
        if (r->nodes[i]->session != NULL) {
            mp_link_send(r->nodes[i]->session, env);
        }
    }
}

static void run_abort(jobrun_t *r, const char *reason)
{
    if (!r->aborted) {
        r->aborted = true;
        Mpar__Envelope env = MPAR__ENVELOPE__INIT;
        Mpar__JobAbort a = MPAR__JOB_ABORT__INIT;
        a.job_id = r->wire_id;
        a.reason = (char *)reason;
        env.msg_case = MPAR__ENVELOPE__MSG_JOB_ABORT;
        env.job_abort = &a;
        if (r->started || r->feeder_ready) {
            send_nodes(r, &env);
        }
    }
    pthread_mutex_lock(&r->mu);
    r->abort = true;
    if (r->feeder != NULL) {
        mp_feeder_cancel(r->feeder);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void run_restart(jobrun_t *r, const char *reason);

/* A failure: FAILED, or back to PENDING while train.max_restarts allows.
 * Only failures count against it (DESIGN.md "max_restarts"), not the
 * resumes after a coordinator restart or stop, which count in restarts;
 * the coordinator stopping is not the job's failure. */
static void run_fail(jobrun_t *r, const char *reason)
{
    if (r->ended) {
        return;
    }
    run_abort(r, reason);
    bool running = r->j->info.state == MPAR__JOB_STATE__JOB_STATE_RUNNING;
    if (running && !r->c->stopping) {
        r->j->info.failures++;
    }
    if (running && !r->no_restart && !r->c->stopping && r->spec != NULL &&
        (int64_t)r->j->info.failures <= r->spec->train.max_restarts) {
        run_restart(r, reason);
        return;
    }
    coord_job_set_state(r->c, r->j, MPAR__JOB_STATE__JOB_STATE_FAILED, reason);
}

/* ---- the record's results --------------------------------------------------- */

/* The node's own index of the device placement slot k uses (a node may
 * own, say, cuda:1 and cuda:3 as its devices 0 and 1). */
static uint32_t device_index(const jobrun_t *r, int k)
{
    const mp_coord_node_t *n = r->rank_node[k];
    int d = r->place.slot[k].device;
    return d >= 0 && (size_t)d < n->info.n_devices ? n->info.devices[d]->index : (uint32_t)d;
}

static void device_name(const jobrun_t *r, int k, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s:%u", r->place.slot[k].kind == MP_DEV_CUDA ? "cuda" : "cpu",
             device_index(r, k));
}

static void fill_placement(jobrun_t *r)
{
    r->j->info.has_predicted_bubble = 0; /* this run's, once its cut is known */
    if (coord_job_placement_new(r->j, (size_t)r->nranks) == NULL) {
        return;
    }
    for (int k = 0; k < r->nranks; k++) {
        Mpar__PlacementEntry *p = &r->j->place[k];
        int stage, t, d;
        mp_place_coords(r->pp, r->tp, k, &stage, &t, &d);
        p->rank = (uint32_t)k;
        p->stage = (uint32_t)stage;
        p->tp = (uint32_t)t;
        p->dp = (uint32_t)d;
        snprintf(p->node, PLACE_NODE_MAX, "%s", r->rank_node[k]->name);
        device_name(r, k, p->device, PLACE_DEVICE_MAX);
    }
}

/* The last training step's timeline, spans relative to its earliest start. */
static void fill_timeline(jobrun_t *r)
{
    coord_job_t *j = r->j;
    int64_t step = 0;
    for (int k = 0; k < r->nranks; k++) {
        step = r->tl_step[k] > step ? r->tl_step[k] : step;
    }
    if (step == 0 || (j->timeline = mp_calloc(1, sizeof(*j->timeline))) == NULL) {
        return;
    }
    mpar__timeline__init(j->timeline);
    j->timeline->step = (uint64_t)step;
    j->timeline->rows = mp_calloc((size_t)r->nranks + 1, sizeof(*j->timeline->rows));
    if (j->timeline->rows == NULL) {
        return;
    }
    uint64_t t0 = UINT64_MAX;
    for (int k = 0; k < r->nranks; k++) {
        for (int q = 0; r->tl_step[k] == step && q < r->ntl[k]; q++) {
            t0 = r->tl[k][q].t0_ns < t0 ? r->tl[k][q].t0_ns : t0;
        }
    }
    for (int k = 0; k < r->nranks; k++) {
        size_t ns = r->tl_step[k] == step ? (size_t)r->ntl[k] : 0;
        Mpar__TimelineRow *row = coord_timeline_row_new(ns, r->rank_node[k]->name);
        if (row == NULL) {
            break;
        }
        int stage, t, d;
        mp_place_coords(r->pp, r->tp, k, &stage, &t, &d);
        row->rank = (uint32_t)k;
        row->stage = (uint32_t)stage;
        row->tp = (uint32_t)t;
        row->dp = (uint32_t)d;
        for (size_t q = 0; q < ns; q++) {
            const mp_exec_span_t *x = &r->tl[k][q];
            Mpar__Span *sp = row->spans[q];
            sp->op = (char *)mp_sched_op_name(x->op);
            sp->mb = x->mb;
            sp->chunk = x->chunk;
            sp->t0_ns = x->t0_ns - t0;
            sp->t1_ns = x->t1_ns - t0;
        }
        j->timeline->rows[j->timeline->n_rows++] = row;
    }
    j->info.timeline = j->timeline;
}

/* A text data set: results and progress also count tokens (positions). */
static bool is_text(const jobrun_t *r)
{
    return r->spec->data.kind == MP_DATA_TEXT || r->spec->data.kind == MP_DATA_KJV;
}

/* Steps so far, their loss, throughput and bubble into the record. */
static void fill_results(jobrun_t *r)
{
    coord_job_t *j = r->j;
    double secs = 0.0;
    double bubble = mp_engine_stats_bubble_upto(r->stats, r->steps_done, &secs);
    j->info.steps = (uint64_t)r->steps_done;
    j->info.total_steps = r->g.total_steps > 0 ? (uint64_t)r->g.total_steps : 0;
    j->info.n_losses = (size_t)r->steps_done;
    j->info.losses = j->losses;
    if (r->steps_done > 0) {
        j->info.has_final_loss = 1;
        j->info.final_loss = j->losses[r->steps_done - 1];
    }
    j->info.samples_per_s =
        secs > 0 ? (double)((r->steps_done - r->start_step) * r->g.batch) / secs : 0.0;
    if (is_text(r)) {
        j->info.has_tokens_per_s = 1;
        j->info.tokens_per_s = j->info.samples_per_s * (double)r->g.label_dim;
    }
    j->info.has_bubble_fraction = r->steps_done > 0;
    j->info.bubble_fraction = bubble;
    if (r->has_test) {
        j->info.has_test_accuracy = 1;
        j->info.test_accuracy = r->test_acc;
        j->info.has_test_loss = 1;
        j->info.test_loss = r->test_loss;
    }
}

static void maybe_finish(jobrun_t *r)
{
    if (r->ended || r->failing || r->aborted || !r->feeder_done || r->ndone < r->nranks ||
        r->ck_done < r->ck_final) {
        return; /* ... or its last checkpoint is not committed yet */
    }
    fill_results(r);
    fill_timeline(r);
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__JobEnd e = MPAR__JOB_END__INIT;
    e.job_id = r->wire_id;
    env.msg_case = MPAR__ENVELOPE__MSG_JOB_END;
    env.job_end = &e;
    send_nodes(r, &env);
    pthread_mutex_lock(&r->mu);
    r->end = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    char msg[600];
    int n = r->j->info.has_final_loss
                ? snprintf(msg, sizeof(msg), "finished %llu steps, final loss %.6f",
                           (unsigned long long)r->j->info.steps, r->j->info.final_loss)
                : snprintf(msg, sizeof(msg), "finished %llu steps",
                           (unsigned long long)r->j->info.steps);
    if (r->has_test && n > 0 && (size_t)n < sizeof(msg)) {
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, ", test loss %.4f, test accuracy %.4f",
                      r->test_loss, r->test_acc);
    }
    if (n > 0 && (size_t)n < sizeof(msg)) {
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, ", %.1f samples/s", r->j->info.samples_per_s);
    }
    if (is_text(r) && n > 0 && (size_t)n < sizeof(msg)) {
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, ", %.0f tokens/s", r->j->info.tokens_per_s);
    }
    if (n > 0 && (size_t)n < sizeof(msg)) {
        n += snprintf(msg + n, sizeof(msg) - (size_t)n, ", bubble %.3f", r->j->info.bubble_fraction);
    }
    if (r->save_dir[0] != '\0' && n > 0 && (size_t)n < sizeof(msg)) {
        snprintf(msg + n, sizeof(msg) - (size_t)n, ", weights in %.300s", r->save_dir);
    }
    coord_job_set_state(r->c, r->j, MPAR__JOB_STATE__JOB_STATE_SUCCEEDED, msg);
}

/* ---- life of a run ----------------------------------------------------------- */

static void run_free(jobrun_t *r)
{
    for (int k = 0; k <= r->nranks; k++) {
        if (r->addr != NULL) {
            mp_free(r->addr[k]); /* the feeder's last */
        }
        if (r->tl != NULL && k < r->nranks) {
            mp_free(r->tl[k]);
        }
    }
    mp_free(r->addr);
    mp_free(r->len);
    mp_free(r->faddr);
    mp_free(r->gaddr);
    mp_free(r->done);
    mp_free(r->tl);
    mp_free(r->ntl);
    mp_free(r->tl_step);
    mp_free(r->loss_sum);
    mp_free(r->loss_count);
    mp_free(r->step_reports);
    mp_free(r->eval_loss);
    mp_free(r->eval_correct);
    mp_free(r->eval_count);
    mp_engine_stats_destroy(r->stats);
    mp_free(r->rank_node);
    mp_free(r->nodes);
    mp_place_free(&r->place);
    mp_spec_free(r->spec);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    mp_free(r);
}

static void on_grace_closed(uv_handle_t *h)
{
    jobrun_t *r = h->data;
    r->grace_closed = true;
    if (r->released) {
        run_free(r);
    }
}

/* The grace timer is closed when the run is freed, or at shutdown while
 * its thread may still run (so that the sweep of the loop's handles, which
 * would close it without a callback, finds it closing). */
static void grace_close(jobrun_t *r)
{
    if (!r->grace_closing) {
        r->grace_closing = true;
        uv_close((uv_handle_t *)&r->grace, on_grace_closed);
    }
}

/* Frees the run once its thread has ended and the job has too. */
static void maybe_free(jobrun_t *r)
{
    if (r->released || !r->ended || (r->thread_started && !r->thread_exited)) {
        return;
    }
    if (r->j->run == r) {
        r->j->run = NULL;
    }
    if (r->detached) {
        for (jobrun_t **pp = &r->c->old_runs; *pp != NULL; pp = &(*pp)->next_old) {
            if (*pp == r) {
                *pp = r->next_old;
                break;
            }
        }
        r->detached = false;
    }
    r->released = true;
    if (r->grace_closed) {
        run_free(r);
    } else {
        grace_close(r); /* on_grace_closed frees it */
    }
}

void jobrun_release(mp_coord_t *c, coord_job_t *j)
{
    jobrun_t *r = j->run;
    if (r == NULL || r->ended) {
        return;
    }
    if (j->info.state != MPAR__JOB_STATE__JOB_STATE_SUCCEEDED) {
        run_abort(r, j->reason ? j->reason : "the job ended");
    }
    r->ended = true;
    uv_timer_stop(&r->grace);
    for (int k = 0; k < r->nranks; k++) {
        r->rank_node[k]->busy[r->place.slot[k].device] = false;
    }
    /* Pending jobs may fit now; on the next turn of the loop, not inside
     * whatever changed this job's state. */
    fmsg_t *m = c->stopping ? NULL : mp_calloc(1, sizeof(*m));
    if (m != NULL) {
        m->kind = FMSG_RESCHEDULE;
        m->r = NULL;
        mp_mbox_post(&c->mbox, &m->base);
    }
    maybe_free(r);
}

/* This run ends (its devices are free, its threads unwind on their own, as
 * an old run on c->old_runs) and its job is PENDING again, saying why. */
static void run_requeue(jobrun_t *r, const char *why)
{
    mp_coord_t *c = r->c;
    coord_job_t *j = r->j;
    jobrun_release(c, j); /* may free r */
    if (j->run == r) {
        j->run = NULL;
        r->detached = true;
        r->next_old = c->old_runs;
        c->old_runs = r;
    }
    coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_PENDING, why);
}

/* Back to PENDING (DESIGN.md "max_restarts"): this run ends (its devices
 * are free, its threads unwind on their own, as an old run on c->old_runs)
 * and the job is placed again as soon as the alive nodes hold its grid;
 * the next run resumes from the job's last committed checkpoint. */
static void run_restart(jobrun_t *r, const char *reason)
{
    coord_job_t *j = r->j;
    j->info.restarts++;
    char msg[1300];
    if (j->info.checkpoint_step > 0) {
        snprintf(msg, sizeof(msg), "failure %u (max_restarts %lld): %.900s; restart %u, resuming "
                 "from the checkpoint at step %llu", j->info.failures,
                 (long long)r->spec->train.max_restarts, reason, j->info.restarts,
                 (unsigned long long)j->info.checkpoint_step);
    } else {
        snprintf(msg, sizeof(msg), "failure %u (max_restarts %lld): %.900s; restart %u, no "
                 "checkpoint yet: from %s", j->info.failures,
                 (long long)r->spec->train.max_restarts, reason, j->info.restarts,
                 j->resume_dir != NULL && j->resume_dir[0] ? "the --resume checkpoint"
                                                           : "the start");
    }
    run_requeue(r, msg);
}

/* The coordinator stops (SIGTERM, `systemctl restart`): a job with a
 * committed checkpoint goes back to PENDING, and the state file keeps it so,
 * to resume from that checkpoint when the coordinator starts again, as after
 * a crash; FAILing it would lose what the checkpoint is for. */
static void run_suspend(jobrun_t *r)
{
    char msg[300];
    r->j->info.restarts++;
    snprintf(msg, sizeof(msg), "the coordinator stopped; the job resumes from the checkpoint at "
             "step %llu when the coordinator starts again (restart %u, not a failure: "
             "max_restarts counts only failures)",
             (unsigned long long)r->j->info.checkpoint_step, r->j->info.restarts);
    run_abort(r, msg);
    run_requeue(r, msg);
}

void jobrun_abort(mp_coord_t *c, coord_job_t *j, const char *reason)
{
    if (j->run != NULL) {
        run_abort(j->run, reason);
    }
}

static bool run_on_node(const jobrun_t *r, const mp_coord_node_t *n)
{
    for (int i = 0; i < r->nnodes; i++) {
        if (r->nodes[i] == n) {
            return true;
        }
    }
    return false;
}

void jobrun_node_lost(mp_coord_t *c, mp_coord_node_t *n, const char *why)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        if (j->run != NULL && !j->run->ended && run_on_node(j->run, n)) {
            run_fail(j->run, why);
        }
    }
}

/*
 * A data-plane timeout (or peer failure) names no culprit: a cut link times
 * out the waits on both of its sides (and the feeder's wait on a healthy
 * first stage), and UCX over tcp does not notice a silent link before the
 * timeout.  A node of the job whose heartbeats are late is then the likely
 * cause, so the reason names it first (a lost connection or DEAD would have
 * failed the job already, through jobrun_node_lost).  A shard's own error
 * (its spec, its data, an injected fault) stays as it is.
 */
static bool reason_is_transport(const char *why)
{
    return strstr(why, mp_strerror(MP_ERR_TIMEOUT)) != NULL ||
           strstr(why, mp_strerror(MP_ERR_PEER)) != NULL;
}

static void on_grace(uv_timer_t *t)
{
    jobrun_t *r = t->data;
    uint64_t now = uv_now(r->c->d->loop);
    for (int i = 0; i < r->nnodes && reason_is_transport(r->fail_reason); i++) {
        const mp_coord_node_t *n = r->nodes[i];
        if (n->info.state == MPAR__NODE_STATE__NODE_STATE_SUSPECT) {
            char why[sizeof(r->fail_reason) + 128];
            snprintf(why, sizeof(why), "node %s is SUSPECT (no heartbeat for %llu ms): %s",
                     n->name, (unsigned long long)(now - n->last_hb_mono), r->fail_reason);
            run_fail(r, why);
            return;
        }
    }
    run_fail(r, r->fail_reason);
}

/* A shard's or the feeder's error: everyone stops now; the job FAILs after
 * a short grace, unless a node of the job is lost meanwhile, which then is
 * the reason (a peer's death is often seen first by its neighbours). */
static void fail_soon(jobrun_t *r, const char *reason)
{
    if (r->ended || r->failing || r->aborted) {
        return; /* the abort's echo, or a consequence of the first error */
    }
    snprintf(r->fail_reason, sizeof(r->fail_reason), "%s", reason);
    r->failing = true;
    run_abort(r, r->fail_reason);
    uv_timer_start(&r->grace, on_grace, FAIL_GRACE_MS, 0);
}

void jobrun_start(mp_coord_t *c, coord_job_t *j, mp_place_t *place, mp_coord_node_t **pnode)
{
    mp_errbuf_t err = {{0}};
    jobrun_t *r = mp_calloc(1, sizeof(*r));
    if (r == NULL) {
        mp_place_free(place);
        coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_FAILED, "coordinator: out of memory");
        return;
    }
    r->c = c;
    r->j = j;
    r->place = *place;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    uv_timer_init(c->d->loop, &r->grace);
    r->grace.data = r;
    j->run = r;
    coord_job_results_free(j);
    const char *spec_json = j->spec_json ? j->spec_json : "";
    if (mp_spec_parse(spec_json, strlen(spec_json), &r->spec, &err) != MP_OK) {
        char why[700];
        snprintf(why, sizeof(why), "the stored spec: %.600s", err.msg);
        r->ended = true;
        coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_FAILED, why);
        maybe_free(r);
        return;
    }
    r->pp = r->spec->parallel.pp;
    r->tp = r->spec->parallel.tp;
    r->dp = r->spec->parallel.dp;
    r->nranks = r->pp * r->tp * r->dp;
    r->tag = (uint32_t)(strtoull(j->id, NULL, 10) & MP_XPORT_JOB_MAX);
    snprintf(r->save_dir, sizeof(r->save_dir), "%s", j->save_weights ? j->save_weights : "");
    if (j->info.restarts == 0) {
        snprintf(r->wire_id, sizeof(r->wire_id), "%s", j->id);
    } else {
        snprintf(r->wire_id, sizeof(r->wire_id), "%s~%llu.%u", j->id,
                 (unsigned long long)c->epoch, j->info.restarts);
    }
    if (r->spec->checkpoint.enabled) {
        snprintf(r->ckpt_dir, sizeof(r->ckpt_dir), "%s", r->spec->checkpoint.dir);
    }
    /* A restart resumes from the job's own checkpoint, else from --resume. */
    if (j->info.restarts > 0 || j->info.checkpoint_step > 0) {
        snprintf(r->try_resume[0], sizeof(r->try_resume[0]), "%s", r->ckpt_dir);
    }
    snprintf(r->try_resume[1], sizeof(r->try_resume[1]), "%s",
             j->resume_dir != NULL ? j->resume_dir : "");
    size_t n = (size_t)r->nranks;
    r->rank_node = mp_calloc(n, sizeof(*r->rank_node));
    r->nodes = mp_calloc(n, sizeof(*r->nodes));
    r->addr = mp_calloc(n + 1, sizeof(void *));
    r->len = mp_calloc(n + 1, sizeof(size_t));
    r->done = mp_calloc(n, sizeof(bool));
    r->tl = mp_calloc(n, sizeof(*r->tl));
    r->ntl = mp_calloc(n, sizeof(int));
    r->tl_step = mp_calloc(n, sizeof(int64_t));
    if (r->rank_node == NULL || r->nodes == NULL || r->addr == NULL || r->len == NULL ||
        r->done == NULL || r->tl == NULL || r->ntl == NULL || r->tl_step == NULL) {
        r->ended = true;
        coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_FAILED, "coordinator: out of memory");
        maybe_free(r);
        return;
    }
    for (int k = 0; k < r->nranks; k++) {
        mp_coord_node_t *node = pnode[r->place.slot[k].node];
        r->rank_node[k] = node;
        node->busy[r->place.slot[k].device] = true;
        if (!run_on_node(r, node)) {
            r->nodes[r->nnodes++] = node;
        }
    }
    fill_placement(r);
    /* Where each stage's TP groups run, in the job's events. */
    char where[900];
    size_t off = 0;
    where[0] = '\0';
    for (int d = 0; d < r->dp; d++) {
        for (int s = 0; s < r->pp; s++) {
            int k0 = mp_place_rank(r->pp, r->tp, s, 0, d);
            int w = snprintf(where + off, sizeof(where) - off, "%sstage %d dp %d on %s (",
                             off ? "; " : "", s, d, r->rank_node[k0]->name);
            off += w > 0 && (size_t)w < sizeof(where) - off ? (size_t)w : 0;
            for (int t = 0; t < r->tp; t++) {
                char dev[24];
                device_name(r, k0 + t, dev, sizeof(dev));
                w = snprintf(where + off, sizeof(where) - off, "%s%s", t ? ", " : "", dev);
                off += w > 0 && (size_t)w < sizeof(where) - off ? (size_t)w : 0;
            }
            w = snprintf(where + off, sizeof(where) - off, ")");
            off += w > 0 && (size_t)w < sizeof(where) - off ? (size_t)w : 0;
        }
    }
    char msg[1000];
    snprintf(msg, sizeof(msg), "placed: %s", where);
    coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_RUNNING, msg);
    r->exit_msg = mp_calloc(1, sizeof(*r->exit_msg));
    if (r->exit_msg != NULL) {
        r->exit_msg->kind = FMSG_EXITED;
        r->exit_msg->r = r;
    }
    if (r->exit_msg == NULL || pthread_create(&r->tid, NULL, feeder_main, r) != 0) {
        mp_free(r->exit_msg);
        r->exit_msg = NULL;
        run_fail(r, "coordinator: cannot start the data feeder's thread");
        return;
    }
    r->thread_started = true;
    c->nthreads++;
}

/*
 * The job's spec as the shards get it: the stored one with the cut as
 * explicit "parallel.stages" (and no "partition"), so that every shard
 * builds the stages the coordinator chose.  NULL when out of memory.
 */
static char *spec_with_stages(const char *json, const mp_part_t *part)
{
    json_t *root = json_loads(json, 0, NULL);
    json_t *par = root != NULL ? json_object_get(root, "parallel") : NULL;
    json_t *stages = json_array();
    char *out = NULL;
    if (json_is_object(par) && stages != NULL) {
        for (int s = 0; s < part->nstages; s++) {
            json_array_append_new(stages, json_integer(part->count[s]));
        }
        json_object_del(par, "partition");
        json_object_set(par, "stages", stages);
        out = json_dumps(root, JSON_COMPACT);
    }
    json_decref(stages);
    json_decref(root);
    return out;
}

/* The feeder is ready: every node gets its assignment. */
static void on_feeder_ready(jobrun_t *r, fmsg_t *m)
{
    r->feeder_ready = true;
    r->g = m->g;
    r->faddr = m->faddr;
    r->flen = m->flen;
    r->gaddr = m->gaddr;
    r->glen = m->glen;
    m->faddr = m->gaddr = NULL;
    r->start_step = m->start_step;
    snprintf(r->resume_from, sizeof(r->resume_from), "%s", m->resume_from);
    if (r->ended || r->aborted) {
        return;
    }
    r->j->info.total_steps = r->g.total_steps > 0 ? (uint64_t)r->g.total_steps : 0;
    /* The cut, in the placement: which layers each stage holds. */
    for (size_t k = 0; k < r->j->info.n_placement; k++) {
        Mpar__PlacementEntry *p = r->j->info.placement[k];
        mp_engine_cut_stage_layers(r->spec, &r->cut, (int)p->stage, p->layers, PLACE_LAYERS_MAX);
    }
    if (r->pp > 1 && r->cut.bubble >= 0.0) {
        r->j->info.has_predicted_bubble = 1;
        r->j->info.predicted_bubble = r->cut.bubble;
    }
    size_t steps = (size_t)(r->g.total_steps > 0 ? r->g.total_steps : 1);
    size_t epochs = (size_t)(r->g.epochs > 0 ? r->g.epochs : 1);
    r->loss_sum = mp_calloc(steps, sizeof(double));
    r->loss_count = mp_calloc(steps, sizeof(int));
    r->step_reports = mp_calloc(steps, sizeof(int));
    r->eval_loss = mp_calloc(epochs, sizeof(double));
    r->eval_correct = mp_calloc(epochs, sizeof(int64_t));
    r->eval_count = mp_calloc(epochs, sizeof(int));
    r->j->losses = mp_calloc(steps, sizeof(double));
    if (r->loss_sum == NULL || r->loss_count == NULL || r->step_reports == NULL ||
        r->eval_loss == NULL || r->eval_correct == NULL || r->eval_count == NULL ||
        r->j->losses == NULL ||
        mp_engine_stats_create(r->pp, r->g.total_steps, &r->stats) != MP_OK) {
        run_fail(r, "coordinator: out of memory for the job's statistics");
        return;
    }
    /* A resumed run: the steps before its checkpoint are done, with the
     * losses the checkpoint kept. */
    int64_t pre = r->start_step < r->g.total_steps ? r->start_step : r->g.total_steps;
    for (int64_t i = 0; i < pre; i++) {
        r->j->losses[i] = i < m->nlosses ? m->losses[i] : NAN;
    }
    r->steps_done = pre;
    if (r->resume_from[0] != '\0') {
        r->j->info.has_resumed_from_step = 1;
        r->j->info.resumed_from_step = (uint64_t)r->start_step;
    }
    int64_t every = r->ckpt_dir[0] != '\0' ? r->spec->checkpoint.every_steps : 0;
    r->ck_final = every > 0 ? r->g.total_steps / every * every : 0;
    r->ck_done = r->start_step;
    size_t n = (size_t)r->nranks;
    Mpar__ShardAssignment *sa = mp_calloc(n, sizeof(*sa));
    Mpar__ShardAssignment **sap = mp_calloc(n, sizeof(*sap));
    Mpar__ShardId *ids = mp_calloc(n, sizeof(*ids));
    mp_part_t part;
    mp_errbuf_t err;
    if (sa == NULL || sap == NULL || ids == NULL || mp_part_build(r->spec, &part, &err) != MP_OK) {
        mp_free(sa);
        mp_free(sap);
        mp_free(ids);
        run_fail(r, "coordinator: cannot build the assignment");
        return;
    }
    for (int k = 0; k < r->nranks; k++) {
        int stage, t, d;
        mp_place_coords(r->pp, r->tp, k, &stage, &t, &d);
        mpar__shard_id__init(&ids[k]);
        ids[k].stage = (uint32_t)stage;
        ids[k].tp_rank = (uint32_t)t;
        ids[k].dp_rank = (uint32_t)d;
        mpar__shard_assignment__init(&sa[k]);
        sa[k].shard = &ids[k];
        sa[k].node = r->rank_node[k]->name;
        sa[k].device_kind = r->place.slot[k].kind == MP_DEV_CUDA
                                ? MPAR__DEVICE_KIND__DEVICE_KIND_CUDA
                                : MPAR__DEVICE_KIND__DEVICE_KIND_CPU;
        sa[k].device_index = device_index(r, k);
        sa[k].first_layer = (uint32_t)part.first[stage];
        sa[k].nlayers = (uint32_t)part.count[stage];
        sap[k] = &sa[k];
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__JobAssignment a = MPAR__JOB_ASSIGNMENT__INIT;
    a.job_id = r->wire_id;
    /* A pp = 1 job has nothing to cut; its spec may even lack "parallel". */
    char *run_json = r->pp > 1 ? spec_with_stages(r->j->spec_json, &part) : NULL;
    if (r->pp > 1 && run_json == NULL) {
        mp_free(sa);
        mp_free(sap);
        mp_free(ids);
        run_fail(r, "coordinator: cannot write the spec with the job's stages");
        return;
    }
    a.spec_json = run_json != NULL ? run_json : r->j->spec_json;
    a.shards = sap;
    a.n_shards = n;
    a.epoch = r->c->epoch;
    a.train_n = r->g.train_n;
    a.test_n = r->g.test_n;
    a.save_weights = r->save_dir[0] != '\0';
    a.timeout_ms = JOB_DATA_TIMEOUT_MS;
    a.tag = r->tag;
    a.checkpoint_dir = r->ckpt_dir;
    a.checkpoint_every = every;
    a.start_step = r->start_step;
    a.resume_dir = r->resume_from;
    env.msg_case = MPAR__ENVELOPE__MSG_JOB_ASSIGNMENT;
    env.job_assignment = &a;
    char lost[200] = "";
    for (int i = 0; i < r->nnodes; i++) {
        if (r->nodes[i]->session == NULL) {
            snprintf(lost, sizeof(lost), "node %s is not connected", r->nodes[i]->name);
        }
    }
    if (lost[0] == '\0') {
        send_nodes(r, &env);
    }
    free(run_json);
    mp_free(sa);
    mp_free(sap);
    mp_free(ids);
    if (lost[0] != '\0') {
        run_fail(r, lost);
        return;
    }
    char msg[200 + PATH_MAX];
    int w = snprintf(msg, sizeof(msg),
                     "data loaded (%lld training, %lld test samples, %lld steps); "
                     "starting %d shards",
                     (long long)r->g.train_n, (long long)r->g.test_n,
                     (long long)r->g.total_steps, r->nranks);
    if (r->resume_from[0] != '\0' && w > 0 && (size_t)w < sizeof(msg)) {
        snprintf(msg + w, sizeof(msg) - (size_t)w, "; resuming from the checkpoint at step %lld "
                 "in %s", (long long)r->start_step, r->resume_from);
    }
    coord_job_add_event(r->c, r->j, msg, 0, false, 0.0);
    if (r->pp > 1) {
        char cut[700];
        mp_engine_cut_describe(r->spec, &r->cut, cut, sizeof(cut));
        coord_job_add_event(r->c, r->j, cut, 0, false, 0.0);
    }
}

void jobrun_on_msg(void *owner, mp_mbox_msg_t *base)
{
    mp_coord_t *c = owner;
    fmsg_t *m = (fmsg_t *)base;
    jobrun_t *r = m->r;
    switch (m->kind) {
    case FMSG_RESCHEDULE:
        if (!c->stopping) {
            coord_reschedule(c);
        }
        break;
    case FMSG_READY:
        on_feeder_ready(r, m);
        break;
    case FMSG_DONE:
        if (m->st == MP_ERR_FORMAT || m->st == MP_ERR_SPEC) {
            r->no_restart = true;
        }
        if (m->st != MP_OK) {
            char why[800];
            snprintf(why, sizeof(why), "coordinator: %.600s", m->error);
            fail_soon(r, why);
        } else {
            r->feeder_done = true;
            maybe_finish(r);
        }
        break;
    case FMSG_EXITED:
        if (!r->thread_exited) {
            pthread_join(r->tid, NULL);
            r->thread_exited = true;
            c->nthreads--;
        }
        maybe_free(r);
        break;
    }
    mp_free(m->faddr);
    mp_free(m->gaddr);
    mp_free(m->losses);
    mp_free(m);
    if (c->stopping && c->nthreads == 0) {
        mp_mbox_close(&c->mbox); /* the last feeder thread has exited */
    }
}

/* ---- from the nodes ------------------------------------------------------------ */

/* The run of job_id, and the rank of shard id on node n; NULL if stale. */
static jobrun_t *run_of(mp_coord_t *c, const char *job_id, const Mpar__ShardId *id,
                        mp_coord_node_t *n, int *rank_p)
{
    char jid[24];
    snprintf(jid, sizeof(jid), "%.*s", (int)strcspn(job_id ? job_id : "", "~"),
             job_id ? job_id : "");
    coord_job_t *j = coord_job_by_id(c, jid);
    jobrun_t *r = j != NULL ? j->run : NULL;
    if (r == NULL || strcmp(r->wire_id, job_id) != 0) {
        return NULL; /* an earlier run of a restarted job */
    }
    if (r->ended || id == NULL || (int)id->stage >= r->pp ||
        (int)id->tp_rank >= r->tp || (int)id->dp_rank >= r->dp) {
        return NULL;
    }
    int k = mp_place_rank(r->pp, r->tp, (int)id->stage, (int)id->tp_rank, (int)id->dp_rank);
    if (r->rank_node[k] != n) {
        mp_warn("job %s: node %s reported for rank %d, which runs on %s", j->id, n->name, k,
                r->rank_node[k]->name);
        return NULL;
    }
    *rank_p = k;
    return r;
}

void mp_coord_shard_ready(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReady *m)
{
    int k;
    const Mpar__ShardAddress *a = m->address;
    jobrun_t *r = a != NULL ? run_of(c, m->job_id, a->shard, n, &k) : NULL;
    if (r == NULL || r->aborted || r->started || r->addr[k] != NULL || a->ucx_address.len == 0) {
        return;
    }
    r->addr[k] = mp_malloc(a->ucx_address.len);
    if (r->addr[k] == NULL) {
        run_fail(r, "coordinator: out of memory");
        return;
    }
    memcpy(r->addr[k], a->ucx_address.data, a->ucx_address.len);
    r->len[k] = a->ucx_address.len;
    if (++r->nready < r->nranks) {
        return;
    }
    /* Every shard is up: the table goes to every node, then they start. */
    size_t nr = (size_t)r->nranks;
    Mpar__ShardAddress *sa = mp_calloc(nr, sizeof(*sa));
    Mpar__ShardAddress **sap = mp_calloc(nr, sizeof(*sap));
    Mpar__ShardId *ids = mp_calloc(nr, sizeof(*ids));
    if (sa == NULL || sap == NULL || ids == NULL) {
        mp_free(sa);
        mp_free(sap);
        mp_free(ids);
        run_fail(r, "coordinator: out of memory");
        return;
    }
    for (int q = 0; q < r->nranks; q++) {
        int stage, t, d;
        mp_place_coords(r->pp, r->tp, q, &stage, &t, &d);
        mpar__shard_id__init(&ids[q]);
        ids[q].stage = (uint32_t)stage;
        ids[q].tp_rank = (uint32_t)t;
        ids[q].dp_rank = (uint32_t)d;
        mpar__shard_address__init(&sa[q]);
        sa[q].shard = &ids[q];
        sa[q].node = r->rank_node[q]->name;
        sa[q].ucx_address.data = r->addr[q];
        sa[q].ucx_address.len = r->len[q];
        sap[q] = &sa[q];
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__PeerAddresses pa = MPAR__PEER_ADDRESSES__INIT;
    pa.job_id = r->wire_id;
    pa.addresses = sap;
    pa.n_addresses = nr;
    pa.feeder_address.data = r->faddr;
    pa.feeder_address.len = r->flen;
    pa.gather_address.data = r->gaddr;
    pa.gather_address.len = r->glen;
    env.msg_case = MPAR__ENVELOPE__MSG_PEER_ADDRESSES;
    env.peer_addresses = &pa;
    send_nodes(r, &env);
    mp_free(sa);
    mp_free(sap);
    mp_free(ids);
    Mpar__Envelope env2 = MPAR__ENVELOPE__INIT;
    Mpar__JobStart js = MPAR__JOB_START__INIT;
    js.job_id = r->wire_id;
    env2.msg_case = MPAR__ENVELOPE__MSG_JOB_START;
    env2.job_start = &js;
    send_nodes(r, &env2);
    r->started = true;
    /* The feeder's table: the shards', then its own (rank nranks). */
    pthread_mutex_lock(&r->mu);
    r->addr[r->nranks] = r->faddr;
    r->len[r->nranks] = r->flen;
    r->faddr = NULL; /* owned by addr[] now */
    r->go = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    coord_job_add_event(c, r->j, "every shard is ready: training", 0, false, 0.0);
}

static void on_train_report(jobrun_t *r, int k, const Mpar__ShardReport *m)
{
    if (m->step < 1 || (int64_t)m->step > r->g.total_steps || r->stats == NULL) {
        return;
    }
    int64_t i = (int64_t)m->step - 1;
    mp_exec_span_t *spans = mp_calloc(m->n_spans + 1, sizeof(*spans));
    if (spans == NULL) {
        return;
    }
    int ns = 0;
    for (size_t q = 0; q < m->n_spans; q++) {
        mp_sched_op_t op;
        if (coord_op_parse(m->spans[q]->op, &op)) {
            spans[ns++] = (mp_exec_span_t){.op = op,
                                           .mb = m->spans[q]->mb,
                                           .chunk = m->spans[q]->chunk,
                                           .t0_ns = m->spans[q]->t0_ns,
                                           .t1_ns = m->spans[q]->t1_ns};
        }
    }
    int stage, t, d;
    mp_place_coords(r->pp, r->tp, k, &stage, &t, &d);
    mp_exec_report_t rep = {.rank = k,
                            .stage = stage,
                            .tp_rank = t,
                            .dp_rank = d,
                            .ev = {.kind = MP_ENGINE_EV_TRAIN, .step = (int64_t)m->step},
                            .t0_ns = m->t0_ns,
                            .t1_ns = m->t1_ns,
                            .nspans = ns,
                            .spans = spans};
    mp_engine_stats_add(r->stats, &rep);
    if ((int64_t)m->step >= r->tl_step[k]) {
        mp_free(r->tl[k]);
        r->tl[k] = spans;
        r->ntl[k] = ns;
        r->tl_step[k] = (int64_t)m->step;
    } else {
        mp_free(spans);
    }
    if (m->has_loss) {
        r->loss_sum[i] += m->loss_sum;
        r->loss_count[i]++;
    }
    r->step_reports[i]++;
    if (r->step_reports[i] != r->nranks || r->loss_count[i] != r->dp) {
        return;
    }
    /* Step i is complete: every shard reported it, every replica's loss. */
    /* Per position, as the serial trainer. */
    double loss = r->loss_sum[i] / (double)(r->g.batch * r->g.label_dim);
    if (!isfinite(loss)) {
        /* The last stages refuse a non-finite loss themselves; this catches
         * one that only the sum over the replicas makes. */
        char why[120];
        snprintf(why, sizeof(why), "loss is %s at step %lld", mp_train_nonfinite_name(loss),
                 (long long)(i + 1));
        fail_soon(r, why);
        return;
    }
    r->j->losses[i] = loss;
    r->steps_done = i + 1;
    fill_results(r);
    uint64_t now = uv_now(r->c->d->loop);
    bool last_in_epoch = r->g.steps_per_epoch > 0 && (i + 1) % r->g.steps_per_epoch == 0;
    if (i == 0 || i + 1 == r->g.total_steps || last_in_epoch ||
        now - r->last_progress >= PROGRESS_EVERY_MS) {
        r->last_progress = now;
        char msg[300], tokens[64] = "";
        int64_t epoch = r->g.steps_per_epoch > 0 ? i / r->g.steps_per_epoch + 1 : 1;
        if (is_text(r)) {
            snprintf(tokens, sizeof(tokens), ", %.0f tokens/s", r->j->info.tokens_per_s);
        }
        snprintf(msg, sizeof(msg),
                 "step %lld/%lld (epoch %lld/%lld): loss %.6f, %.1f samples/s%s, bubble %.3f",
                 (long long)(i + 1), (long long)r->g.total_steps, (long long)epoch,
                 (long long)(r->g.epochs > 0 ? r->g.epochs : 1), loss, r->j->info.samples_per_s,
                 tokens, r->j->info.bubble_fraction);
        coord_job_add_event(r->c, r->j, msg, (uint64_t)(i + 1), true, loss);
    }
}

static void on_eval_report(jobrun_t *r, const Mpar__ShardReport *m)
{
    if (!m->has_loss || m->epoch < 0 || m->epoch >= (r->g.epochs > 0 ? r->g.epochs : 1) ||
        r->eval_count == NULL || r->g.test_n <= 0) {
        return;
    }
    int64_t e = m->epoch;
    r->eval_loss[e] += m->loss_sum;
    r->eval_correct[e] += m->correct;
    if (++r->eval_count[e] != r->dp) {
        return;
    }
    r->has_test = true;
    /* Per position (next-token accuracy for text). */
    double positions = (double)(r->g.test_n * r->g.label_dim);
    r->test_loss = r->eval_loss[e] / positions;
    r->test_acc = (double)r->eval_correct[e] / positions;
    r->j->info.has_test_accuracy = 1;
    r->j->info.test_accuracy = r->test_acc;
    r->j->info.has_test_loss = 1;
    r->j->info.test_loss = r->test_loss;
    char msg[200];
    snprintf(msg, sizeof(msg), "epoch %lld/%lld: test loss %.4f, test accuracy %.4f",
             (long long)(e + 1), (long long)r->g.epochs, r->test_loss, r->test_acc);
    coord_job_add_event(r->c, r->j, msg, (uint64_t)m->step, false, 0.0);
}

/* ---- checkpoint commits ------------------------------------------------------ */

/* One commit on the thread pool: the manifest from the shard files, then
 * `latest`, then the pruning of older checkpoints.  It owns copies of what
 * it needs: the run may be gone when it is done. */
typedef struct {
    uv_work_t req;
    mp_coord_t *c;
    char job_id[24];
    char dir[1024];
    char *spec_json;
    int pp, tp, dp, keep;
    int64_t step;
    double *losses;
    int64_t nlosses;
    mp_status_t st;
    mp_errbuf_t err;
} commit_t;

static void commit_work(uv_work_t *req)
{
    commit_t *w = (commit_t *)req;
    mp_ckpt_fault("before_manifest");
    w->st = mp_ckpt_manifest_write(w->dir, w->step, w->spec_json, w->pp, w->tp, w->dp, w->losses,
                                   w->nlosses, &w->err);
    if (w->st == MP_OK) {
        mp_ckpt_fault("before_latest");
        w->st = mp_ckpt_commit(w->dir, w->step, &w->err);
    }
    if (w->st == MP_OK) {
        mp_errbuf_t perr;
        if (mp_ckpt_prune(w->dir, w->step, w->keep, &perr) != MP_OK) {
            mp_warn("checkpoint: %s", perr.msg); /* the commit stands */
        }
    }
}

static void commit_start(mp_coord_t *c, coord_job_t *j, int64_t step);

/* A step's checkpoint is resolved (committed, or failed): the job may end. */
static void ck_resolved(coord_job_t *j, int64_t step)
{
    jobrun_t *r = j->run;
    if (r != NULL && step > r->ck_done) {
        r->ck_done = step;
        maybe_finish(r);
    }
}

static void commit_after(uv_work_t *req, int status)
{
    (void)status;
    commit_t *w = (commit_t *)req;
    mp_coord_t *c = w->c;
    coord_job_t *j = coord_job_by_id(c, w->job_id);
    if (j != NULL) {
        j->ck_inflight = false;
        char msg[1300];
        if (w->st == MP_OK) {
            if ((uint64_t)w->step > j->info.checkpoint_step) {
                j->info.checkpoint_step = (uint64_t)w->step;
            }
            snprintf(msg, sizeof(msg), "checkpoint at step %lld committed in %.900s",
                     (long long)w->step, w->dir);
            coord_job_add_event(c, j, msg, (uint64_t)w->step, false, 0.0);
            coord_save(c);
        } else {
            snprintf(msg, sizeof(msg), "checkpoint at step %lld failed: %.900s; the previous one "
                     "stays", (long long)w->step, w->err.msg);
            mp_warn("job %s: %s", j->id, msg);
            coord_job_add_event(c, j, msg, (uint64_t)w->step, false, 0.0);
        }
        int64_t next = j->ck_queued;
        j->ck_queued = 0;
        if (next > w->step && !c->stopping) {
            commit_start(c, j, next);
        }
        ck_resolved(j, w->step);
    }
    mp_free(w->spec_json);
    mp_free(w->losses);
    mp_free(w);
}

static void commit_start(mp_coord_t *c, coord_job_t *j, int64_t step)
{
    jobrun_t *r = j->run;
    if (r == NULL) {
        return;
    }
    if (j->ck_inflight) {
        j->ck_queued = step > j->ck_queued ? step : j->ck_queued; /* after the one in flight */
        return;
    }
    commit_t *w = mp_calloc(1, sizeof(*w));
    int64_t n = step < r->steps_done ? step : r->steps_done;
    if (w != NULL) {
        w->spec_json = mp_strdup(j->spec_json ? j->spec_json : "");
        w->losses = mp_calloc((size_t)(n > 0 ? n : 1), sizeof(double));
    }
    if (w == NULL || w->spec_json == NULL || w->losses == NULL) {
        if (w != NULL) {
            mp_free(w->spec_json);
            mp_free(w->losses);
            mp_free(w);
        }
        coord_job_add_event(c, j, "checkpoint: out of memory for the commit", (uint64_t)step,
                            false, 0.0);
        ck_resolved(j, step);
        return;
    }
    w->c = c;
    snprintf(w->job_id, sizeof(w->job_id), "%s", j->id);
    snprintf(w->dir, sizeof(w->dir), "%s", r->ckpt_dir);
    w->pp = r->pp;
    w->tp = r->tp;
    w->dp = r->dp;
    w->keep = (int)r->spec->checkpoint.keep;
    w->step = step;
    memcpy(w->losses, j->losses, (size_t)n * sizeof(double));
    w->nlosses = n;
    if (uv_queue_work(c->d->loop, &w->req, commit_work, commit_after) != 0) {
        mp_free(w->spec_json);
        mp_free(w->losses);
        mp_free(w);
        ck_resolved(j, step);
        return;
    }
    j->ck_inflight = true;
}

/* A shard's file of a checkpoint is durable (or failed): once every writer
 * (DP replica 0's pp x tp shards) has one, the coordinator commits it. */
static void on_ckpt_report(jobrun_t *r, int k, mp_coord_node_t *n, const Mpar__ShardReport *m)
{
    int64_t step = m->checkpoint_step;
    if (r->ckpt_dir[0] == '\0' || step <= r->ck_done) {
        return;
    }
    int slot = -1, empty = -1;
    for (int i = 0; i < 8; i++) {
        if (r->ck_step[i] == step) {
            slot = i;
        } else if (r->ck_step[i] <= r->ck_done && empty < 0) {
            empty = i;
        }
    }
    if (slot < 0) {
        if (empty < 0) {
            return; /* more than 8 checkpoints in flight: this one is skipped */
        }
        slot = empty;
        r->ck_step[slot] = step;
        r->ck_count[slot] = 0;
    }
    if (m->checkpoint_error != NULL && m->checkpoint_error[0] != '\0') {
        if (r->ck_count[slot] >= 0) {
            char msg[1300];
            snprintf(msg, sizeof(msg), "checkpoint at step %lld failed: node %s: rank %d: %.900s; "
                     "the previous one stays", (long long)step, n->name, k, m->checkpoint_error);
            coord_job_add_event(r->c, r->j, msg, (uint64_t)step, false, 0.0);
        }
        r->ck_count[slot] = -1; /* never committed */
        ck_resolved(r->j, step);
        return;
    }
    if (r->ck_count[slot] < 0 || ++r->ck_count[slot] < r->pp * r->tp) {
        return;
    }
    commit_start(r->c, r->j, step);
}

void mp_coord_shard_report(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReport *m)
{
    int k;
    jobrun_t *r = run_of(c, m->job_id, m->shard, n, &k);
    if (r == NULL) {
        return;
    }
    if (m->checkpoint_step > 0) {
        on_ckpt_report(r, k, n, m);
        return;
    }
    if (m->done && m->error != NULL && m->error[0] != '\0') {
        /* "node n2: rank 1 (stage 1, tp 0, dp 0): ...", once even when the
         * engine's message already names the rank. */
        char who[96], why[1100];
        snprintf(who, sizeof(who), "rank %d (stage %u, tp %u, dp %u)", k, m->shard->stage,
                 m->shard->tp_rank, m->shard->dp_rank);
        if (strncmp(m->error, who, strlen(who)) == 0) {
            snprintf(why, sizeof(why), "node %s: %.900s", n->name, m->error);
        } else {
            snprintf(why, sizeof(why), "node %s: %s: %.900s", n->name, who, m->error);
        }
        fail_soon(r, why);
        return;
    }
    if (m->exited) {
        return;
    }
    if (m->done) {
        if (!r->done[k]) {
            r->done[k] = true;
            r->ndone++;
        }
        maybe_finish(r);
        return;
    }
    if (m->eval) {
        on_eval_report(r, m);
    } else {
        on_train_report(r, k, m);
    }
}

void jobrun_stop_all(mp_coord_t *c)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        jobrun_t *r = j->run;
        if (r == NULL) {
            continue;
        }
        if (!r->ended && j->info.checkpoint_step > 0) {
            run_suspend(r); /* may free r */
        } else if (!r->ended) {
            run_fail(r, "the coordinator stopped"); /* may free r (no thread left) */
        }
        /* Cancelled: the thread ends within its waits' bounds, and is joined
         * when its EXITED arrives, which frees the run (maybe_free). */
        if (j->run != NULL) {
            grace_close(j->run);
        }
    }
    for (jobrun_t *r = c->old_runs; r != NULL; r = r->next_old) {
        grace_close(r);
    }
}

void jobrun_join_all(mp_coord_t *c)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        jobrun_t *r = j->run;
        if (r == NULL) {
            continue;
        }
        if (r->thread_started && !r->thread_exited) {
            pthread_join(r->tid, NULL);
            r->thread_exited = true;
            c->nthreads--;
        }
        j->run = NULL;
        run_free(r); /* its grace timer closed with the loop */
    }
    while (c->old_runs != NULL) {
        jobrun_t *r = c->old_runs;
        c->old_runs = r->next_old;
        if (r->thread_started && !r->thread_exited) {
            pthread_join(r->tid, NULL);
            r->thread_exited = true;
            c->nthreads--;
        }
        run_free(r);
    }
    if (c->mbox.open) {
        /* The threads' messages, exits included, are all queued. */
        mp_mbox_msg_t *m = c->mbox.head;
        c->mbox.head = c->mbox.tail = NULL;
        while (m != NULL) {
            fmsg_t *x = (fmsg_t *)m;
            m = m->next;
            mp_free(x->faddr);
            mp_free(x->gaddr);
            mp_free(x);
        }
    }
}
