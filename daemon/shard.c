/*
 * shard.c - the node's side of a running job: for each JobAssignment, one
 * thread per shard placed on this node, each owning its shard executor
 * (engine/executor.h) and UCX worker.  A thread creates its executor and
 * hands its worker address to the loop (ShardReady), waits for every
 * peer's address (PeerAddresses + JobStart), connects and runs the job;
 * each event's report goes to the loop through the mailbox and on to the
 * coordinator as a ShardReport.  With --save-weights, replica 0's shards
 * then send their parameters to the coordinator's gatherer.  A thread ends
 * on JobEnd (everyone is done: endpoints close) or JobAbort (its executor
 * is cancelled), frees its executor and says so (ShardReport exited).
 * With checkpoints, DP replica 0's executors copy their blocks to host
 * memory every checkpoint.every_steps and their writer threads write them
 * (engine/ckptw.h); each durable file (or its failure) becomes a
 * ShardReport with checkpoint_step, which the coordinator commits.  A
 * resumed job's shards load their blocks from the checkpoint first.
 * Every wait of a thread is bounded.  Owns the job records and threads;
 * the record functions run on the libuv thread, shard_main on its own.
 *
 * Fault injection for tests (as engine/local.h has): with the environment
 * variable MPARD_FAULT_SHARD=NAME:RANK:STEP, shard RANK of a job named NAME
 * cancels itself when it has reported step STEP, so its mp_exec_run fails
 * while the coordinator did not ask for it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/alloc.h"
#include "common/log.h"
#include "daemon/mbox.h"
#include "daemon/shards.h"
#include "engine/executor.h"
#include "engine/gather.h"
#include "engine/internal.h"
#include "model/spec.h"
#include "parallel/placement.h"

/* How long a shard waits for the coordinator's next word (the addresses,
 * the end) before it gives up by itself. */
#define CONTROL_WAIT_MS 120000

typedef struct node_job node_job_t;
typedef struct shard_msg msg_t;

typedef struct {
    node_job_t *job;
    int rank, stage, tp_rank, dp_rank;
    mp_backend_kind_t kind;
    int device;
    pthread_t tid;
    bool started;
    bool exited;     /* its EXITED message was handled (joined) */
    msg_t *exit_msg; /* its EXITED, made before it starts: its last act never fails */
    mp_exec_t *ex;   /* under job->mu, while it exists */
    /* Its executor's byte counts when it ended (under job->mu). */
    uint64_t final_sent, final_received;
} shard_t;

struct node_job {
    mp_shards_t *sh;
    char id[24];
    mp_spec_t *spec;
    uint32_t tag;
    int64_t train_n, test_n, timeout_ms;
    bool save_weights;
    char *ckpt_dir; /* checkpoints: the folder, or NULL */
    int64_t ckpt_every;
    int64_t start_step; /* resumed: from the checkpoint of this step in resume_dir */
    char *resume_dir;
    bool fault;  /* MPARD_FAULT_SHARD names this job */
    int nranks;  /* the whole grid */
    int nshards; /* this node's */
    shard_t *shards;
    int running; /* threads not yet joined */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool have_peers, start, end, abort;
    void **addr; /* [nranks + 1] (the feeder last) */
    size_t *len;
    void *gather_addr;
    size_t gather_len;
    node_job_t *next;
};

struct mp_shards {
    mpard_t *d;
    mp_shards_send_t send; /* to the coordinator */
    void *send_arg;
    char fault_name[128]; /* MPARD_FAULT_SHARD, or "" */
    int fault_rank;
    int64_t fault_step;
    mp_mbox_t mbox;
    node_job_t *jobs;
    uint32_t running;
    bool stopping;
    /* Payload bytes of the executors that have ended (libuv thread). */
    uint64_t bytes_sent_done, bytes_received_done;
};

typedef enum { MSG_READY, MSG_REPORT, MSG_DONE, MSG_EXITED, MSG_CKPT } msg_kind_t;

struct shard_msg {
    mp_mbox_msg_t base;
    msg_kind_t kind;
    shard_t *s;
    /* READY */
    void *addr;
    size_t len;
    /* REPORT */
    mp_exec_report_t rep;
    mp_exec_span_t *spans;
    uint64_t off_ns; /* Unix-epoch ns minus monotonic ns, when reported */
    /* DONE, CKPT (st and error, and the checkpoint's step) */
    mp_status_t st;
    char error[1100];
    int64_t ckpt_step;
};

uint32_t mp_shards_running(const mp_shards_t *sh)
{
    return sh->running;
}

static const char *phase_name(mp_exec_phase_t p)
{
    switch (p) {
    case MP_EXEC_PHASE_SETUP:
        return "SETUP";
    case MP_EXEC_PHASE_TRAIN:
        return "TRAIN";
    case MP_EXEC_PHASE_EVAL:
        return "EVAL";
    case MP_EXEC_PHASE_DONE:
        return "DONE";
    }
    return "?";
}

size_t mp_shards_probe(mp_shards_t *sh, Mpar__ShardProbe *out, size_t cap, uint64_t *sent_p,
                       uint64_t *received_p)
{
    uint64_t sent = sh->bytes_sent_done, recv = sh->bytes_received_done;
    uint64_t now_mono = mp_engine_now_ns(), now_unix = mpard_now_ms();
    size_t n = 0;
    for (node_job_t *j = sh->jobs; j != NULL; j = j->next) {
        for (int i = 0; i < j->nshards; i++) {
            shard_t *s = &j->shards[i];
            mp_exec_probe_t p;
            /* The executor's thread holds this lock only to set or clear
             * s->ex, so the loop never waits on its work. */
            pthread_mutex_lock(&j->mu);
            bool have = s->ex != NULL;
            if (have) {
                mp_exec_probe(s->ex, &p);
            }
            pthread_mutex_unlock(&j->mu);
            if (!have) {
                continue;
            }
            sent += p.bytes_sent;
            recv += p.bytes_received;
            if (n == cap) {
                continue;
            }
            Mpar__ShardProbe *q = &out[n++];
            mpar__shard_probe__init(q);
            q->job_id = j->id;
            q->rank = (uint32_t)s->rank;
            q->phase = (char *)phase_name(p.phase);
            q->op = p.op >= 0 ? (char *)mp_sched_op_name((mp_sched_op_t)p.op) : "";
            q->mb = p.mb;
            q->step = p.step > 0 ? (uint64_t)p.step : 0;
            q->wait = (char *)mp_exec_wait_name(p.wait);
            q->peer = p.peer;
            uint64_t age = now_mono > p.since_ns ? (now_mono - p.since_ns) / 1000000u : 0;
            q->age_ms = age;
            q->since_unix_ms = now_unix > age ? now_unix - age : 0;
        }
    }
    *sent_p = sent;
    *received_p = recv;
    return n;
}

static uint64_t unix_minus_mono_ns(void)
{
    struct timespec r, m;
    clock_gettime(CLOCK_REALTIME, &r);
    clock_gettime(CLOCK_MONOTONIC, &m);
    return ((uint64_t)r.tv_sec * 1000000000u + (uint64_t)r.tv_nsec) -
           ((uint64_t)m.tv_sec * 1000000000u + (uint64_t)m.tv_nsec);
}

static msg_t *msg_new(shard_t *s, msg_kind_t kind)
{
    msg_t *m = mp_calloc(1, sizeof(*m));
    if (m != NULL) {
        m->kind = kind;
        m->s = s;
    }
    return m;
}

/* ---- the shard's thread --------------------------------------------------- */

static void on_report(const mp_exec_report_t *rep, void *arg)
{
    shard_t *s = arg;
    msg_t *m = msg_new(s, MSG_REPORT);
    if (m == NULL) {
        return; /* the coordinator misses one report; the job goes on */
    }
    m->rep = *rep;
    m->off_ns = unix_minus_mono_ns();
    if (rep->nspans > 0) {
        m->spans = mp_malloc((size_t)rep->nspans * sizeof(*m->spans));
        if (m->spans != NULL) {
            memcpy(m->spans, rep->spans, (size_t)rep->nspans * sizeof(*m->spans));
        } else {
            m->rep.nspans = 0;
        }
    }
    m->rep.spans = m->spans;
    mp_mbox_post(&s->job->sh->mbox, &m->base);
    const mp_shards_t *sh = s->job->sh;
    if (s->job->fault && s->rank == sh->fault_rank && rep->ev.kind == MP_ENGINE_EV_TRAIN &&
        rep->ev.step == sh->fault_step) {
        mp_warn("job %s: rank %d fails at step %lld (MPARD_FAULT_SHARD)", s->job->id, s->rank,
                (long long)rep->ev.step);
        mp_exec_cancel(s->ex); /* this thread's own executor */
    }
}

/* From the shard's checkpoint writer thread: its file is durable, or not. */
static void on_checkpoint(int64_t step, mp_status_t st, const char *path_or_msg, void *arg)
{
    shard_t *s = arg;
    msg_t *m = msg_new(s, MSG_CKPT);
    if (m == NULL) {
        return; /* the coordinator does not commit this checkpoint; a later one may */
    }
    m->ckpt_step = step;
    m->st = st;
    snprintf(m->error, sizeof(m->error), "%s", st == MP_OK ? "" : path_or_msg);
    mp_mbox_post(&s->job->sh->mbox, &m->base);
}

/* Waits until flag (under job->mu) or abort, for at most ms; true if flag. */
static bool wait_for(node_job_t *j, const bool *flag, int64_t ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += ms / 1000;
    dl.tv_nsec += (ms % 1000) * 1000000;
    if (dl.tv_nsec >= 1000000000) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&j->mu);
    int rc = 0;
    while (!*flag && !j->abort && rc != ETIMEDOUT) {
        rc = pthread_cond_timedwait(&j->cv, &j->mu, &dl);
    }
    bool ok = *flag && !j->abort;
    pthread_mutex_unlock(&j->mu);
    return ok;
}

static void post_done(shard_t *s, mp_status_t st, const char *error)
{
    msg_t *m = msg_new(s, MSG_DONE);
    if (m != NULL) {
        m->st = st;
        snprintf(m->error, sizeof(m->error), "%s", error ? error : "");
        mp_mbox_post(&s->job->sh->mbox, &m->base);
    }
}

static void *shard_main(void *arg)
{
    shard_t *s = arg;
    node_job_t *j = s->job;
    mp_errbuf_t err = {{0}};
    mp_xport_ctx_t *ctx;
    mp_exec_t *ex = NULL;
    mp_status_t st = mpard_xport_ctx(&ctx);
    if (st != MP_OK) {
        mp_errbuf_set(&err, st, "cannot create the UCX context: %s", mp_strerror(st));
    }
    if (st == MP_OK) {
        mp_exec_opts_t eo = {
            .spec = j->spec,
            .job = j->tag,
            .stage = s->stage,
            .tp_rank = s->tp_rank,
            .dp_rank = s->dp_rank,
            .threads = 1,
            .device_kind = s->kind,
            .device = s->device,
            .train_n = j->train_n,
            .test_n = j->test_n,
            .timeout_ms = j->timeout_ms,
            .on_report = on_report,
            .arg = s,
            .start_step = j->start_step,
            .ckpt_dir = j->ckpt_dir,
            .ckpt_every = j->ckpt_every,
            .on_checkpoint = on_checkpoint,
        };
        st = mp_exec_create(ctx, &eo, &ex, &err);
    }
    if (st == MP_OK && j->resume_dir != NULL) {
        /* Blocking reads of the checkpoint files, on this shard's thread. */
        st = mp_exec_resume(ex, j->resume_dir, &err);
    }
    msg_t *ready = NULL;
    if (st == MP_OK) {
        ready = msg_new(s, MSG_READY);
        st = ready == NULL ? MP_ERR_NOMEM : mp_exec_address(ex, &ready->addr, &ready->len);
        if (st != MP_OK) {
            mp_free(ready);
            mp_errbuf_set(&err, st, "no worker address: %s", mp_strerror(st));
        }
    }
    if (st == MP_OK) {
        pthread_mutex_lock(&j->mu);
        s->ex = ex;
        if (j->abort) {
            mp_exec_cancel(ex);
        }
        pthread_mutex_unlock(&j->mu);
        mp_mbox_post(&j->sh->mbox, &ready->base);
        if (!wait_for(j, &j->start, CONTROL_WAIT_MS)) {
            st = MP_ERR_CANCELLED;
            mp_errbuf_set(&err, st, "the job was aborted before it started");
        }
    }
    bool connected = false;
    if (st == MP_OK) {
        st = mp_exec_connect(ex, (const void *const *)j->addr, j->len, &err);
        connected = st == MP_OK;
    }
    if (st == MP_OK) {
        st = mp_exec_run(ex, &err);
    }
    if (st == MP_OK && j->save_weights && s->dp_rank == 0) {
        st = mp_gather_send(ctx, ex, j->spec, j->tag, j->gather_addr, j->gather_len, j->timeout_ms,
                            &err);
    }
    post_done(s, st, st == MP_OK ? NULL : err.msg);
    if (connected) {
        /* Peers may still be receiving what this shard sent: endpoints close
         * once every shard is done (JobEnd), or at once on an abort. */
        wait_for(j, &j->end, CONTROL_WAIT_MS);
        mp_exec_disconnect(ex);
    }
    mp_exec_probe_t last = {0};
    if (ex != NULL) {
        mp_exec_probe(ex, &last);
    }
    pthread_mutex_lock(&j->mu);
    s->ex = NULL;
    s->final_sent = last.bytes_sent;
    s->final_received = last.bytes_received;
    pthread_mutex_unlock(&j->mu);
    mp_exec_destroy(ex);
    /* The last act: the loop joins this thread when it reads this. */
    mp_mbox_post(&j->sh->mbox, &s->exit_msg->base);
    return NULL;
}

/* ---- records (libuv thread) ----------------------------------------------- */

static void msg_free(msg_t *m)
{
    if (m->kind == MSG_READY) {
        mp_free(m->addr);
    } else if (m->kind == MSG_REPORT) {
        mp_free(m->spans);
    }
    mp_free(m);
}

static node_job_t *job_find(mp_shards_t *sh, const char *id)
{
    for (node_job_t *j = sh->jobs; j != NULL; j = j->next) {
        if (strcmp(j->id, id) == 0) {
            return j;
        }
    }
    return NULL;
}

static void job_free(node_job_t *j)
{
    if (j->addr != NULL) {
        for (int r = 0; r <= j->nranks; r++) {
            mp_free(j->addr[r]);
        }
    }
    mp_free(j->addr);
    mp_free(j->len);
    mp_free(j->gather_addr);
    mp_free(j->ckpt_dir);
    mp_free(j->resume_dir);
    mp_free(j->shards);
    mp_spec_free(j->spec);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    mp_free(j);
}

static void job_unlink_free(mp_shards_t *sh, node_job_t *j)
{
    for (node_job_t **pp = &sh->jobs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    job_free(j);
}

static void send_env(mp_shards_t *sh, Mpar__Envelope *env)
{
    if (sh->send(sh->send_arg, env) != MP_OK) {
        mp_debug("job: cannot reach the coordinator; a %s is lost",
                 env->msg_case == MPAR__ENVELOPE__MSG_SHARD_REPORT ? "report" : "message");
    }
}

static void fill_id(Mpar__ShardId *id, const shard_t *s)
{
    mpar__shard_id__init(id);
    id->stage = (uint32_t)s->stage;
    id->tp_rank = (uint32_t)s->tp_rank;
    id->dp_rank = (uint32_t)s->dp_rank;
}

/* The ShardReport that says shard s is done (with error, "" when it
 * succeeded) or that its thread has exited. */
static void send_shard_end(mp_shards_t *sh, const shard_t *s, bool done, bool exited,
                           const char *error)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__ShardReport r = MPAR__SHARD_REPORT__INIT;
    Mpar__ShardId sid;
    fill_id(&sid, s);
    r.job_id = s->job->id;
    r.shard = &sid;
    r.rank = (uint32_t)s->rank;
    r.done = done;
    r.exited = exited;
    r.error = (char *)error;
    env.msg_case = MPAR__ENVELOPE__MSG_SHARD_REPORT;
    env.shard_report = &r;
    send_env(sh, &env);
}

static void job_abort(node_job_t *j, const char *why)
{
    pthread_mutex_lock(&j->mu);
    if (!j->abort) {
        j->abort = true;
        mp_info("job %s: aborting %d shard%s on this node: %s", j->id, j->nshards,
                j->nshards == 1 ? "" : "s", why);
    }
    for (int i = 0; i < j->nshards; i++) {
        if (j->shards[i].ex != NULL) {
            mp_exec_cancel(j->shards[i].ex);
        }
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void on_msg(void *owner, mp_mbox_msg_t *base)
{
    mp_shards_t *sh = owner;
    msg_t *m = (msg_t *)base;
    shard_t *s = m->s;
    node_job_t *j = s->job;
    if (sh->stopping && m->kind != MSG_EXITED) {
        msg_free(m); /* said Goodbye: the coordinator hears no more */
        return;
    }
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__ShardId sid;
    fill_id(&sid, s);
    switch (m->kind) {
    case MSG_READY: {
        Mpar__ShardReady r = MPAR__SHARD_READY__INIT;
        Mpar__ShardAddress a = MPAR__SHARD_ADDRESS__INIT;
        a.shard = &sid;
        a.node = sh->d->cfg.name;
        a.ucx_address.data = m->addr;
        a.ucx_address.len = m->len;
        r.job_id = j->id;
        r.address = &a;
        env.msg_case = MPAR__ENVELOPE__MSG_SHARD_READY;
        env.shard_ready = &r;
        send_env(sh, &env);
        mp_free(m->addr);
        break;
    }
    case MSG_REPORT: {
        const mp_exec_report_t *rep = &m->rep;
        Mpar__ShardReport r = MPAR__SHARD_REPORT__INIT;
        Mpar__Span *spans = mp_calloc((size_t)rep->nspans + 1, sizeof(*spans));
        Mpar__Span **sp = mp_calloc((size_t)rep->nspans + 1, sizeof(*sp));
        if (spans == NULL || sp == NULL) {
            mp_free(spans);
            mp_free(sp);
            break;
        }
        for (int k = 0; k < rep->nspans; k++) {
            mpar__span__init(&spans[k]);
            spans[k].op = (char *)mp_sched_op_name(rep->spans[k].op);
            spans[k].mb = rep->spans[k].mb;
            spans[k].chunk = rep->spans[k].chunk;
            spans[k].t0_ns = rep->spans[k].t0_ns + m->off_ns;
            spans[k].t1_ns = rep->spans[k].t1_ns + m->off_ns;
            sp[k] = &spans[k];
        }
        r.job_id = j->id;
        r.shard = &sid;
        r.rank = (uint32_t)rep->rank;
        r.step = (uint64_t)(rep->ev.step > 0 ? rep->ev.step : 0);
        r.eval = rep->ev.kind == MP_ENGINE_EV_EVAL;
        r.epoch = rep->ev.epoch;
        r.has_loss = rep->has_loss;
        r.loss_sum = rep->loss_sum;
        r.samples = rep->samples;
        r.correct = rep->correct;
        r.t0_ns = rep->t0_ns + m->off_ns;
        r.t1_ns = rep->t1_ns + m->off_ns;
        r.seconds = (double)(rep->t1_ns - rep->t0_ns) * 1e-9;
        r.spans = sp;
        r.n_spans = (size_t)rep->nspans;
        env.msg_case = MPAR__ENVELOPE__MSG_SHARD_REPORT;
        env.shard_report = &r;
        send_env(sh, &env);
        mp_free(spans);
        mp_free(sp);
        mp_free(m->spans);
        break;
    }
    case MSG_CKPT: {
        Mpar__ShardReport r = MPAR__SHARD_REPORT__INIT;
        r.job_id = j->id;
        r.shard = &sid;
        r.rank = (uint32_t)s->rank;
        r.checkpoint_step = m->ckpt_step;
        r.checkpoint_error = m->error;
        if (m->st != MP_OK) {
            mp_warn("job %s: rank %d: checkpoint of step %lld: %s", j->id, s->rank,
                    (long long)m->ckpt_step, m->error);
        }
        env.msg_case = MPAR__ENVELOPE__MSG_SHARD_REPORT;
        env.shard_report = &r;
        send_env(sh, &env);
        break;
    }
    case MSG_DONE: {
        char error[1100] = "";
        if (m->st != MP_OK) {
            snprintf(error, sizeof(error), "%s", m->error[0] ? m->error : mp_strerror(m->st));
            if (!j->abort) {
                mp_warn("job %s: rank %d (stage %d, tp %d, dp %d) failed: %s", j->id, s->rank,
                        s->stage, s->tp_rank, s->dp_rank, error);
            }
        }
        send_shard_end(sh, s, true, false, error);
        break;
    }
    case MSG_EXITED: {
        pthread_join(s->tid, NULL);
        s->exited = true;
        j->running--;
        sh->running--;
        sh->bytes_sent_done += s->final_sent;
        sh->bytes_received_done += s->final_received;
        if (!sh->stopping) {
            send_shard_end(sh, s, false, true, "");
        }
        if (j->running == 0) {
            if (!sh->stopping) {
                mp_info("job %s: every shard of this node has ended", j->id);
            }
            job_unlink_free(sh, j);
        }
        break;
    }
    }
    mp_free(m);
    if (sh->stopping && sh->running == 0) {
        mp_mbox_close(&sh->mbox); /* the last thread has exited */
    }
}

/* Refuses an assignment the coordinator should not have sent, by a failed
 * ShardReport for each of this node's shards. */
static void refuse(mp_shards_t *sh, const Mpar__JobAssignment *a, const char *why)
{
    mp_warn("job %s: refused its assignment: %s", a->job_id, why);
    for (size_t i = 0; i < a->n_shards; i++) {
        const Mpar__ShardAssignment *x = a->shards[i];
        if (x->node == NULL || strcmp(x->node, sh->d->cfg.name) != 0 || x->shard == NULL) {
            continue;
        }
        Mpar__Envelope env = MPAR__ENVELOPE__INIT;
        Mpar__ShardReport r = MPAR__SHARD_REPORT__INIT;
        r.job_id = a->job_id;
        r.shard = x->shard;
        r.done = true;
        r.exited = true;
        r.error = (char *)why;
        env.msg_case = MPAR__ENVELOPE__MSG_SHARD_REPORT;
        env.shard_report = &r;
        send_env(sh, &env);
    }
}

static void on_assignment(mp_shards_t *sh, const Mpar__JobAssignment *a)
{
    mp_errbuf_t err = {{0}};
    const char *id = a->job_id ? a->job_id : "";
    if (id[0] == '\0' || strlen(id) >= sizeof(((node_job_t *)0)->id) || job_find(sh, id)) {
        refuse(sh, a, "a job id that is empty, too long or already running here");
        return;
    }
    if (sh->stopping) {
        refuse(sh, a, "this mpard is stopping");
        return;
    }
    node_job_t *j = mp_calloc(1, sizeof(*j));
    if (j == NULL) {
        refuse(sh, a, "out of memory");
        return;
    }
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->sh = sh;
    snprintf(j->id, sizeof(j->id), "%s", id);
    const char *spec_json = a->spec_json ? a->spec_json : "";
    if (mp_spec_parse(spec_json, strlen(spec_json), &j->spec, &err) != MP_OK) {
        char why[700];
        snprintf(why, sizeof(why), "the job spec: %.600s", err.msg);
        refuse(sh, a, why);
        job_free(j);
        return;
    }
    j->tag = a->tag & MP_XPORT_JOB_MAX;
    j->train_n = a->train_n;
    j->test_n = a->test_n;
    j->timeout_ms = a->timeout_ms;
    j->save_weights = a->save_weights;
    j->ckpt_every = a->checkpoint_every;
    j->start_step = a->start_step > 0 ? a->start_step : 0;
    if ((a->checkpoint_dir != NULL && a->checkpoint_dir[0] != '\0' && a->checkpoint_every > 0 &&
         (j->ckpt_dir = mp_strdup(a->checkpoint_dir)) == NULL) ||
        (a->resume_dir != NULL && a->resume_dir[0] != '\0' &&
         (j->resume_dir = mp_strdup(a->resume_dir)) == NULL)) {
        refuse(sh, a, "out of memory");
        job_free(j);
        return;
    }
    j->fault = sh->fault_name[0] != '\0' && strcmp(j->spec->name, sh->fault_name) == 0;
    int pp = j->spec->parallel.pp, tp = j->spec->parallel.tp, dp = j->spec->parallel.dp;
    j->nranks = pp * tp * dp;
    j->shards = mp_calloc(a->n_shards + 1, sizeof(*j->shards));
    j->addr = mp_calloc((size_t)j->nranks + 1, sizeof(void *));
    j->len = mp_calloc((size_t)j->nranks + 1, sizeof(size_t));
    if (j->shards == NULL || j->addr == NULL || j->len == NULL) {
        refuse(sh, a, "out of memory");
        job_free(j);
        return;
    }
    for (size_t i = 0; i < a->n_shards; i++) {
        const Mpar__ShardAssignment *x = a->shards[i];
        if (x->node == NULL || strcmp(x->node, sh->d->cfg.name) != 0 || x->shard == NULL) {
            continue;
        }
        if ((int)x->shard->stage >= pp || (int)x->shard->tp_rank >= tp ||
            (int)x->shard->dp_rank >= dp) {
            refuse(sh, a, "a shard outside the job's grid");
            job_free(j);
            return;
        }
        shard_t *s = &j->shards[j->nshards++];
        s->job = j;
        s->stage = (int)x->shard->stage;
        s->tp_rank = (int)x->shard->tp_rank;
        s->dp_rank = (int)x->shard->dp_rank;
        s->rank = mp_place_rank(pp, tp, s->stage, s->tp_rank, s->dp_rank);
        s->kind = x->device_kind == MPAR__DEVICE_KIND__DEVICE_KIND_CUDA ? MP_BACKEND_CUDA
                                                                        : MP_BACKEND_CPU;
        s->device = (int)x->device_index;
    }
    if (j->nshards == 0) {
        job_free(j);
        return; /* nothing here */
    }
    j->next = sh->jobs;
    sh->jobs = j;
    mp_info("job %s: starting %d shard%s on this node", j->id, j->nshards,
            j->nshards == 1 ? "" : "s");
    for (int i = 0; i < j->nshards; i++) {
        shard_t *s = &j->shards[i];
        s->exit_msg = msg_new(s, MSG_EXITED);
        if (s->exit_msg == NULL || pthread_create(&s->tid, NULL, shard_main, s) != 0) {
            mp_free(s->exit_msg);
            s->exit_msg = NULL;
            send_shard_end(sh, s, true, false, "cannot start the shard's thread");
            continue;
        }
        s->started = true;
        j->running++;
        sh->running++;
    }
    if (j->running == 0) {
        job_unlink_free(sh, j);
    }
}

static void on_peers(mp_shards_t *sh, const Mpar__PeerAddresses *p)
{
    node_job_t *j = job_find(sh, p->job_id ? p->job_id : "");
    if (j == NULL) {
        return;
    }
    pthread_mutex_lock(&j->mu);
    if (j->have_peers) {
        pthread_mutex_unlock(&j->mu);
        return;
    }
    int pp = j->spec->parallel.pp, tp = j->spec->parallel.tp, dp = j->spec->parallel.dp;
    bool ok = true;
    for (size_t i = 0; i < p->n_addresses && ok; i++) {
        const Mpar__ShardAddress *a = p->addresses[i];
        if (a->shard == NULL || (int)a->shard->stage >= pp || (int)a->shard->tp_rank >= tp ||
            (int)a->shard->dp_rank >= dp) {
            ok = false;
            break;
        }
        int r = mp_place_rank(pp, tp, (int)a->shard->stage, (int)a->shard->tp_rank,
                              (int)a->shard->dp_rank);
        mp_free(j->addr[r]);
        j->addr[r] = mp_malloc(a->ucx_address.len + 1);
        ok = j->addr[r] != NULL;
        if (ok) {
            memcpy(j->addr[r], a->ucx_address.data, a->ucx_address.len);
            j->len[r] = a->ucx_address.len;
        }
    }
    if (ok) {
        j->addr[j->nranks] = mp_malloc(p->feeder_address.len + 1);
        ok = j->addr[j->nranks] != NULL;
        if (ok) {
            memcpy(j->addr[j->nranks], p->feeder_address.data, p->feeder_address.len);
            j->len[j->nranks] = p->feeder_address.len;
        }
    }
    if (ok && p->gather_address.len > 0) {
        j->gather_addr = mp_malloc(p->gather_address.len);
        ok = j->gather_addr != NULL;
        if (ok) {
            memcpy(j->gather_addr, p->gather_address.data, p->gather_address.len);
            j->gather_len = p->gather_address.len;
        }
    }
    j->have_peers = ok;
    pthread_mutex_unlock(&j->mu);
    if (!ok) {
        job_abort(j, "bad peer addresses from the coordinator");
    }
}

static void set_flag(node_job_t *j, bool *flag)
{
    pthread_mutex_lock(&j->mu);
    *flag = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void mp_shards_on_envelope(mp_shards_t *sh, const Mpar__Envelope *env)
{
    node_job_t *j;
    switch (env->msg_case) {
    case MPAR__ENVELOPE__MSG_JOB_ASSIGNMENT:
        on_assignment(sh, env->job_assignment);
        return;
    case MPAR__ENVELOPE__MSG_PEER_ADDRESSES:
        on_peers(sh, env->peer_addresses);
        return;
    case MPAR__ENVELOPE__MSG_JOB_START:
        j = job_find(sh, env->job_start->job_id ? env->job_start->job_id : "");
        if (j != NULL && j->have_peers) {
            set_flag(j, &j->start);
        } else if (j != NULL) {
            job_abort(j, "JobStart before the peer addresses");
        }
        return;
    case MPAR__ENVELOPE__MSG_JOB_END:
        j = job_find(sh, env->job_end->job_id ? env->job_end->job_id : "");
        if (j != NULL) {
            set_flag(j, &j->end);
        }
        return;
    case MPAR__ENVELOPE__MSG_JOB_ABORT:
        j = job_find(sh, env->job_abort->job_id ? env->job_abort->job_id : "");
        if (j != NULL) {
            job_abort(j, env->job_abort->reason && env->job_abort->reason[0]
                             ? env->job_abort->reason
                             : "aborted by the coordinator");
        }
        return;
    default:
        return;
    }
}

void mp_shards_abort_all(mp_shards_t *sh, const char *reason)
{
    for (node_job_t *j = sh->jobs; j != NULL; j = j->next) {
        job_abort(j, reason);
    }
}

mp_status_t mp_shards_create(mpard_t *d, mp_shards_send_t send, void *send_arg,
                             mp_shards_t **shards_p)
{
    mp_shards_t *sh = mp_calloc(1, sizeof(*sh));
    if (sh == NULL) {
        return MP_ERR_NOMEM;
    }
    sh->d = d;
    sh->send = send;
    sh->send_arg = send_arg;
    const char *fault = getenv("MPARD_FAULT_SHARD");
    if (fault != NULL && fault[0] != '\0') {
        char name[128];
        int rank;
        long long step;
        if (sscanf(fault, "%127[^:]:%d:%lld", name, &rank, &step) == 3) {
            snprintf(sh->fault_name, sizeof(sh->fault_name), "%s", name);
            sh->fault_rank = rank;
            sh->fault_step = step;
            mp_warn("MPARD_FAULT_SHARD: rank %d of jobs named %s fails at step %lld", rank, name,
                    step);
        } else {
            mp_warn("MPARD_FAULT_SHARD='%s' ignored: expected NAME:RANK:STEP", fault);
        }
    }
    mp_status_t st = mp_mbox_init(d->loop, &sh->mbox, on_msg, sh);
    if (st != MP_OK) {
        mp_free(sh);
        return st;
    }
    *shards_p = sh;
    return MP_OK;
}

void mp_shards_stop(mp_shards_t *sh)
{
    if (sh->stopping) {
        return;
    }
    sh->stopping = true;
    /* The loop does not wait for the cancelled executors to unwind: each
     * thread is joined when its EXITED arrives (on_msg), and what they say
     * meanwhile is dropped; the mailbox closes after the last one. */
    mp_shards_abort_all(sh, "mpard is stopping");
    if (sh->running == 0) {
        mp_mbox_close(&sh->mbox);
    }
}

void mp_shards_destroy(mp_shards_t *sh)
{
    /* After the loop, where blocking is fine: the mailbox closed after the
     * last thread's exit, so this finds none, unless it never closed. */
    while (sh->jobs != NULL) {
        node_job_t *j = sh->jobs;
        for (int i = 0; i < j->nshards; i++) {
            if (j->shards[i].started && !j->shards[i].exited) {
                pthread_join(j->shards[i].tid, NULL);
                j->shards[i].exited = true;
            }
        }
        sh->jobs = j->next;
        job_free(j);
    }
    if (sh->mbox.open) {
        /* Their messages, exits included, are all queued: freed unsent. */
        mp_mbox_msg_t *m = sh->mbox.head;
        sh->mbox.head = sh->mbox.tail = NULL;
        while (m != NULL) {
            msg_t *x = (msg_t *)m;
            m = m->next;
            msg_free(x);
        }
    }
    mp_free(sh);
}
