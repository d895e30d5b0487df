/*
 * coord.h - the coordinator role (coord.c, coord_run.c, coord_waits.c):
 * membership, the job queue and its persistence, running jobs on the data
 * plane, their wait-for graphs.  It reaches nodes and watchers through
 * links (link.h).  libuv thread.
 */
#ifndef MP_DAEMON_COORD_H
#define MP_DAEMON_COORD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"
#include "daemon/ctx.h"
#include "daemon/link.h"
#include "proto/mpar.pb-c.h"

mp_status_t mp_coord_create(mpard_t *d, mp_coord_t **coord_p);
/* Shutdown: closes its timers, fails the running jobs; the feeder threads
 * are joined as they exit, and the mailbox closes after the last one. */
void mp_coord_stop(mp_coord_t *c);
void mp_coord_destroy(mp_coord_t *c); /* after the loop ended: final save */
/* Feeder threads of the coordinator that have not ended. */
int mp_coord_threads_left(const mp_coord_t *c);
/* Writes the state file now, blocking (a stop that cannot wait any more). */
void mp_coord_save_now(mp_coord_t *c);
void mp_coord_apply_config(mp_coord_t *c);
uint64_t mp_coord_epoch(const mp_coord_t *c);
/* Membership. */
mp_status_t mp_coord_node_register(mp_coord_t *c, mp_link_t *s, const Mpar__RegisterNode *r,
                                   const char *address, mp_coord_node_t **node_p, mp_errbuf_t *err);
void mp_coord_node_heartbeat(mp_coord_t *c, mp_coord_node_t *n, const Mpar__Heartbeat *hb);
void mp_coord_node_goodbye(mp_coord_t *c, mp_coord_node_t *n, const char *reason);
void mp_coord_node_disconnected(mp_coord_t *c, mp_coord_node_t *n, mp_link_t *s);
void mp_coord_link_closed(mp_coord_t *c, mp_link_t *s);
/* Views: pointers into the coordinator's own records, valid until the loop
 * runs again.  Free the returned arrays with mp_free. */
Mpar__NodeInfo **mp_coord_nodes(mp_coord_t *c, size_t *n_p);
Mpar__JobInfo **mp_coord_jobs(mp_coord_t *c, size_t *n_p);
Mpar__JobInfo *mp_coord_job_find(mp_coord_t *c, const char *id);
/* Counts by state, for status and metrics. */
void mp_coord_counts(mp_coord_t *c, int nodes_by_state[5], int jobs_by_state[6]);
/* Jobs.  submit: MP_ERR_SPEC with the spec's message in err (or a
 * save_weights directory that is not absolute; NULL or "" for none). */
mp_status_t mp_coord_job_submit(mp_coord_t *c, const char *spec_json, size_t len,
                                const char *submitter, const char *save_weights,
                                const char *resume_dir, Mpar__JobInfo **job_p, mp_errbuf_t *err);
/* MP_ERR_NOTFOUND, or MP_ERR_STATE when already finished. */
mp_status_t mp_coord_job_cancel(mp_coord_t *c, const char *id, const char *who,
                                Mpar__JobInfo **job_p, mp_errbuf_t *err);
/* Sends the job's events so far to s (as JobEvents with request_id), and
 * when follow is set keeps s as a watcher until the job ends. */
mp_status_t mp_coord_job_watch(mp_coord_t *c, const char *id, bool follow, mp_link_t *s,
                               uint64_t request_id, mp_errbuf_t *err);
/* The JSON form of a job's events (status socket "job" command). */
json_t *mp_coord_job_events_json(mp_coord_t *c, const char *id);
/* The live wait-for graph of job id (coord_waits.c): MP_ERR_NOTFOUND, else
 * a graph (empty unless the job runs); free with mp_coord_waits_free. */
mp_status_t mp_coord_waits(mp_coord_t *c, const char *id, Mpar__WaitGraph **graph_p,
                           mp_errbuf_t *err);
void mp_coord_waits_free(Mpar__WaitGraph *g);
/* The data plane's wire-up and results, from a node (coord_run.c). */
void mp_coord_shard_ready(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReady *r);
void mp_coord_shard_report(mp_coord_t *c, mp_coord_node_t *n, const Mpar__ShardReport *r);

#endif
