/*
 * sched.h - pipeline schedules as data, and the simulator that checks them.
 * A schedule is, for each of p stages, the list of actions that stage's
 * shard executor runs for one optimizer step over m micro-batches.  Pure
 * data and functions, no I/O; any thread.
 *
 * Schedules (DESIGN.md "PP"), one file each in parallel/sched/ behind the
 * table of sched_gen.h:
 *  - naive: one micro-batch (m = 1) through all stages forward, then all
 *    backward; one stage works at a time (the seed's first figure).
 *  - gpipe: every stage runs the forwards of all m micro-batches, then
 *    their backwards in reverse order (the seed's second figure).
 *  - 1f1b (PipeDream-flush, Megatron's default): stage s runs
 *    min(p - s - 1, m) warm-up forwards, then alternates one forward and
 *    one backward, then the remaining backwards; at most min(p - s, m)
 *    activations are held at once instead of m.
 *  - zero_bubble (ZB-H1, Qi et al. 2023): every backward is two actions, B
 *    (BWD: the input gradient, which the previous stage waits for) and W
 *    (BWD_W: the weight gradients, which nobody waits for).  The lists come
 *    from a list scheduler run at unit costs (F = B = W): a free stage runs
 *    the next forward when its input is there, it holds fewer than
 *    min(p - s, m) micro-batches between forward and B (1F1B's rule) and
 *    fewer than min(p, m) between forward and W (1F1B's peak: the memory
 *    limit); else the next B when its gradient is there; else the oldest
 *    deferred W.  At unit costs with m >= p its bubble is the paper's
 *    (p - 1) / (3m + p - 1), a third of 1F1B's bubble time.
 *  - interleaved_1f1b (Narayanan et al. 2021, Megatron's virtual pipeline):
 *    v chunks per stage (see "Chunks" below), m a multiple of p.  Stage s
 *    runs the chunk-forwards in Megatron's order (micro-batches in groups
 *    of p, chunk 0 of a group, then chunk 1, ...; backwards the same with
 *    the chunks from the last), (p - s - 1) + (v - 1) p of them as warm-up,
 *    then one forward and one backward in turn, then the remaining
 *    backwards.  Bubble (p - 1) / (v m + p - 1) at unit chunk costs: the
 *    paper's (p - 1) / (v m) of the ideal time, 1F1B's divided by v.
 * Every list ends with DP_ALLREDUCE (gradients across data-parallel
 * replicas; a no-op at dp = 1) and OPT_STEP.  The last stage's FWD and BWD
 * include the loss.
 *
 * Semantics the engine must keep, and the simulator assumes: sends are
 * buffered (posted non-blocking, they never wait for the receiver) and
 * receives block until the matching message, identified by its kind and
 * micro-batch, has arrived, whatever the arrival order.
 */
#ifndef MP_PARALLEL_SCHED_H
#define MP_PARALLEL_SCHED_H

#include <stddef.h>

#include "common/status.h"
#include "model/spec.h"

#define MP_SCHED_MAX_STAGES MP_SPEC_MAX_STAGES
#define MP_SCHED_MAX_MICRO 4096

typedef enum {
    MP_SCHED_RECV_ACT = 0, /* activation of mb from stage s-1 */
    MP_SCHED_FWD,          /* forward of mb (and the loss on the last stage) */
    MP_SCHED_SEND_ACT,     /* activation of mb to stage s+1 */
    MP_SCHED_RECV_GRAD,    /* gradient of mb from stage s+1 */
    MP_SCHED_BWD,          /* backward of mb; parameter gradients accumulate */
    MP_SCHED_SEND_GRAD,    /* gradient of mb's input to stage s-1 */
    MP_SCHED_DP_ALLREDUCE, /* gradients across DP replicas (mb = -1) */
    MP_SCHED_OPT_STEP,     /* one optimizer step (mb = -1) */
    MP_SCHED_BWD_W,        /* zero_bubble: weight gradients of mb, after its BWD (then B only) */
} mp_sched_op_t;
#define MP_SCHED_OP_LAST MP_SCHED_BWD_W

typedef struct {
    mp_sched_op_t op;
    int mb;    /* micro-batch, or -1 */
    int chunk; /* the stage's model chunk (interleaved_1f1b), else 0 */
    /* BWD_W under parallel.fuse_w (mp_sched_fuse_w): 0 for a W that waits
     * to run with the adjacent W's after it, n >= 1 for the last W of a run
     * of n that runs as one (one GEMM per weight).  1 for every other action. */
    int fuse;
} mp_sched_action_t;

/*
 * Chunks (interleaved_1f1b): with v chunks per stage the model is cut into
 * p * v virtual stages, and stage s holds chunks c = 0..v-1, virtual stage
 * c * p + s (Megatron's virtual pipeline: stage s holds virtual stages s,
 * s + p, s + 2p, ...).  Virtual stage u sends its activations to u + 1 and
 * its input gradients to u - 1, so stage p - 1's chunk c feeds stage 0's
 * chunk c + 1.  Every other schedule has v = 1: virtual stage = stage.
 */
typedef struct {
    mp_sched_kind_t kind;
    int nstages; /* p */
    int nmicro;  /* m */
    int nchunks; /* v, chunks per stage (1 but for interleaved_1f1b) */
    int count[MP_SCHED_MAX_STAGES];
    int cap[MP_SCHED_MAX_STAGES];
    mp_sched_action_t *action[MP_SCHED_MAX_STAGES]; /* [count[s]] each */
} mp_sched_t;

/*
 * Builds the schedule of `kind` for p stages, m micro-batches and v chunks
 * per stage.  Refuses (MP_ERR_SPEC) p outside 1..MP_SCHED_MAX_STAGES, m
 * outside 1..MP_SCHED_MAX_MICRO, p * v above MP_SCHED_MAX_STAGES, and what
 * the kind cannot run (naive: m != 1; v != 1 but for interleaved_1f1b;
 * interleaved_1f1b: m not a multiple of p).  At v = 1 interleaved_1f1b is
 * 1f1b.  Free with mp_sched_free.
 */
mp_status_t mp_sched_build(mp_sched_kind_t kind, int p, int m, int v, mp_sched_t **sched_p,
                           mp_errbuf_t *err);
/* The schedule names in kind order (parallel.schedule's values); returns
 * how many. */
int mp_sched_kind_names(const char *const **names_p);
/* Whether kind's backward is B then W actions (parallel.fuse_w applies). */
bool mp_sched_kind_splits(mp_sched_kind_t kind);
/* Refuses (MP_ERR_SPEC, naming the spec's fields) p stages and m
 * micro-batches that `kind` cannot run; mp_sched_build checks the same. */
mp_status_t mp_sched_check(mp_sched_kind_t kind, int p, int m, int v, mp_errbuf_t *err);
/* The bubble of `kind` at unit costs, by the formula of its paper (the
 * simulator's result at F = B (= W), test_sched). */
double mp_sched_bubble_predicted(mp_sched_kind_t kind, int p, int m, int v);

/*
 * parallel.fuse_w = k > 1 on a split schedule (mp_sched_kind_splits): each
 * chunk's W's, in their order, run k at a time: a W waits until k of its
 * chunk wait (or the stage reaches DP_ALLREDUCE), and then the waiting W's
 * stand together where the k-th was, the last carrying their count
 * (mp_sched_action_t.fuse).  Every other action keeps its place, so a
 * stage holds at most k - 1 more activation slots (mp_sched_slots) and the
 * simulator sees the W's where they run.  k <= 1 leaves the schedule as it
 * is; MP_ERR_SPEC when the schedule has no W's to group.
 */
mp_status_t mp_sched_fuse_w(mp_sched_t *sched, int k, mp_errbuf_t *err);
/* mp_sched_build of the spec's schedule, micro-batches and parallel.fuse_w
 * (mp_sched_fuse_w) at p stages and v chunks per stage: the lists a job runs. */
mp_status_t mp_sched_build_for(const mp_spec_t *spec, int p, int v, mp_sched_t **sched_p,
                               mp_errbuf_t *err);
/* Whether stage's backward is B then W (its list has BWD_W actions). */
bool mp_sched_stage_splits(const mp_sched_t *sched, int stage);
/* The activation slots chunk `chunk` of `stage` needs: the most
 * micro-batches between their slot being taken (the receive of the input,
 * or the forward on the first virtual stage) and their backward's end (its
 * W's run when split), walking the list; at least 1. */
int mp_sched_slots(const mp_sched_t *sched, int stage, int chunk);

/* An empty schedule (v = 1), for building one action by action (tests, new kinds). */
mp_status_t mp_sched_new(mp_sched_kind_t kind, int p, int m, mp_sched_t **sched_p);
mp_status_t mp_sched_push(mp_sched_t *sched, int stage, mp_sched_op_t op, int mb);
/* The same for chunk `chunk` of the stage (0 .. nchunks - 1). */
mp_status_t mp_sched_push_chunk(mp_sched_t *sched, int stage, int chunk, mp_sched_op_t op, int mb);
/* Removes action `index` of `stage` (tests break schedules with it). */
mp_status_t mp_sched_remove(mp_sched_t *sched, int stage, int index);
void mp_sched_free(mp_sched_t *sched);

/* Costs of the actions, in any time unit. */
typedef struct {
    double fwd, bwd; /* one micro-batch through one stage (bwd: the whole backward) */
    /* The share of bwd that is W where a schedule splits the backward
     * (BWD then costs the rest); 0 = one half. */
    double w_frac;
    double comm;      /* send -> arrival of one activation or gradient */
    double allreduce; /* DP_ALLREDUCE */
    double opt;       /* OPT_STEP */
    /* NULL, or per-stage fwd/bwd costs replacing fwd/bwd (unbalanced
     * stages), indexed by virtual stage c * p + s (v = 1: the stage). */
    const double *stage_fwd, *stage_bwd;
    /* NULL, or the time of every action, action[s][i] for action i of
     * stage s, replacing the costs above for FWD, BWD, BWD_W, DP_ALLREDUCE
     * and OPT_STEP (messages still take comm): a replay of one measured
     * step's action times. */
    const double *const *action;
} mp_sched_cost_t;

typedef struct {
    double busy;       /* time in FWD, BWD, DP_ALLREDUCE and OPT_STEP */
    double idle;       /* makespan - busy: waiting, and done before the others */
    double end;        /* when its last action ended */
    int peak_inflight; /* most forwards done whose backward (BWD_W when split) has not run
                        * (of any chunk: a chunk's activations are those of its layers) */
} mp_sched_stage_report_t;

typedef struct {
    int nstages;
    double makespan; /* when the last stage ended; the step's time */
    double bubble;   /* mean over stages of idle / makespan (0 when makespan is 0) */
    mp_sched_stage_report_t stage[MP_SCHED_MAX_STAGES];
} mp_sched_report_t;

/*
 * Checks `sched` and runs it on the costs.  Checks, each refusal
 * (MP_ERR_STATE) naming the stage: every stage runs FWD and BWD of every
 * micro-batch exactly once in each of its chunks; the first virtual stage
 * never receives activations nor sends gradients and the last never sends
 * activations nor receives gradients; every other one receives and sends
 * each once per micro-batch, so every send has its receive; per chunk, FWD(mb) comes after
 * RECV_ACT(mb), SEND_ACT(mb) after FWD(mb), BWD(mb) after FWD(mb) and
 * RECV_GRAD(mb), SEND_GRAD(mb) after BWD(mb); BWD_W for no micro-batch or
 * for every one, each after its BWD; DP_ALLREDUCE then OPT_STEP
 * end the list once each; and the stages run together without deadlock
 * (the message says which stage waits for what).  `cost` NULL means unit
 * fwd and bwd (W half of bwd), zero everything else.  report_p may be NULL.
 */
mp_status_t mp_sched_simulate(const mp_sched_t *sched, const mp_sched_cost_t *cost,
                              mp_sched_report_t *report_p, mp_errbuf_t *err);

/* (p - 1) / (m + p - 1): the bubble of gpipe and 1f1b at equal unit costs. */
double mp_sched_bubble_theory(int p, int m);
/* (p - 1) / (3m + p - 1): zero_bubble's at F = B = W (m >= p), from ZB-H1's
 * bubble time (p - 1)(F + B - W). */
double mp_sched_bubble_theory_zb(int p, int m);
/* (p - 1) / (v m + p - 1): interleaved_1f1b's at F = B, v chunks per stage
 * (Megatron's (p - 1) / (v m) of the ideal time; m a multiple of p). */
double mp_sched_bubble_theory_interleaved(int p, int m, int v);

/*
 * Writes the schedule as text, one line per stage, e.g.
 * "stage 1: rA0 F0 sA0 rA1 F1 sA1 rG1 B1 sG1 rG0 B0 sG0 AR OPT" (rA/sA:
 * receive/send activation, rG/sG: receive/send gradient, F/B: forward and
 * backward (B the input gradient under zero_bubble), W: weight gradient,
 * AR: DP allreduce, OPT: optimizer step, numbers are
 * micro-batches; with v > 1 chunks, "F3.1" is micro-batch 3 of chunk 1).  Like snprintf: returns
 * the length of the whole text and writes at most len bytes, NUL-terminated when len > 0.
 */
size_t mp_sched_format(const mp_sched_t *sched, char *buf, size_t len);
const char *mp_sched_op_name(mp_sched_op_t op);

#endif
