/*
 * train.h - the serial trainer: one process, one device, the whole model.
 * This is the ground truth every parallel run is compared with.  It runs on
 * the calling thread and blocks (file I/O, compute): never a libuv thread.
 */
#ifndef MP_MODEL_TRAIN_H
#define MP_MODEL_TRAIN_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "gpu/backend.h"
#include "model/data.h"
#include "model/spec.h"

typedef struct {
    int64_t epoch, epochs;   /* 1-based epoch */
    int64_t step, steps;     /* 1-based global step, total steps */
    int64_t step_in_epoch, steps_per_epoch;
    double loss;             /* this step's mean training loss */
    double samples_per_s;    /* since the start of training */
    double tokens_per_s;     /* samples_per_s * model.seq (text: positions trained) */
    bool eval;               /* an end-of-epoch evaluation: test_* are set */
    double test_loss, test_accuracy;
} mp_train_progress_t;

typedef void (*mp_train_progress_cb_t)(const mp_train_progress_t *progress, void *arg);

typedef struct {
    const char *device;       /* "cpu", "cuda" or "auto" (cuda when a GPU is present) */
    int threads;              /* CPU backend threads, >= 1 */
    bool tf32;                /* CUDA: allow TF32 GEMMs */
    const char *save_weights; /* directory for <layer>.<param>.npy, or NULL */
    /* Checkpoints (the spec's "checkpoint", DESIGN.md "Checkpoints and
     * restarts"): a serial run writes the layout a cluster run writes, on a
     * grid of one (shard-s00-t00), so that either resumes from the other.
     * resume: continue from the checkpoint resume/latest names, or NULL.
     * spec_text: the spec as manifest.json keeps it (its checkpoint.dir
     * absolute, as the client makes it); the run writes the spec's
     * checkpoints only when it is given (NULL: it writes none). */
    const char *resume;
    const char *spec_text;
    mp_train_progress_cb_t on_progress;
    void *arg;
} mp_train_opts_t;

typedef struct {
    int64_t steps, epochs_done, samples;
    double final_loss;      /* mean loss of the last step (per position) */
    bool has_test;
    double test_loss, test_accuracy; /* after the last evaluation (per position: next-token
                                        accuracy for text) */
    double seconds, samples_per_s;   /* training time only (evaluation excluded) */
    double tokens_per_s;             /* samples_per_s * model.seq */
    char device[32];
    double *losses;         /* [steps] per-step mean training loss (mp_malloc'ed) */
    double *epoch_test_accuracy; /* [epochs_done] when has_test (NaN: before a resume) */
    int64_t resumed_from_step;   /* the checkpoint's step (opts.resume), else 0 */
    int64_t checkpoints;         /* checkpoints this run committed */
    int64_t checkpoint_failures; /* and those whose write failed (a warning each) */
} mp_train_result_t;

/* The checks of the spec's data that need the file system, cheap enough to
 * make before a job starts, reading no data: data.path is a regular file
 * (text) or a folder (fashion-mnist), never a FIFO, socket or device whose
 * open() would block; a text holds a window in both splits; the IDX
 * headers agree with each other and with model.input; the kjv program is
 * installed; and train.batch_size is not larger than the training samples
 * (all but kjv's, known once it has printed).  MP_ERR_SPEC with a message
 * naming the field and the file.  Blocking: not on a loop thread. */
mp_status_t mp_train_check_data(const mp_spec_t *spec, mp_errbuf_t *err);
/* Loads the spec's data sets (train and, where there is one, test). */
mp_status_t mp_train_load_data(const mp_spec_t *spec, mp_dataset_t *train, mp_dataset_t *test,
                               mp_errbuf_t *err);
/* Steps per epoch: whole global batches (the last partial batch is dropped,
 * as DataLoader(drop_last=True) does). */
int64_t mp_train_steps_per_epoch(const mp_spec_t *spec, int64_t train_samples);
/* "NaN", "+Inf" or "-Inf": how a non-finite loss is named in the reason
 * that FAILs its job ("loss is NaN at step 3"). */
const char *mp_train_nonfinite_name(double v);
/* Creates the backend named by opts (device, threads, tf32). */
mp_status_t mp_train_backend_create(const mp_train_opts_t *opts, mp_backend_t **be_p,
                                    mp_errbuf_t *err);

mp_status_t mp_train_serial(const mp_spec_t *spec, const mp_train_opts_t *opts,
                            mp_train_result_t *result, mp_errbuf_t *err);
void mp_train_result_free(mp_train_result_t *result);

#endif
