/*
 * coord_internal.h - the coordinator's records, shared by coord.c
 * (membership, queue, persistence) and coord_run.c (running jobs on the
 * data plane).  libuv thread, like everything of the coordinator.
 */
#ifndef MP_DAEMON_COORD_INTERNAL_H
#define MP_DAEMON_COORD_INTERNAL_H

#include <jansson.h>
#include <sys/types.h>

#include "daemon/coord.h"
#include "daemon/mbox.h"
#include "parallel/placement.h"
#include "parallel/sched.h"

#define EVENTS_MAX 1000
#define JOBS_MAX 2000 /* finished jobs beyond this are forgotten, oldest first */
#define STATE_FILE "jobs.json"
#define STATE_VERSION 1
#define RESULTS_KEPT 64 /* newest jobs whose losses and timeline are stored */

struct mp_coord_node {
    Mpar__NodeInfo info;
    Mpar__Device *devs;
    Mpar__Device **devp;
    char name[64];
    char address[80];
    mp_link_t *session;               /* its connection, while it has one */
    uint64_t last_hb_mono;            /* uv_now of the last heartbeat or registration */
    bool busy[MP_DAEMON_MAX_DEVICES]; /* held by a running job */
    mp_coord_node_t *next;
};

typedef struct {
    mp_link_t *s;
    uint64_t request_id;
} watcher_t;

typedef struct jobrun jobrun_t;

/* The latest state of one rank of a running job, from its node's heartbeat
 * (coord_waits.c). */
typedef struct {
    bool have;
    char phase[8], op[16], wait[16];
    int32_t mb, peer;
    uint64_t step;
    uint64_t age_ms; /* of the state when its node sampled it */
    uint64_t got_ms; /* uv_now when the heartbeat came */
} coord_probe_t;

typedef struct coord_job {
    Mpar__JobInfo info;
    char id[24];
    char *name;
    char *reason;
    char *submitter;
    char *spec_json;
    char *save_weights;
    char *resume_dir; /* --resume folder, or "" */
    /* Checkpoint commits run one at a time on the thread pool: the one in
     * flight, and the newest step ready after it (0: none). */
    bool ck_inflight;
    int64_t ck_queued;
    Mpar__JobEvent *events;
    size_t nevents, cap_events;
    watcher_t *watchers;
    size_t nwatchers, cap_watchers;
    /* The results: info.losses, info.placement, info.timeline point here. */
    double *losses;
    Mpar__PlacementEntry *place;
    Mpar__PlacementEntry **placep;
    Mpar__Timeline *timeline;
    jobrun_t *run; /* while it runs on the data plane (and its threads end) */
    coord_probe_t *probes; /* [info.n_placement] while it runs, from heartbeats */
    /* Its entry of the state file once it has ended, kept so that a save
     * rebuilds only the jobs that can still change; never modified, only
     * replaced, since a save in flight dumps it on the thread pool. */
    json_t *saved;
    size_t saved_nevents;
    bool saved_results;
    struct coord_job *next;
} coord_job_t;

typedef struct {
    uv_work_t req;
    mp_coord_t *c;
    json_t *root; /* the state, dumped and written on the thread pool */
    int err;      /* errno of the write, 0 = ok */
} save_req_t;

struct mp_coord {
    mpard_t *d;
    uint64_t epoch;
    uint64_t next_job;
    mp_coord_node_t *nodes;
    size_t nnodes;
    coord_job_t *jobs, *jobs_tail;
    size_t njobs;
    uv_timer_t sweep_timer;
    bool sweep_open;
    uint64_t last_sweep_mono;   /* uv_now of the last sweep, 0 before the first */
    uint64_t loop_late_ms;      /* how late a recent sweep ran (0: on time lately) */
    uint64_t loop_late_at;
    bool sweep_deferred;        /* the last sweep was late and judged nobody */
    char state_path[PATH_MAX + 32];
    char tmp_path[PATH_MAX + 40];
    bool save_inflight, save_dirty;
    mp_mbox_t mbox; /* from the feeder threads */
    jobrun_t *old_runs; /* runs of restarted jobs whose threads still end */
    int nthreads;   /* feeder threads not yet joined */
    bool stopping;
};

/* A placement entry's strings, stored after the entries. */
#define PLACE_NODE_MAX 64
#define PLACE_DEVICE_MAX 32
#define PLACE_LAYERS_MAX 96

/* coord.c */
bool coord_job_terminal(Mpar__JobState s);
void coord_job_set_state(mp_coord_t *c, coord_job_t *j, Mpar__JobState state, const char *reason);
/* An event with a step and loss (has_step/has_loss when step > 0 / given). */
void coord_job_add_event(mp_coord_t *c, coord_job_t *j, const char *message, uint64_t step,
                         bool has_loss, double loss);
void coord_job_results_free(coord_job_t *j);
/* j's n placement entries, initialized, in one block with their node and
 * device and layers strings (PLACE_NODE_MAX, PLACE_DEVICE_MAX,
 * PLACE_LAYERS_MAX bytes), already in
 * j->info; the caller fills them in.  NULL when out of memory. */
Mpar__PlacementEntry *coord_job_placement_new(coord_job_t *j, size_t n);
/* A timeline row of ns initialized spans (row->spans[k]) and the node's
 * name, in one block that coord_job_results_free frees; the caller sets
 * the row's coordinates and the spans.  NULL when out of memory. */
Mpar__TimelineRow *coord_timeline_row_new(size_t ns, const char *node);
/* The schedule op named name, as in a ShardReport or the state file. */
bool coord_op_parse(const char *name, mp_sched_op_t *op_p);
void coord_save(mp_coord_t *c);
void coord_reschedule(mp_coord_t *c);
coord_job_t *coord_job_by_id(mp_coord_t *c, const char *id);

/* coord_waits.c: a heartbeat's shard states into their jobs' records. */
void coord_waits_heartbeat(mp_coord_t *c, mp_coord_node_t *n, const Mpar__Heartbeat *hb);

/* coord_run.c */

/* Starts j on the placement (takes it): RUNNING, feeder thread, assignments. */
void jobrun_start(mp_coord_t *c, coord_job_t *j, mp_place_t *place, mp_coord_node_t **nodes);
/* Stops j's shards and feeder (cancel, node loss, failure); the state is the caller's. */
void jobrun_abort(mp_coord_t *c, coord_job_t *j, const char *reason);
/* A node of running jobs is gone (DEAD, LEFT, or its connection lost). */
void jobrun_node_lost(mp_coord_t *c, mp_coord_node_t *n, const char *why);
/* A job reached a terminal state: its devices are free again. */
void jobrun_release(mp_coord_t *c, coord_job_t *j);
/* Mailbox callback. */
void jobrun_on_msg(void *owner, mp_mbox_msg_t *msg);
/* Shutdown: fails every run and returns; the feeder threads are joined as
 * their EXITED arrives. */
void jobrun_stop_all(mp_coord_t *c);
/* After the loop: joins any feeder thread still there (none, normally) and
 * frees what is left of the runs and their messages. */
void jobrun_join_all(mp_coord_t *c);

#endif
