/*
 * coord.c - the coordinator role of mpard: cluster membership (registration,
 * heartbeats, ALIVE -> SUSPECT -> DEAD, rejoin), the job queue with
 * validation at submit, job states with reasons, timestamps and an event log,
 * watchers for `logs -f`, and persistence of the jobs in the state dir.
 * Owns the node and job records; their Mpar__NodeInfo / Mpar__JobInfo are the
 * records themselves, so replies point into them without copies.  libuv
 * thread; the state file is written on the libuv thread pool (one write in
 * flight, the latest state wins) and read synchronously only at start.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/fs.h"
#include "common/log.h"
#include "daemon/coord_internal.h"
#include "model/spec.h"
#include "parallel/placement.h"
#include "parallel/sched.h"
#include "proto/json.h"

static void job_try_start(mp_coord_t *c, coord_job_t *j);
static coord_job_t *job_find(mp_coord_t *c, const char *id);

uint64_t mp_coord_epoch(const mp_coord_t *c)
{
    return c->epoch;
}

bool coord_job_terminal(Mpar__JobState s)
{
    return s == MPAR__JOB_STATE__JOB_STATE_SUCCEEDED || s == MPAR__JOB_STATE__JOB_STATE_FAILED ||
           s == MPAR__JOB_STATE__JOB_STATE_CANCELLED;
}

static const char *node_state_name(Mpar__NodeState s)
{
    return mp_proto_enum_short(&mpar__node_state__descriptor, (int)s);
}

static const char *job_state_name(Mpar__JobState s)
{
    return mp_proto_enum_short(&mpar__job_state__descriptor, (int)s);
}

/* ---- events and watchers ---------------------------------------------- */

static void job_send_event(coord_job_t *j, const Mpar__JobEvent *ev, watcher_t *w, bool final)
{
    Mpar__Envelope env = MPAR__ENVELOPE__INIT;
    Mpar__JobEvent copy = *ev;
    copy.final = final;
    env.request_id = w->request_id;
    env.msg_case = MPAR__ENVELOPE__MSG_JOB_EVENT;
    env.job_event = &copy;
    mp_link_send(w->s, &env);
}

/* The next event slot of j, initialized; it counts once the caller has
 * filled it in (j->nevents++).  NULL when out of memory. */
static Mpar__JobEvent *job_event_next(coord_job_t *j)
{
    if (j->nevents == j->cap_events) {
        size_t cap = j->cap_events ? j->cap_events * 2 : 8;
        Mpar__JobEvent *ne = mp_realloc(j->events, cap * sizeof(*ne));
        if (ne == NULL) {
            return NULL;
        }
        j->events = ne;
        j->cap_events = cap;
    }
    Mpar__JobEvent *ev = &j->events[j->nevents];
    mpar__job_event__init(ev);
    ev->job_id = j->id;
    return ev;
}

void coord_job_add_event(mp_coord_t *c, coord_job_t *j, const char *message, uint64_t step,
                         bool has_loss, double loss)
{
    if (j->nevents == EVENTS_MAX) {
        /* Keep the first event (submission) and drop the oldest after it. */
        mp_free(j->events[1].message);
        memmove(&j->events[1], &j->events[2], (EVENTS_MAX - 2) * sizeof(j->events[0]));
        j->nevents--;
    }
    Mpar__JobEvent *ev = job_event_next(j);
    if (ev == NULL) {
        mp_err("job %s: out of memory for its event log", j->id);
        return;
    }
    ev->unix_ms = mpard_now_ms();
    ev->state = j->info.state;
    ev->message = mp_strdup(message);
    if (ev->message == NULL) {
        return;
    }
    ev->has_step = step > 0;
    ev->step = step;
    ev->has_loss = has_loss;
    ev->loss = loss;
    j->nevents++;
    bool final = coord_job_terminal(j->info.state);
    for (size_t i = 0; i < j->nwatchers; i++) {
        job_send_event(j, ev, &j->watchers[i], final);
    }
    if (final) {
        j->nwatchers = 0;
    }
}

static void job_add_event(mp_coord_t *c, coord_job_t *j, const char *message)
{
    coord_job_add_event(c, j, message, 0, false, 0.0);
}

static void job_set_reason(mp_coord_t *c, coord_job_t *j, const char *reason)
{
    if (j->reason != NULL && strcmp(j->reason, reason) == 0) {
        return;
    }
    char *r = mp_strdup(reason);
    if (r == NULL) {
        return;
    }
    mp_free(j->reason);
    j->reason = r;
    j->info.reason = r;
}

void coord_job_set_state(mp_coord_t *c, coord_job_t *j, Mpar__JobState state, const char *reason)
{
    bool changed = j->info.state != state;
    bool reason_changed = j->reason == NULL || strcmp(j->reason, reason) != 0;
    if (!changed && !reason_changed) {
        return;
    }
    j->info.state = state;
    job_set_reason(c, j, reason);
    uint64_t now = mpard_now_ms();
    if (state == MPAR__JOB_STATE__JOB_STATE_RUNNING && j->info.started_unix_ms == 0) {
        j->info.started_unix_ms = now;
    }
    if (coord_job_terminal(state) && j->info.finished_unix_ms == 0) {
        j->info.finished_unix_ms = now;
    }
    char msg[1200];
    snprintf(msg, sizeof(msg), "%s: %s", job_state_name(state), reason);
    job_add_event(c, j, msg);
    mp_info("job %s (%s) %s: %s", j->id, j->name, job_state_name(state), reason);
    coord_save(c);
    if (changed && coord_job_terminal(state) && j->run != NULL) {
        jobrun_release(c, j);
    }
}

/* ---- scheduling -------------------------------------------------------- */

/*
 * Starts `j` when the alive nodes' free devices can hold its pp x tp x dp
 * grid, placed by parallel/placement.h (a TP group inside one node), and
 * runs it on the data plane (coord_run.c); a job that does not fit stays
 * PENDING with a reason that says what is missing.
 */
static void job_try_start(mp_coord_t *c, coord_job_t *j)
{
    if (j->info.state != MPAR__JOB_STATE__JOB_STATE_PENDING) {
        return;
    }
    if (c->stopping) {
        return;
    }
    mp_place_node_t *pn = mp_calloc(c->nnodes + 1, sizeof(*pn));
    mp_coord_node_t **pnode = mp_calloc(c->nnodes + 1, sizeof(*pnode));
    if (pn == NULL || pnode == NULL) {
        mp_free(pn);
        mp_free(pnode);
        return;
    }
    int n = 0;
    uint64_t devices = 0;
    for (mp_coord_node_t *node = c->nodes; node != NULL; node = node->next) {
        if (node->info.state != MPAR__NODE_STATE__NODE_STATE_ALIVE || node->info.n_devices == 0) {
            continue;
        }
        pn[n].name = node->name;
        pn[n].kind = node->info.devices[0]->kind == MPAR__DEVICE_KIND__DEVICE_KIND_CUDA
                         ? MP_DEV_CUDA
                         : MP_DEV_CPU;
        pn[n].ndevices = (int)node->info.n_devices;
        pn[n].busy = node->busy;
        for (size_t k = 0; k < node->info.n_devices; k++) {
            devices += node->busy[k] ? 0 : 1;
        }
        pnode[n] = node;
        n++;
    }
    char reason[1100];
    mp_place_t place;
    mp_errbuf_t err;
    if (devices < j->info.devices_needed) {
        snprintf(reason, sizeof(reason),
                 "needs %u devices (pp %u x tp %u x dp %u); the cluster has %llu free on %d "
                 "alive node%s",
                 j->info.devices_needed, j->info.pp, j->info.tp, j->info.dp,
                 (unsigned long long)devices, n, n == 1 ? "" : "s");
    } else if (mp_place_build(pn, n, (int)j->info.pp, (int)j->info.tp, (int)j->info.dp, &place,
                              &err) != MP_OK) {
        snprintf(reason, sizeof(reason), "%s", err.msg);
    } else {
        mp_free(pn);
        jobrun_start(c, j, &place, pnode); /* takes the placement */
        mp_free(pnode);
        return;
    }
    mp_free(pn);
    mp_free(pnode);
    coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_PENDING, reason);
}

void coord_reschedule(mp_coord_t *c)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        job_try_start(c, j);
    }
}

coord_job_t *coord_job_by_id(mp_coord_t *c, const char *id)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        if (strcmp(j->id, id) == 0) {
            return j;
        }
    }
    return NULL;
}

/* ---- membership -------------------------------------------------------- */

static void node_set_state(mp_coord_t *c, mp_coord_node_t *n, Mpar__NodeState s, const char *why)
{
    if (n->info.state == s) {
        return;
    }
    if (n->info.state == MPAR__NODE_STATE__NODE_STATE_UNSPECIFIED) {
        mp_info("node %s: %s (%s)", n->name, node_state_name(s), why);
    } else {
        mp_log(s == MPAR__NODE_STATE__NODE_STATE_ALIVE ? MP_LOG_INFO : MP_LOG_WARN,
               "node %s: %s -> %s (%s)", n->name, node_state_name(n->info.state),
               node_state_name(s), why);
    }
    bool was_alive = n->info.state == MPAR__NODE_STATE__NODE_STATE_ALIVE;
    n->info.state = s;
    n->info.state_since_unix_ms = mpard_now_ms();
    /* Its jobs cannot go on: DEAD, LEFT, or a lost connection (its reports
     * cannot arrive).  Late heartbeats alone wait for DEAD. */
    if (s == MPAR__NODE_STATE__NODE_STATE_DEAD || s == MPAR__NODE_STATE__NODE_STATE_LEFT ||
        (s == MPAR__NODE_STATE__NODE_STATE_SUSPECT && n->session == NULL)) {
        char lost[200];
        snprintf(lost, sizeof(lost), "node %s is %s (%s)", n->name, node_state_name(s), why);
        jobrun_node_lost(c, n, lost);
    }
    if (was_alive || s == MPAR__NODE_STATE__NODE_STATE_ALIVE) {
        coord_reschedule(c);
    }
    mpard_changed(c->d); /* the status line */
}

static uint64_t sweep_every(const mp_coord_t *c)
{
    uint64_t every = c->d->cfg.heartbeat_ms / 2;
    return every < 10 ? 10 : every;
}

static void on_sweep(uv_timer_t *t)
{
    mp_coord_t *c = t->data;
    uint64_t now = uv_now(c->d->loop);
    uint64_t hb = c->d->cfg.heartbeat_ms, dead = c->d->cfg.dead_after_ms;
    /* A sweep that runs late means this loop itself was starved (an
     * overloaded machine): the heartbeats it did not read yet are waiting
     * in the sockets, and libuv runs timers before it reads them.  When it
     * is later than half of dead-after, the verdicts wait one round so that
     * they are read, and a node declared DEAD while the loop is late says so. */
    uint64_t due = c->last_sweep_mono + sweep_every(c);
    uint64_t late = c->last_sweep_mono != 0 && now > due ? now - due : 0;
    c->last_sweep_mono = now;
    if (late > hb && late > dead / 2) {
        c->loop_late_ms = late;
        c->loop_late_at = now;
        if (!c->sweep_deferred) {
            c->sweep_deferred = true;
            mp_warn("the coordinator's event loop ran %llu ms late (the machine is overloaded); "
                    "reading the waiting heartbeats before judging nodes",
                    (unsigned long long)late);
            return;
        }
    }
    c->sweep_deferred = false;
    if (c->loop_late_ms > 0 && now - c->loop_late_at > dead) {
        c->loop_late_ms = 0;
    }
    for (mp_coord_node_t *n = c->nodes; n != NULL; n = n->next) {
        if (n->info.state != MPAR__NODE_STATE__NODE_STATE_ALIVE &&
            n->info.state != MPAR__NODE_STATE__NODE_STATE_SUSPECT) {
            continue;
        }
        uint64_t age = now - n->last_hb_mono;
        if (age >= dead) {
            char why[200];
            if (c->loop_late_ms > 0) {
                snprintf(why, sizeof(why),
                         "no heartbeat for %llu ms, while this coordinator's own event loop ran "
                         "up to %llu ms late: the machine is overloaded",
                         (unsigned long long)age, (unsigned long long)c->loop_late_ms);
            } else {
                snprintf(why, sizeof(why), "no heartbeat for %llu ms", (unsigned long long)age);
            }
            node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_DEAD, why);
            if (n->session != NULL) {
                /* Connected but silent: drop it, so that it reconnects afresh. */
                mp_link_t *s = n->session;
                n->session = NULL;
                s->node = NULL;
                mp_link_close(s, "node declared dead");
            }
        } else if (age >= 2 * hb && n->info.state == MPAR__NODE_STATE__NODE_STATE_ALIVE) {
            node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_SUSPECT, "heartbeats late");
        }
    }
}

static void sweep_restart(mp_coord_t *c)
{
    uint64_t every = sweep_every(c);
    c->last_sweep_mono = 0;
    uv_timer_start(&c->sweep_timer, on_sweep, every, every);
}

void mp_coord_apply_config(mp_coord_t *c)
{
    sweep_restart(c);
}

mp_status_t mp_coord_node_register(mp_coord_t *c, mp_link_t *s, const Mpar__RegisterNode *r,
                                   const char *address, mp_coord_node_t **node_p, mp_errbuf_t *err)
{
    const char *name = r->name ? r->name : "";
    size_t nl = strlen(name);
    if (nl == 0 || nl >= sizeof(((mp_coord_node_t *)0)->name)) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "node name must be 1 to 63 bytes");
    }
    if (r->n_devices > MP_DAEMON_MAX_DEVICES) {
        return mp_errbuf_set(err, MP_ERR_PROTO, "node %s reports %zu devices; at most %d", name,
                             r->n_devices, MP_DAEMON_MAX_DEVICES);
    }
    for (size_t i = 0; i < r->n_devices; i++) {
        if (r->devices[i]->kind == MPAR__DEVICE_KIND__DEVICE_KIND_UNSPECIFIED) {
            return mp_errbuf_set(err, MP_ERR_PROTO, "node %s: device %zu has no kind", name, i);
        }
    }
    mp_coord_node_t *n = c->nodes;
    while (n != NULL && strcmp(n->name, name) != 0) {
        n = n->next;
    }
    bool known = n != NULL;
    if (!known) {
        n = mp_calloc(1, sizeof(*n));
        if (n == NULL) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
        }
        mpar__node_info__init(&n->info);
        snprintf(n->name, sizeof(n->name), "%s", name);
        n->info.name = n->name;
        n->info.address = n->address;
    }
    Mpar__Device *devs = mp_calloc(r->n_devices + 1, sizeof(*devs));
    Mpar__Device **devp = mp_calloc(r->n_devices + 1, sizeof(*devp));
    if (devs == NULL || devp == NULL) {
        mp_free(devs);
        mp_free(devp);
        if (!known) {
            mp_free(n);
        }
        return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < r->n_devices; i++) {
        mpar__device__init(&devs[i]);
        devs[i].kind = r->devices[i]->kind;
        devs[i].index = r->devices[i]->index;
        devs[i].memory_bytes = r->devices[i]->memory_bytes;
        devs[i].model = "";
        devp[i] = &devs[i];
    }
    if (n->session != NULL && n->session != s) {
        /* The same node from a new connection: a restart or a reconnect that
         * beat the old connection's timeout.  The new one wins. */
        mp_link_t *old = n->session;
        n->session = NULL;
        old->node = NULL;
        mp_link_close(old, "replaced by a new registration of the same node");
    }
    const char *how = !known                                  ? "registered"
                      : n->info.incarnation != r->incarnation ? "rejoined after a restart"
                                                              : "reconnected";
    if (known && n->info.incarnation != r->incarnation) {
        /* Its executors died with the old process. */
        char lost[200];
        snprintf(lost, sizeof(lost), "node %s restarted", n->name);
        jobrun_node_lost(c, n, lost);
    }
    mp_free(n->devs);
    mp_free(n->devp);
    n->devs = devs;
    n->devp = devp;
    n->info.devices = devp;
    n->info.n_devices = r->n_devices;
    n->info.incarnation = r->incarnation;
    snprintf(n->address, sizeof(n->address), "%s", address);
    n->info.registered_unix_ms = mpard_now_ms();
    n->info.last_heartbeat_unix_ms = n->info.registered_unix_ms;
    n->info.registrations++;
    n->info.running_shards = 0;
    n->last_hb_mono = uv_now(c->d->loop);
    n->session = s;
    if (!known) {
        mp_coord_node_t **tail = &c->nodes;
        while (*tail != NULL) {
            tail = &(*tail)->next;
        }
        *tail = n;
        c->nnodes++;
    }
    c->d->n.registrations++;
    mp_info("node %s %s from %s with %zu device%s", n->name, how, address, r->n_devices,
            r->n_devices == 1 ? "" : "s");
    if (n->info.state == MPAR__NODE_STATE__NODE_STATE_ALIVE) {
        coord_reschedule(c); /* its devices may have changed */
    } else {
        node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_ALIVE, how);
    }
    *node_p = n;
    return MP_OK;
}

void mp_coord_node_heartbeat(mp_coord_t *c, mp_coord_node_t *n, const Mpar__Heartbeat *hb)
{
    n->last_hb_mono = uv_now(c->d->loop);
    n->info.last_heartbeat_unix_ms = mpard_now_ms();
    n->info.running_shards = hb->running_shards;
    n->info.shard_bytes_sent = hb->shard_bytes_sent;
    n->info.shard_bytes_received = hb->shard_bytes_received;
    coord_waits_heartbeat(c, n, hb);
    c->d->n.heartbeats++;
    if (n->info.state != MPAR__NODE_STATE__NODE_STATE_ALIVE) {
        node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_ALIVE, "heartbeat");
    }
}

void mp_coord_node_goodbye(mp_coord_t *c, mp_coord_node_t *n, const char *reason)
{
    node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_LEFT,
                   reason && reason[0] ? reason : "node stopped");
}

void mp_coord_node_disconnected(mp_coord_t *c, mp_coord_node_t *n, mp_link_t *s)
{
    if (n->session != s) {
        return;
    }
    n->session = NULL;
    if (c->d->stopping) {
        return; /* this process is going away, not the node */
    }
    if (n->info.state == MPAR__NODE_STATE__NODE_STATE_ALIVE) {
        node_set_state(c, n, MPAR__NODE_STATE__NODE_STATE_SUSPECT, "connection lost");
    } else if (n->info.state == MPAR__NODE_STATE__NODE_STATE_SUSPECT) {
        char lost[200];
        snprintf(lost, sizeof(lost), "node %s is SUSPECT (connection lost)", n->name);
        jobrun_node_lost(c, n, lost);
    }
}

void mp_coord_link_closed(mp_coord_t *c, mp_link_t *s)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        size_t k = 0;
        for (size_t i = 0; i < j->nwatchers; i++) {
            if (j->watchers[i].s != s) {
                j->watchers[k++] = j->watchers[i];
            }
        }
        j->nwatchers = k;
    }
}

Mpar__NodeInfo **mp_coord_nodes(mp_coord_t *c, size_t *n_p)
{
    Mpar__NodeInfo **v = mp_calloc(c->nnodes + 1, sizeof(*v));
    size_t k = 0;
    for (mp_coord_node_t *n = c->nodes; v != NULL && n != NULL; n = n->next) {
        v[k++] = &n->info;
    }
    *n_p = k;
    return v;
}

Mpar__JobInfo **mp_coord_jobs(mp_coord_t *c, size_t *n_p)
{
    /* Shallow copies without the per-step results, so that a list of every
     * job fits one frame: pointers and copies in one allocation. */
    size_t n = c->njobs + 1;
    Mpar__JobInfo **v = mp_calloc(1, n * sizeof(*v) + n * sizeof(Mpar__JobInfo));
    Mpar__JobInfo *copies = v != NULL ? (Mpar__JobInfo *)(v + n) : NULL;
    size_t k = 0;
    for (coord_job_t *j = c->jobs; v != NULL && j != NULL; j = j->next) {
        copies[k] = j->info;
        copies[k].n_losses = 0;
        copies[k].losses = NULL;
        copies[k].n_placement = 0;
        copies[k].placement = NULL;
        copies[k].timeline = NULL;
        v[k] = &copies[k];
        k++;
    }
    *n_p = k;
    return v;
}

static coord_job_t *job_find(mp_coord_t *c, const char *id)
{
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        if (strcmp(j->id, id) == 0 ||
            (j->name != NULL && strcmp(j->name, id) == 0 && !coord_job_terminal(j->info.state))) {
            return j;
        }
    }
    return NULL;
}

Mpar__JobInfo *mp_coord_job_find(mp_coord_t *c, const char *id)
{
    coord_job_t *j = job_find(c, id);
    return j ? &j->info : NULL;
}

void mp_coord_counts(mp_coord_t *c, int nodes_by_state[5], int jobs_by_state[6])
{
    memset(nodes_by_state, 0, 5 * sizeof(int));
    memset(jobs_by_state, 0, 6 * sizeof(int));
    for (mp_coord_node_t *n = c->nodes; n != NULL; n = n->next) {
        if ((unsigned)n->info.state < 5) {
            nodes_by_state[n->info.state]++;
        }
    }
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next) {
        if ((unsigned)j->info.state < 6) {
            jobs_by_state[j->info.state]++;
        }
    }
}

/* ---- jobs -------------------------------------------------------------- */

static coord_job_t *job_new(mp_coord_t *c, uint64_t num)
{
    coord_job_t *j = mp_calloc(1, sizeof(*j));
    if (j == NULL) {
        return NULL;
    }
    mpar__job_info__init(&j->info);
    snprintf(j->id, sizeof(j->id), "%llu", (unsigned long long)num);
    j->info.id = j->id;
    j->info.name = "";
    j->info.reason = "";
    j->info.submitter = "";
    j->info.save_weights = "";
    j->info.resume_dir = "";
    return j;
}

static void job_free(coord_job_t *j)
{
    for (size_t i = 0; i < j->nevents; i++) {
        mp_free(j->events[i].message);
    }
    mp_free(j->events);
    mp_free(j->watchers);
    mp_free(j->name);
    mp_free(j->reason);
    mp_free(j->submitter);
    mp_free(j->spec_json);
    mp_free(j->save_weights);
    mp_free(j->resume_dir);
    coord_job_results_free(j);
    json_decref(j->saved);
    mp_free(j);
}

void coord_job_results_free(coord_job_t *j)
{
    mp_free(j->losses);
    j->losses = NULL;
    j->info.losses = NULL;
    j->info.n_losses = 0;
    mp_free(j->place);
    mp_free(j->placep);
    j->place = NULL;
    j->placep = NULL;
    j->info.placement = NULL;
    j->info.n_placement = 0;
    Mpar__Timeline *t = j->timeline;
    if (t != NULL) {
        for (size_t r = 0; r < t->n_rows; r++) {
            mp_free(t->rows[r]->spans);
            mp_free(t->rows[r]);
        }
        mp_free(t->rows);
        mp_free(t);
    }
    j->timeline = NULL;
    j->info.timeline = NULL;
    mp_free(j->probes);
    j->probes = NULL;
}

Mpar__PlacementEntry *coord_job_placement_new(coord_job_t *j, size_t n)
{
    const size_t strs_each = PLACE_NODE_MAX + PLACE_DEVICE_MAX + PLACE_LAYERS_MAX;
    j->place = mp_calloc(n, sizeof(*j->place) + strs_each);
    j->placep = mp_calloc(n, sizeof(*j->placep));
    if (j->place == NULL || j->placep == NULL) {
        mp_free(j->place);
        mp_free(j->placep);
        j->place = NULL;
        j->placep = NULL;
        return NULL;
    }
    /* The node, device and layers strings follow the entries. */
    char *strs = (char *)(j->place + n);
    for (size_t i = 0; i < n; i++) {
        Mpar__PlacementEntry *p = &j->place[i];
        mpar__placement_entry__init(p);
        p->node = strs + strs_each * i;
        p->device = p->node + PLACE_NODE_MAX;
        p->layers = p->device + PLACE_DEVICE_MAX;
        j->placep[i] = p;
    }
    j->info.placement = j->placep;
    j->info.n_placement = n;
    return j->place;
}

Mpar__TimelineRow *coord_timeline_row_new(size_t ns, const char *node)
{
    /* One block: the span pointers, the spans, the node's name. */
    Mpar__TimelineRow *row = mp_calloc(1, sizeof(*row));
    void *blk = mp_calloc(1, (ns + 1) * (sizeof(Mpar__Span *) + sizeof(Mpar__Span)) + 64);
    if (row == NULL || blk == NULL) {
        mp_free(row);
        mp_free(blk);
        return NULL;
    }
    mpar__timeline_row__init(row);
    row->spans = blk;
    Mpar__Span *sp = (Mpar__Span *)(row->spans + ns + 1);
    row->node = (char *)(sp + ns + 1);
    snprintf(row->node, 64, "%s", node);
    for (size_t k = 0; k < ns; k++) {
        mpar__span__init(&sp[k]);
        row->spans[k] = &sp[k];
    }
    row->n_spans = ns;
    return row;
}

bool coord_op_parse(const char *name, mp_sched_op_t *op_p)
{
    for (int q = 0; q <= MP_SCHED_OP_LAST && name != NULL; q++) {
        if (strcmp(name, mp_sched_op_name((mp_sched_op_t)q)) == 0) {
            *op_p = (mp_sched_op_t)q;
            return true;
        }
    }
    return false;
}

static void job_append(mp_coord_t *c, coord_job_t *j)
{
    if (c->jobs_tail != NULL) {
        c->jobs_tail->next = j;
    } else {
        c->jobs = j;
    }
    c->jobs_tail = j;
    c->njobs++;
}

/* Keeps the job list bounded: the oldest finished jobs go first. */
static void jobs_trim(mp_coord_t *c)
{
    coord_job_t **pp = &c->jobs, *prev = NULL;
    while (c->njobs > JOBS_MAX && *pp != NULL) {
        coord_job_t *j = *pp;
        if (coord_job_terminal(j->info.state) && j->nwatchers == 0 && j->run == NULL) {
            *pp = j->next;
            if (c->jobs_tail == j) {
                c->jobs_tail = prev;
            }
            job_free(j);
            c->njobs--;
        } else {
            prev = j;
            pp = &j->next;
        }
    }
}

mp_status_t mp_coord_job_submit(mp_coord_t *c, const char *spec_json, size_t len,
                                const char *submitter, const char *save_weights,
                                const char *resume_dir, Mpar__JobInfo **job_p, mp_errbuf_t *err)
{
    if (resume_dir != NULL && resume_dir[0] != '\0' &&
        (resume_dir[0] != '/' || strlen(resume_dir) >= PATH_MAX - 64)) {
        c->d->n.jobs_refused++;
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "resume: expected an absolute checkpoint folder, got '%.200s'",
                             resume_dir);
    }
    if (save_weights != NULL && save_weights[0] != '\0' &&
        (save_weights[0] != '/' || strlen(save_weights) >= PATH_MAX - 64)) {
        c->d->n.jobs_refused++;
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "save_weights: expected an absolute directory on the coordinator's "
                             "machine, got '%.200s'",
                             save_weights);
    }
    mp_spec_t *spec;
    mp_status_t st = mp_spec_parse(spec_json, len, &spec, err);
    if (st != MP_OK) {
        c->d->n.jobs_refused++;
        return st == MP_ERR_NOMEM ? st : MP_ERR_SPEC;
    }
    if (spec->checkpoint.enabled && spec->checkpoint.dir[0] != '/') {
        /* Relative to the spec's folder, which only the client knows. */
        c->d->n.jobs_refused++;
        mp_errbuf_set(err, MP_ERR_SPEC,
                      "checkpoint.dir: '%.200s' is relative; the coordinator needs an absolute "
                      "folder that every node sees (mpar-client resolves it against the spec's "
                      "folder)",
                      spec->checkpoint.dir);
        mp_spec_free(spec);
        return MP_ERR_SPEC;
    }
    coord_job_t *j = job_new(c, c->next_job);
    if (j != NULL) {
        j->name = mp_strdup(spec->name);
        j->submitter = mp_strdup(submitter && submitter[0] ? submitter : "unknown");
        j->spec_json = mp_malloc(len + 1);
        j->save_weights = mp_strdup(save_weights ? save_weights : "");
        j->resume_dir = mp_strdup(resume_dir ? resume_dir : "");
    }
    if (j == NULL || j->name == NULL || j->submitter == NULL || j->spec_json == NULL ||
        j->save_weights == NULL || j->resume_dir == NULL) {
        if (j != NULL) {
            job_free(j);
        }
        mp_spec_free(spec);
        return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
    }
    memcpy(j->spec_json, spec_json, len);
    j->spec_json[len] = '\0';
    j->info.name = j->name;
    j->info.submitter = j->submitter;
    j->info.save_weights = j->save_weights;
    j->info.resume_dir = j->resume_dir;
    j->info.submitted_unix_ms = mpard_now_ms();
    j->info.pp = (uint32_t)spec->parallel.pp;
    j->info.tp = (uint32_t)spec->parallel.tp;
    j->info.dp = (uint32_t)spec->parallel.dp;
    j->info.devices_needed = j->info.pp * j->info.tp * j->info.dp;
    mp_spec_free(spec);
    c->next_job++;
    job_append(c, j);
    c->d->n.jobs_submitted++;
    char msg[300];
    snprintf(msg, sizeof(msg), "submitted by %s", j->submitter);
    j->info.state = MPAR__JOB_STATE__JOB_STATE_PENDING;
    job_set_reason(c, j, "submitted");
    job_add_event(c, j, msg);
    mp_info("job %s (%s) submitted by %s: pp %u tp %u dp %u", j->id, j->name, j->submitter,
            j->info.pp, j->info.tp, j->info.dp);
    job_try_start(c, j);
    jobs_trim(c);
    coord_save(c);
    *job_p = &j->info;
    return MP_OK;
}

mp_status_t mp_coord_job_cancel(mp_coord_t *c, const char *id, const char *who,
                                Mpar__JobInfo **job_p, mp_errbuf_t *err)
{
    coord_job_t *j = job_find(c, id);
    if (j == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOTFOUND, "no job %s", id);
    }
    if (coord_job_terminal(j->info.state)) {
        return mp_errbuf_set(err, MP_ERR_STATE, "job %s has already ended: %s", j->id,
                             job_state_name(j->info.state));
    }
    char reason[300];
    snprintf(reason, sizeof(reason), "cancelled by %s", who && who[0] ? who : "unknown");
    if (j->run != NULL) {
        jobrun_abort(c, j, reason);
    }
    coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_CANCELLED, reason);
    *job_p = &j->info;
    return MP_OK;
}

mp_status_t mp_coord_job_watch(mp_coord_t *c, const char *id, bool follow, mp_link_t *s,
                               uint64_t request_id, mp_errbuf_t *err)
{
    coord_job_t *j = job_find(c, id);
    if (j == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOTFOUND, "no job %s", id);
    }
    bool stay = follow && !coord_job_terminal(j->info.state);
    if (stay && j->nwatchers == j->cap_watchers) {
        size_t cap = j->cap_watchers ? j->cap_watchers * 2 : 4;
        watcher_t *nw = mp_realloc(j->watchers, cap * sizeof(*nw));
        if (nw == NULL) {
            return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory");
        }
        j->watchers = nw;
        j->cap_watchers = cap;
    }
    watcher_t w = {.s = s, .request_id = request_id};
    for (size_t i = 0; i < j->nevents; i++) {
        job_send_event(j, &j->events[i], &w, !stay && i + 1 == j->nevents);
    }
    if (stay) {
        j->watchers[j->nwatchers++] = w;
    }
    return MP_OK;
}

json_t *mp_coord_job_events_json(mp_coord_t *c, const char *id)
{
    coord_job_t *j = job_find(c, id);
    json_t *a = json_array();
    for (size_t i = 0; j != NULL && a != NULL && i < j->nevents; i++) {
        json_array_append_new(a, mp_proto_to_json(&j->events[i].base));
    }
    return a;
}

/* ---- persistence ------------------------------------------------------- */

/* A job's entry of the state file; with_results: its losses and timeline too. */
static json_t *job_save_json(const coord_job_t *j, bool with_results)
{
    json_t *o = mp_proto_to_json(&j->info.base);
    if (!with_results) {
        json_object_del(o, "losses");
        json_object_del(o, "timeline");
    }
    json_t *evs = json_array();
    for (size_t i = 0; i < j->nevents; i++) {
        json_t *e = json_object();
        json_object_set_new(e, "unix_ms", json_integer((json_int_t)j->events[i].unix_ms));
        json_object_set_new(e, "state", json_string(job_state_name(j->events[i].state)));
        json_object_set_new(e, "message", json_string(j->events[i].message));
        json_array_append_new(evs, e);
    }
    json_object_set_new(o, "spec_json", json_string(j->spec_json ? j->spec_json : ""));
    json_object_set_new(o, "events", evs);
    return o;
}

/*
 * The state as a JSON tree.  An ended job's entry is built once and shared
 * by every later save (a reference), so a save costs the loop the jobs that
 * can still change, not the whole queue; the tree is dumped to text on the
 * thread pool.
 */
static json_t *coord_snapshot(mp_coord_t *c)
{
    json_t *root = json_object();
    json_t *jobs = json_array();
    json_object_set_new(root, "version", json_integer(STATE_VERSION));
    json_object_set_new(root, "epoch", json_integer((json_int_t)c->epoch));
    json_object_set_new(root, "next_job", json_integer((json_int_t)c->next_job));
    size_t idx = 0;
    for (coord_job_t *j = c->jobs; j != NULL; j = j->next, idx++) {
        /* Older jobs keep their summary; the per-step results of only the
         * newest ones are stored, so the file stays small. */
        bool with_results = idx + RESULTS_KEPT >= c->njobs;
        if (j->saved != NULL &&
            (j->saved_nevents != j->nevents || j->saved_results != with_results)) {
            json_decref(j->saved);
            j->saved = NULL;
        }
        json_t *o = j->saved != NULL ? json_incref(j->saved) : job_save_json(j, with_results);
        if (j->saved == NULL && coord_job_terminal(j->info.state)) {
            j->saved = json_incref(o);
            j->saved_nevents = j->nevents;
            j->saved_results = with_results;
        }
        json_array_append_new(jobs, o);
    }
    json_object_set_new(root, "jobs", jobs);
    return root;
}

static int write_file_atomic(const char *tmp, const char *path, const char *text)
{
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        return errno;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w < 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return e;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        int e = errno;
        unlink(tmp);
        return e;
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return e;
    }
    return 0;
}

/* Dumps the state and writes it; any thread. */
static int save_state(const mp_coord_t *c, const json_t *root)
{
    char *text = json_dumps(root, JSON_COMPACT);
    int e = text != NULL ? write_file_atomic(c->tmp_path, c->state_path, text) : ENOMEM;
    free(text);
    return e;
}

static void save_work(uv_work_t *req)
{
    save_req_t *s = (save_req_t *)req;
    s->err = save_state(s->c, s->root);
}

static void save_after(uv_work_t *req, int status)
{
    save_req_t *s = (save_req_t *)req;
    mp_coord_t *c = s->c;
    c->save_inflight = false;
    if (s->err != 0) {
        mp_err("cannot save the job state to %s: %s", c->state_path, strerror(s->err));
    }
    json_decref(s->root);
    mp_free(s);
    if (c->save_dirty && !c->d->stopping) {
        coord_save(c);
    }
}

/* Writes the state on the thread pool; a change during a write is saved
 * right after it, so the file always ends with the latest state. */
void coord_save(mp_coord_t *c)
{
    if (c->save_inflight || c->d->stopping) {
        c->save_dirty = true;
        return;
    }
    c->save_dirty = false;
    save_req_t *s = mp_calloc(1, sizeof(*s));
    if (s == NULL || (s->root = coord_snapshot(c)) == NULL) {
        mp_free(s);
        c->save_dirty = true;
        mp_err("cannot serialize the job state (out of memory)");
        return;
    }
    s->c = c;
    if (uv_queue_work(c->d->loop, &s->req, save_work, save_after) != 0) {
        json_decref(s->root);
        mp_free(s);
        c->save_dirty = true;
        return;
    }
    c->save_inflight = true;
}

static Mpar__JobState job_state_parse(const char *name)
{
    for (unsigned i = 0; i < mpar__job_state__descriptor.n_values; i++) {
        int v = mpar__job_state__descriptor.values[i].value;
        if (strcmp(job_state_name((Mpar__JobState)v), name) == 0) {
            return (Mpar__JobState)v;
        }
    }
    return MPAR__JOB_STATE__JOB_STATE_UNSPECIFIED;
}

static uint64_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t)json_integer_value(v) : 0;
}

static char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return mp_strdup(s ? s : "");
}

static void jopt_real(json_t *o, const char *key, protobuf_c_boolean *has_p, double *v_p)
{
    json_t *v = json_object_get(o, key);
    double x;
    if (!json_is_null(v) && mp_json_real_value(v, &x)) {
        *has_p = 1;
        *v_p = x;
    }
}

/* The per-step losses, placement and timeline of a stored job. */
static void load_results(coord_job_t *j, json_t *o)
{
    json_t *a = json_object_get(o, "losses");
    size_t n = json_array_size(a);
    if (n > 0 && (j->losses = mp_calloc(n, sizeof(double))) != NULL) {
        for (size_t i = 0; i < n; i++) {
            j->losses[i] = NAN;
            mp_json_real_value(json_array_get(a, i), &j->losses[i]);
        }
        j->info.losses = j->losses;
        j->info.n_losses = n;
    }
    a = json_object_get(o, "placement");
    n = json_array_size(a);
    if (n > 0) {
        if (coord_job_placement_new(j, n) == NULL) {
            return;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(a, i);
            Mpar__PlacementEntry *p = &j->place[i];
            p->rank = (uint32_t)jint(e, "rank");
            p->stage = (uint32_t)jint(e, "stage");
            p->tp = (uint32_t)jint(e, "tp");
            p->dp = (uint32_t)jint(e, "dp");
            const char *node = json_string_value(json_object_get(e, "node"));
            const char *dev = json_string_value(json_object_get(e, "device"));
            const char *layers = json_string_value(json_object_get(e, "layers"));
            snprintf(p->node, PLACE_NODE_MAX, "%s", node ? node : "");
            snprintf(p->device, PLACE_DEVICE_MAX, "%s", dev ? dev : "");
            snprintf(p->layers, PLACE_LAYERS_MAX, "%s", layers ? layers : "");
        }
    }
    json_t *t = json_object_get(o, "timeline");
    json_t *rows = json_object_get(t, "rows");
    if (!json_is_array(rows) || (j->timeline = mp_calloc(1, sizeof(*j->timeline))) == NULL) {
        return;
    }
    mpar__timeline__init(j->timeline);
    j->timeline->step = jint(t, "step");
    n = json_array_size(rows);
    j->timeline->rows = mp_calloc(n + 1, sizeof(*j->timeline->rows));
    for (size_t r = 0; j->timeline->rows != NULL && r < n; r++) {
        json_t *e = json_array_get(rows, r);
        json_t *spans = json_object_get(e, "spans");
        size_t ns = json_array_size(spans);
        const char *nn = json_string_value(json_object_get(e, "node"));
        Mpar__TimelineRow *row = coord_timeline_row_new(ns, nn ? nn : "");
        if (row == NULL) {
            break;
        }
        row->rank = (uint32_t)jint(e, "rank");
        row->stage = (uint32_t)jint(e, "stage");
        row->tp = (uint32_t)jint(e, "tp");
        row->dp = (uint32_t)jint(e, "dp");
        for (size_t k = 0; k < ns; k++) {
            json_t *x = json_array_get(spans, k);
            Mpar__Span *sp = row->spans[k];
            mp_sched_op_t op = MP_SCHED_FWD;
            coord_op_parse(json_string_value(json_object_get(x, "op")), &op);
            sp->op = (char *)mp_sched_op_name(op);
            sp->mb = (int32_t)json_integer_value(json_object_get(x, "mb"));
            sp->chunk = (int32_t)json_integer_value(json_object_get(x, "chunk"));
            sp->t0_ns = jint(x, "t0_ns");
            sp->t1_ns = jint(x, "t1_ns");
        }
        j->timeline->rows[j->timeline->n_rows++] = row;
    }
    j->info.timeline = j->timeline;
}

/* Reads the state file (main thread, before the loop runs).  A job that was
 * RUNNING resumes from its last committed checkpoint (PENDING until the
 * nodes rejoin); without one it did not survive the restart: it becomes
 * FAILED, never lost. */
static mp_status_t coord_load(mp_coord_t *c, mp_errbuf_t *err)
{
    json_error_t jerr;
    json_t *root = json_load_file(c->state_path, 0, &jerr);
    if (root == NULL) {
        if (access(c->state_path, F_OK) != 0) {
            return MP_OK; /* first start */
        }
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: line %d: %s", c->state_path, jerr.line,
                             jerr.text);
    }
    if (jint(root, "version") != STATE_VERSION) {
        json_decref(root);
        return mp_errbuf_set(err, MP_ERR_FORMAT, "%s: unknown state version", c->state_path);
    }
    c->epoch = jint(root, "epoch");
    c->next_job = jint(root, "next_job");
    if (c->next_job == 0) {
        c->next_job = 1;
    }
    size_t i;
    json_t *o;
    int failed = 0, resumed = 0;
    json_array_foreach(json_object_get(root, "jobs"), i, o)
    {
        const char *id = json_string_value(json_object_get(o, "id"));
        if (id == NULL) {
            continue;
        }
        coord_job_t *j = job_new(c, strtoull(id, NULL, 10));
        if (j == NULL) {
            break;
        }
        j->name = jstr(o, "name");
        j->submitter = jstr(o, "submitter");
        j->reason = jstr(o, "reason");
        j->spec_json = jstr(o, "spec_json");
        j->save_weights = jstr(o, "save_weights");
        j->info.save_weights = j->save_weights ? j->save_weights : "";
        j->resume_dir = jstr(o, "resume_dir");
        j->info.resume_dir = j->resume_dir ? j->resume_dir : "";
        j->info.restarts = (uint32_t)jint(o, "restarts");
        j->info.failures = (uint32_t)jint(o, "failures"); /* 0 in older state files */
        j->info.checkpoint_step = jint(o, "checkpoint_step");
        json_t *rfs = json_object_get(o, "resumed_from_step");
        if (json_is_integer(rfs)) {
            j->info.has_resumed_from_step = 1;
            j->info.resumed_from_step = (uint64_t)json_integer_value(rfs);
        }
        j->info.name = j->name ? j->name : "";
        j->info.submitter = j->submitter ? j->submitter : "";
        j->info.reason = j->reason ? j->reason : "";
        const char *state = json_string_value(json_object_get(o, "state"));
        j->info.state = job_state_parse(state ? state : "");
        j->info.submitted_unix_ms = jint(o, "submitted_unix_ms");
        j->info.started_unix_ms = jint(o, "started_unix_ms");
        j->info.finished_unix_ms = jint(o, "finished_unix_ms");
        j->info.pp = (uint32_t)jint(o, "pp");
        j->info.tp = (uint32_t)jint(o, "tp");
        j->info.dp = (uint32_t)jint(o, "dp");
        j->info.devices_needed = (uint32_t)jint(o, "devices_needed");
        j->info.steps = jint(o, "steps");
        jopt_real(o, "final_loss", &j->info.has_final_loss, &j->info.final_loss);
        jopt_real(o, "test_accuracy", &j->info.has_test_accuracy, &j->info.test_accuracy);
        jopt_real(o, "test_loss", &j->info.has_test_loss, &j->info.test_loss);
        jopt_real(o, "tokens_per_s", &j->info.has_tokens_per_s, &j->info.tokens_per_s);
        jopt_real(o, "bubble_fraction", &j->info.has_bubble_fraction, &j->info.bubble_fraction);
        jopt_real(o, "predicted_bubble", &j->info.has_predicted_bubble,
                  &j->info.predicted_bubble);
        json_t *sps = json_object_get(o, "samples_per_s");
        if (json_is_null(sps) || !mp_json_real_value(sps, &j->info.samples_per_s)) {
            j->info.samples_per_s = 0;
        }
        load_results(j, o);
        size_t k;
        json_t *e;
        json_array_foreach(json_object_get(o, "events"), k, e)
        {
            Mpar__JobEvent *ev = job_event_next(j);
            if (ev == NULL) {
                break;
            }
            ev->unix_ms = jint(e, "unix_ms");
            const char *es = json_string_value(json_object_get(e, "state"));
            ev->state = job_state_parse(es ? es : "");
            ev->message = jstr(e, "message");
            if (ev->message != NULL) {
                j->nevents++;
            }
        }
        if (j->info.state == MPAR__JOB_STATE__JOB_STATE_UNSPECIFIED || j->info.pp == 0 ||
            j->info.tp == 0 || j->info.dp == 0) {
            mp_warn("%s: job %s is unreadable; dropped", c->state_path, j->id);
            job_free(j);
            continue;
        }
        if (strtoull(j->id, NULL, 10) >= c->next_job) {
            c->next_job = strtoull(j->id, NULL, 10) + 1;
        }
        job_append(c, j);
        if (j->info.state == MPAR__JOB_STATE__JOB_STATE_RUNNING && j->info.checkpoint_step > 0) {
            /* Its checkpoint survived: it resumes once the nodes rejoin. */
            char why[200];
            j->info.restarts++;
            snprintf(why, sizeof(why),
                     "coordinator restarted; resuming from the checkpoint at step %llu (restart "
                     "%u, not a failure: max_restarts counts only failures)",
                     (unsigned long long)j->info.checkpoint_step, j->info.restarts);
            coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_PENDING, why);
            resumed++;
        } else if (j->info.state == MPAR__JOB_STATE__JOB_STATE_RUNNING) {
            coord_job_set_state(c, j, MPAR__JOB_STATE__JOB_STATE_FAILED, "coordinator restarted");
            failed++;
        }
    }
    json_decref(root);
    mp_info("loaded %zu jobs from %s%s%s", c->njobs, c->state_path,
            failed ? " (running ones without a checkpoint marked FAILED: coordinator restarted)"
                   : "",
            resumed ? " (running ones with a checkpoint resume)" : "");
    return MP_OK;
}

mp_status_t mp_coord_create(mpard_t *d, mp_coord_t **coord_p)
{
    mp_errbuf_t err;
    mp_coord_t *c = mp_calloc(1, sizeof(*c));
    if (c == NULL) {
        return MP_ERR_NOMEM;
    }
    c->d = d;
    c->next_job = 1;
    snprintf(c->state_path, sizeof(c->state_path), "%s/%s", d->cfg.state_dir, STATE_FILE);
    snprintf(c->tmp_path, sizeof(c->tmp_path), "%s/%s.tmp", d->cfg.state_dir, STATE_FILE);
    mp_status_t st = mp_fs_mkdir_p(d->cfg.state_dir, 0700, &err);
    if (st == MP_OK) {
        /* Loading may mark jobs FAILED; saving waits until the loop runs. */
        c->save_inflight = true;
        st = coord_load(c, &err);
        c->save_inflight = false;
        if (st == MP_ERR_FORMAT) {
            /* Kept for inspection, never silently overwritten; the cluster
             * still starts. */
            char aside[PATH_MAX + 64];
            snprintf(aside, sizeof(aside), "%s.corrupt-%llu", c->state_path,
                     (unsigned long long)mpard_now_ms());
            mp_err("the job state is unreadable (%s); moved to %s, starting with no jobs", err.msg,
                   aside);
            st = rename(c->state_path, aside) == 0 ? MP_OK : MP_ERR_IO;
            if (st != MP_OK) {
                mp_errbuf_set(&err, st, "cannot move %s aside: %s", c->state_path, strerror(errno));
            }
        }
    }
    if (st != MP_OK) {
        mp_err("state dir: %s", err.msg);
        mp_coord_destroy(c);
        return st;
    }
    c->epoch++;
    if (mp_mbox_init(d->loop, &c->mbox, jobrun_on_msg, c) != MP_OK) {
        mp_coord_destroy(c);
        return MP_ERR_NOMEM;
    }
    uv_timer_init(d->loop, &c->sweep_timer);
    c->sweep_timer.data = c;
    c->sweep_open = true;
    sweep_restart(c);
    coord_save(c);
    mp_info("coordinator: epoch %llu, state in %s", (unsigned long long)c->epoch, c->state_path);
    *coord_p = c;
    return MP_OK;
}

void mp_coord_stop(mp_coord_t *c)
{
    if (!c->stopping) {
        c->stopping = true;
        jobrun_stop_all(c);
        if (c->nthreads == 0) {
            mp_mbox_close(&c->mbox); /* else after the last one exits (coord_run.c) */
        }
    }
    if (c->sweep_open) {
        c->sweep_open = false;
        uv_close((uv_handle_t *)&c->sweep_timer, NULL);
    }
}

int mp_coord_threads_left(const mp_coord_t *c)
{
    return c->nthreads;
}

void mp_coord_save_now(mp_coord_t *c)
{
    json_t *root = coord_snapshot(c);
    int e = root != NULL ? save_state(c, root) : ENOMEM;
    if (e != 0) {
        mp_err("cannot save the job state to %s: %s", c->state_path, strerror(e));
    }
    json_decref(root);
}

void mp_coord_destroy(mp_coord_t *c)
{
    if (c == NULL) {
        return;
    }
    jobrun_join_all(c);
    if (c->save_dirty) {
        json_t *root = coord_snapshot(c);
        int e = root != NULL ? save_state(c, root) : ENOMEM;
        if (e != 0) {
            mp_err("cannot save the job state to %s: %s", c->state_path, strerror(e));
        }
        json_decref(root);
    }
    while (c->jobs != NULL) {
        coord_job_t *j = c->jobs;
        c->jobs = j->next;
        job_free(j);
    }
    while (c->nodes != NULL) {
        mp_coord_node_t *n = c->nodes;
        c->nodes = n->next;
        mp_free(n->devs);
        mp_free(n->devp);
        mp_free(n);
    }
    mp_free(c);
}
