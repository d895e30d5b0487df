/*
 * ckpt.h - checkpoints on disk (DESIGN.md "Checkpoints and restarts").
 *
 * Layout of a checkpoint folder DIR (storage that every node sees):
 *   DIR/latest                    "step-00000100\n": the committed checkpoint
 *   DIR/step-00000100/            one folder per checkpoint
 *     shard-s00-t00.safetensors   stage 0, TP rank 0 (DP replica 0 writes)
 *     ...
 *     manifest.json               written once every shard file is durable
 *
 * A shard file holds its block of every parameter of its stage (of all its
 * chunks, under interleaved_1f1b), named as
 * --save-weights names them ("0.weight", "2.fc1.bias"), and the optimizer
 * state of each block ("0.weight.exp_avg", "0.weight.exp_avg_sq" for AdamW,
 * "0.weight.momentum_buffer" for SGD with momentum), each a 2-D [rows,
 * cols] block; its __metadata__ says where each block sits in the full
 * tensor ("row0,col0,full_rows,full_cols").  A block in parts (a
 * transformer block's qkv: a rank's heads' columns of Q, K and V) is one
 * rectangle per piece, "<tensor>@<k>".  A parameter that every TP rank
 * holds whole is written by TP rank 0 only.
 *
 * manifest.json: {"format": "mpar-checkpoint", "version": 1, "step": S,
 * "spec": {the job spec}, "grid": {"pp", "tp", "dp"}, "files": [...],
 * "losses": [per-step loss of steps 1..S], "tensors": {name: {"shape":
 * [rows, cols], "blocks": [{"file", "tensor", "row0", "col0", "rows",
 * "cols"}]}}} ("tensor": the block's name in its file).
 * It is built from the shard files' own headers, so it names only what is
 * on disk, and it is refused unless the blocks cover every tensor.
 *
 * Commit: DIR/latest is replaced atomically (a temporary file, fsync,
 * rename, fsync of DIR), so a crash at any moment leaves latest naming a
 * complete checkpoint; older checkpoints beyond `keep` are removed only
 * after that.  Reading is strict: a missing or damaged file is refused with
 * a message naming it.  Everything here is blocking file I/O: shard
 * threads, the coordinator's thread pool, the client; never a loop thread.
 */
#ifndef MP_MODEL_CKPT_H
#define MP_MODEL_CKPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"
#include "model/model.h"
#include "model/spec.h"

#define MP_CKPT_LATEST "latest"
#define MP_CKPT_MANIFEST "manifest.json"

/* DIR/step-%08lld and the shard file name within it. */
void mp_ckpt_step_dir(const char *dir, int64_t step, char *out, size_t cap);
void mp_ckpt_shard_name(int stage, int tp_rank, char *out, size_t cap);
/* The optimizer state names of spec's optimizer: which 0 and 1 as in
 * mp_model_state_download ("exp_avg", "exp_avg_sq"; "momentum_buffer");
 * NULL when it keeps no such state. */
const char *mp_ckpt_state_name(const mp_spec_t *spec, int which);

/* ---- a shard's host copy, written by a writer thread ------------------- */

typedef struct mp_ckpt_snap mp_ckpt_snap_t;

/* Host buffers for the blocks of models[0..nmodels) (TP rank tp_rank of
 * spec; a stage's chunks under interleaved_1f1b, all in the stage's one
 * file) that this shard writes: every parameter and its optimizer state. */
mp_status_t mp_ckpt_snap_create(mp_model_t *const *models, int nmodels, const mp_spec_t *spec,
                                int stage, int tp_rank, mp_ckpt_snap_t **snap_p);
/* Copies the models' current parameters and state into the buffers (the
 * only part that stops training), tagged with step; the same models, in
 * the same order, as mp_ckpt_snap_create's. */
mp_status_t mp_ckpt_snap_fill(mp_ckpt_snap_t *snap, mp_model_t *const *models, int nmodels,
                              int64_t step);
int64_t mp_ckpt_snap_step(const mp_ckpt_snap_t *snap);
int64_t mp_ckpt_snap_bytes(const mp_ckpt_snap_t *snap);
/* Writes DIR/step-S/shard-sSS-tTT.safetensors (the folder made if needed),
 * durable when it returns MP_OK; path_p (may be NULL) gets the file. */
mp_status_t mp_ckpt_snap_write(const mp_ckpt_snap_t *snap, const char *dir, char *path_p,
                               size_t cap, mp_errbuf_t *err);
void mp_ckpt_snap_free(mp_ckpt_snap_t *snap);

/* ---- the coordinator's commit ------------------------------------------- */

/* Builds and writes DIR/step-S/manifest.json (durably) from the pp * tp
 * shard files of that folder; spec_json is the job's spec text, losses
 * the loss of each step 1..S (nlosses may be 0). */
mp_status_t mp_ckpt_manifest_write(const char *dir, int64_t step, const char *spec_json, int pp,
                                   int tp, int dp, const double *losses, int64_t nlosses,
                                   mp_errbuf_t *err);
/* Points DIR/latest at step S atomically and durably. */
mp_status_t mp_ckpt_commit(const char *dir, int64_t step, mp_errbuf_t *err);
/* Removes the step folders older than the `keep` newest up to the
 * committed step (folders after it are in flight and stay). */
mp_status_t mp_ckpt_prune(const char *dir, int64_t committed, int keep, mp_errbuf_t *err);

/* Fault injection for the tests of crashes: MPAR_FAULT=POINT[:N] kills
 * this process (SIGKILL, no cleanup) the N-th time (default 1) it passes
 * POINT ("after_first_file", "before_manifest", "before_latest"). */
void mp_ckpt_fault(const char *point);

/* ---- reading ------------------------------------------------------------ */

typedef struct mp_ckpt mp_ckpt_t;

/* Opens the checkpoint DIR/latest names, validating the manifest and every
 * file it lists.  MP_ERR_NOTFOUND when DIR has no latest (no checkpoint
 * was committed). */
mp_status_t mp_ckpt_open(const char *dir, mp_ckpt_t **ck_p, mp_errbuf_t *err);
/* The checkpoint of step `step` in DIR, committed or not (what a resumed
 * shard loads: the one the coordinator read `latest` for). */
mp_status_t mp_ckpt_open_step(const char *dir, int64_t step, mp_ckpt_t **ck_p, mp_errbuf_t *err);
int64_t mp_ckpt_step(const mp_ckpt_t *ck);
/* The step folder, the spec (parsed) and its text, the stored losses. */
const char *mp_ckpt_folder(const mp_ckpt_t *ck);
const mp_spec_t *mp_ckpt_spec(const mp_ckpt_t *ck);
const double *mp_ckpt_losses(const mp_ckpt_t *ck, int64_t *n_p);
void mp_ckpt_grid(const mp_ckpt_t *ck, int *pp_p, int *tp_p, int *dp_p);
/* MP_ERR_SPEC unless spec's model is the checkpoint's, naming the first
 * field that differs ("model.layers[2].ffn: 1024, the checkpoint has 2048"). */
mp_status_t mp_ckpt_check_spec(const mp_ckpt_t *ck, const mp_spec_t *spec, mp_errbuf_t *err);
/* Whether the checkpoint holds tensor name. */
bool mp_ckpt_has(const mp_ckpt_t *ck, const char *name);
/* Reads block [row0, row0+rows) x [col0, col0+cols) of tensor name from
 * whichever files overlap it (a reshard), row-major into dst. */
mp_status_t mp_ckpt_read_block(mp_ckpt_t *ck, const char *name, int64_t row0, int64_t rows,
                               int64_t col0, int64_t cols, float *dst, mp_errbuf_t *err);
/* Loads model's blocks (parameters, and the optimizer state of spec's
 * optimizer when the checkpoint has it) from the checkpoint. */
mp_status_t mp_ckpt_load_model(mp_ckpt_t *ck, mp_model_t *model, const mp_spec_t *spec,
                               mp_errbuf_t *err);
/* Writes the full tensors as OUT/<layer>.<param>.npy ("npy") or one
 * OUT/model.safetensors ("safetensors"), named and shaped as
 * --save-weights writes them (a bias 1-D). */
mp_status_t mp_ckpt_export(mp_ckpt_t *ck, const char *out_dir, const char *format,
                           mp_errbuf_t *err);
void mp_ckpt_close(mp_ckpt_t *ck);

#endif
