/*
 * train.c - the serial trainer: loads the data set, builds the whole model
 * on one backend, runs the optimizer steps batch after batch, evaluates on
 * the test split after each epoch and saves weights; resumes from a
 * checkpoint of any grid and writes its own (a grid of one) on a writer
 * thread.  Runs on the caller's thread and blocks.
 */
#include "model/train.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/alloc.h"
#include "common/log.h"
#include "model/ckpt.h"
#include "model/ckptw.h"
#include "model/model.h"
#include "model/npy.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

mp_status_t mp_train_check_data(const mp_spec_t *spec, mp_errbuf_t *err)
{
    mp_errbuf_t why = {{0}};
    int64_t train_n = -1, dim = -1; /* -1: known only once loaded */
    const char *dir;
    switch (spec->data.kind) {
    case MP_DATA_SYNTHETIC:
        train_n = spec->data.samples;
        break;
    case MP_DATA_TEXT:
        if (mp_data_text_check(spec->data.path, spec->data.block_size, &train_n, &why) != MP_OK) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "data.path: %s", why.msg);
        }
        break;
    case MP_DATA_KJV:
        if (access(MP_KJV_PROGRAM, X_OK) != 0) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "data.dataset: \"kjv\" runs %s, which cannot run here: %s "
                                 "(install Debian's bible-kjv and bible-kjv-text: "
                                 "deploy/install-deps.sh)",
                                 MP_KJV_PROGRAM, strerror(errno));
        }
        break; /* its length shows when the program has printed it */
    default:
        dir = spec->data.path[0] ? spec->data.path : MP_FASHION_MNIST_DIR;
        if (mp_data_fashion_mnist_check(dir, &train_n, &dim, &why) != MP_OK) {
            return mp_errbuf_set(err, MP_ERR_SPEC, "data.path: %s", why.msg);
        }
        if (dim != spec->model.input * spec->model.seq) {
            return mp_errbuf_set(err, MP_ERR_SPEC,
                                 "model.input: %lld does not match the data set's %lld features",
                                 (long long)spec->model.input, (long long)dim);
        }
        break;
    }
    if (train_n >= 0 && spec->train.batch_size > train_n) {
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "train.batch_size: %lld is larger than the %lld training samples",
                             (long long)spec->train.batch_size, (long long)train_n);
    }
    return MP_OK;
}

mp_status_t mp_train_load_data(const mp_spec_t *spec, mp_dataset_t *train, mp_dataset_t *test,
                               mp_errbuf_t *err)
{
    memset(train, 0, sizeof(*train));
    memset(test, 0, sizeof(*test));
    mp_status_t st;
    switch (spec->data.kind) {
    case MP_DATA_SYNTHETIC:
        return mp_data_synthetic(spec->data.samples, spec->data.test_samples, spec->model.input,
                                 spec->data.classes, spec->data.seed, train, test, err);
    case MP_DATA_TEXT:
        st = mp_data_load_text(spec->data.path, spec->data.block_size, train, test, err);
        break;
    case MP_DATA_KJV:
        st = mp_data_load_kjv(spec->data.block_size, train, test, err);
        break;
    default:
        st = mp_data_load_fashion_mnist(
            spec->data.path[0] ? spec->data.path : MP_FASHION_MNIST_DIR, train, test, err);
        break;
    }
    if (st != MP_OK) {
        return st;
    }
    /* A sample is seq positions of model.input values, with seq labels. */
    if (train->dim != spec->model.input * spec->model.seq || train->ydim != spec->model.seq) {
        mp_dataset_free(train);
        mp_dataset_free(test);
        return mp_errbuf_set(err, MP_ERR_SPEC,
                             "model.input: %lld does not match the data set's %lld features",
                             (long long)spec->model.input, (long long)train->dim);
    }
    return MP_OK;
}

const char *mp_train_nonfinite_name(double v)
{
    return isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf";
}

int64_t mp_train_steps_per_epoch(const mp_spec_t *spec, int64_t train_samples)
{
    return train_samples / spec->train.batch_size;
}

mp_status_t mp_train_backend_create(const mp_train_opts_t *opts, mp_backend_t **be_p,
                                    mp_errbuf_t *err)
{
    const char *dev = opts->device ? opts->device : "cpu";
    bool want_cuda = strcmp(dev, "cuda") == 0;
    if (strcmp(dev, "auto") == 0) {
        want_cuda = mp_backend_cuda_device_count() > 0;
    } else if (!want_cuda && strcmp(dev, "cpu") != 0) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "--device: '%s' is not one of cpu, cuda, auto",
                             dev);
    }
    mp_status_t st;
    if (want_cuda) {
        st = mp_backend_cuda_create(0, opts->tf32, be_p);
        if (st != MP_OK) {
            return mp_errbuf_set(err, st, "cannot use the CUDA backend: %s%s", mp_strerror(st),
                                 mp_backend_cuda_built() ? "" : " (this build has no CUDA)");
        }
        return MP_OK;
    }
    st = mp_backend_cpu_create(opts->threads > 0 ? opts->threads : 1, be_p);
    if (st != MP_OK) {
        return mp_errbuf_set(err, st, "cannot create the CPU backend: %s", mp_strerror(st));
    }
    return MP_OK;
}

/* Loss and accuracy over a whole data set, in chunks of max_rows, per
 * position (a sample has ds->ydim labels). */
static mp_status_t evaluate(mp_model_t *model, mp_backend_t *be, const mp_dataset_t *ds,
                            int64_t max_rows, int32_t *labels_dev, double *loss_p, double *acc_p)
{
    double loss = 0.0;
    int64_t correct = 0, L = ds->ydim;
    for (int64_t first = 0; first < ds->n; first += max_rows) {
        int64_t rows = ds->n - first < max_rows ? ds->n - first : max_rows;
        mp_status_t st = be->ops->upload(be, mp_model_input(model, 0), ds->x + first * ds->dim,
                                         (size_t)(rows * ds->dim) * sizeof(float));
        float *out;
        if (st == MP_OK) {
            st = be->ops->upload(be, labels_dev, ds->y + first * L,
                                 (size_t)(rows * L) * sizeof(int32_t));
        }
        if (st == MP_OK) {
            st = mp_model_forward(model, 0, rows, &out);
        }
        if (st == MP_OK) {
            st = mp_model_loss(model, 0, labels_dev, rows, 0.0f, &loss, &correct);
        }
        if (st != MP_OK) {
            return st;
        }
    }
    *loss_p = loss / (double)(ds->n * L);
    *acc_p = (double)correct / (double)(ds->n * L);
    return MP_OK;
}

static mp_status_t save_weights(mp_model_t *model, const mp_spec_t *spec, const char *dir,
                                mp_errbuf_t *err)
{
    for (int l = 0; l < spec->model.nlayers; l++) {
        const mp_layer_spec_t *ls = &spec->model.layers[l];
        for (int p = 0; p < mp_layer_nparams(ls); p++) {
            int64_t rows, cols;
            mp_layer_param_shape(ls, p, &rows, &cols);
            float *host = mp_malloc((size_t)(rows * cols) * sizeof(float));
            if (host == NULL) {
                return mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory saving weights");
            }
            mp_status_t st = mp_model_param_download(model, l, p, host);
            if (st == MP_OK) {
                st = mp_npy_save_layer_param(dir, spec, l, p, host, err);
            } else {
                mp_errbuf_set(err, st, "cannot read layer %d's %s: %s", l,
                              mp_layer_param_name(ls, p), mp_strerror(st));
            }
            mp_free(host);
            if (st != MP_OK) {
                return st;
            }
        }
    }
    return MP_OK;
}

/* ---- checkpoints of a serial run ---------------------------------------- */

/* A serial run's checkpoints are a cluster run's on a grid of one: its one
 * shard file (stage 0, TP rank 0) from a shard's writer thread (ckptw.h),
 * then, from that thread, what the coordinator does after the shards'
 * files (manifest, commit, prune).  A failed write (disk full, permission)
 * is a warning, as it is an event of a cluster job: training goes on and
 * the previous checkpoint stays. */
typedef struct {
    const mp_spec_t *spec;
    const char *spec_text;
    const double *losses; /* the run's: the writer reads those before its step */
    mp_ckpt_snap_t *snap;
    mp_ckptw_t *w;
    int64_t committed, failed; /* written by the writer thread, read after mp_ckptw_destroy */
} ckpt_writer_t;

static void ckpt_written(int64_t step, mp_status_t st, const char *path_or_msg, void *arg)
{
    ckpt_writer_t *w = arg;
    const char *dir = w->spec->checkpoint.dir;
    mp_errbuf_t err = {{0}};
    if (st != MP_OK) {
        snprintf(err.msg, sizeof(err.msg), "%s", path_or_msg);
    }
    if (st == MP_OK) {
        st = mp_ckpt_manifest_write(dir, step, w->spec_text, 1, 1, 1, w->losses, step, &err);
    }
    if (st == MP_OK) {
        st = mp_ckpt_commit(dir, step, &err);
    }
    if (st == MP_OK) {
        st = mp_ckpt_prune(dir, step, (int)w->spec->checkpoint.keep, &err);
    }
    if (st == MP_OK) {
        w->committed++;
    } else {
        mp_warn("the checkpoint of step %lld: %s; training goes on, the previous checkpoint stays",
                (long long)step, err.msg);
        w->failed++;
    }
}

/* Copies the model after step `step` (the only part that stops training,
 * once the previous write is done) and hands it to the writer thread. */
static mp_status_t ckpt_writer_start(ckpt_writer_t *w, mp_model_t *model, int64_t step,
                                     mp_errbuf_t *err)
{
    mp_status_t st = MP_OK;
    if (w->w == NULL) {
        st = mp_ckpt_snap_create(&model, 1, w->spec, 0, 0, &w->snap);
        if (st == MP_OK) {
            st = mp_ckptw_create(w->spec->checkpoint.dir, ckpt_written, w, &w->w);
        }
    } else {
        mp_ckptw_wait_idle(w->w);
    }
    if (st == MP_OK) {
        st = mp_ckpt_snap_fill(w->snap, &model, 1, step);
    }
    if (st != MP_OK) {
        return mp_errbuf_set(err, st, "the checkpoint of step %lld: cannot copy the model: %s",
                             (long long)step, mp_strerror(st));
    }
    mp_ckptw_submit(w->w, w->snap);
    return MP_OK;
}

/* Finishes the write in flight and ends the writer thread. */
static void ckpt_writer_stop(ckpt_writer_t *w)
{
    mp_ckptw_destroy(w->w);
    w->w = NULL;
}

/* Loads the checkpoint dir/latest names into model: its step, and its
 * stored losses into losses[0, step). */
static mp_status_t resume_model(const char *dir, const mp_spec_t *spec, mp_model_t *model,
                                int64_t total, double *losses, int64_t *step_p, mp_errbuf_t *err)
{
    mp_ckpt_t *ck;
    mp_status_t st = mp_ckpt_open(dir, &ck, err);
    if (st != MP_OK) {
        return st;
    }
    st = mp_ckpt_check_spec(ck, spec, err);
    int64_t step = mp_ckpt_step(ck);
    if (st == MP_OK && step > total) {
        st = mp_errbuf_set(err, MP_ERR_SPEC,
                           "train.steps: the run ends at step %lld, before the checkpoint's "
                           "step %lld in %s",
                           (long long)total, (long long)step, dir);
    }
    if (st == MP_OK) {
        st = mp_ckpt_load_model(ck, model, spec, err);
    }
    if (st == MP_OK) {
        int64_t n = 0;
        const double *l = mp_ckpt_losses(ck, &n);
        for (int64_t i = 0; i < step; i++) {
            losses[i] = i < n ? l[i] : NAN;
        }
        *step_p = step;
    }
    mp_ckpt_close(ck);
    return st;
}

mp_status_t mp_train_serial(const mp_spec_t *spec, const mp_train_opts_t *opts,
                            mp_train_result_t *res, mp_errbuf_t *err)
{
    memset(res, 0, sizeof(*res));
    mp_dataset_t train, test;
    mp_status_t st = mp_train_load_data(spec, &train, &test, err);
    if (st != MP_OK) {
        return st;
    }
    int64_t B = spec->train.batch_size;
    int64_t L = train.ydim; /* labels (positions) per sample: model.seq */
    int64_t spe = mp_train_steps_per_epoch(spec, train.n);
    mp_backend_t *be = NULL;
    mp_model_t *model = NULL;
    int64_t *perm = NULL;
    float *xb = NULL;
    int32_t *yb = NULL, *labels_dev = NULL;
    ckpt_writer_t ckw = {.spec = spec, .spec_text = opts->spec_text};
    if (spe < 1) {
        st = mp_errbuf_set(err, MP_ERR_SPEC,
                           "train.batch_size: %lld is larger than the %lld training samples",
                           (long long)B, (long long)train.n);
        goto out_data;
    }
    int64_t total = spec->train.steps >= 0 ? spec->train.steps : spe * spec->train.epochs;
    int64_t epochs = (total + spe - 1) / spe;
    /* Evaluation chunks of about 1024 positions (rows of one position each
     * for a classifier; a sequence model's samples hold seq positions). */
    int64_t seq = spec->model.seq > 0 ? spec->model.seq : 1;
    int64_t eval_rows = (1024 + seq - 1) / seq;
    eval_rows = B > eval_rows ? B : eval_rows;

    st = mp_train_backend_create(opts, &be, err);
    if (st != MP_OK) {
        goto out_data;
    }
    snprintf(res->device, sizeof(res->device), "%s", be->ops->name);
    st = mp_model_create(be, spec, 0, spec->model.nlayers, 1, eval_rows, &model);
    if (st != MP_OK) {
        mp_errbuf_set(err, st, "cannot build the model on %s: %s", be->ops->name,
                      mp_strerror(st));
        goto out_backend;
    }
    if (mp_model_in_dim(model) != train.dim) {
        /* A sample is seq positions: the model must take all of them. */
        st = mp_errbuf_set(err, MP_ERR_SPEC,
                           "model: takes %lld inputs per sample, but a sample of the data set "
                           "has %lld (model.input %lld x %lld positions)",
                           (long long)mp_model_in_dim(model), (long long)train.dim,
                           (long long)spec->model.input, (long long)spec->model.seq);
        goto out_model;
    }
    perm = mp_malloc((size_t)train.n * sizeof(int64_t));
    xb = mp_malloc((size_t)(B * train.dim) * sizeof(float));
    yb = mp_malloc((size_t)(B * L) * sizeof(int32_t));
    labels_dev = be->ops->alloc(be, (size_t)(eval_rows * L) * sizeof(int32_t));
    res->losses = mp_calloc((size_t)(total > 0 ? total : 1), sizeof(double));
    res->epoch_test_accuracy = mp_calloc((size_t)(epochs > 0 ? epochs : 1), sizeof(double));
    if (perm == NULL || xb == NULL || yb == NULL || labels_dev == NULL || res->losses == NULL ||
        res->epoch_test_accuracy == NULL) {
        st = mp_errbuf_set(err, MP_ERR_NOMEM, "out of memory for the training buffers");
        goto out_model;
    }
    /* Only a caller that gives the manifest's text writes the spec's
     * checkpoints (verify and the benchmarks leave a job's folder alone). */
    bool ckpt = opts->spec_text != NULL && spec->checkpoint.enabled &&
                spec->checkpoint.every_steps > 0;
    ckw.losses = res->losses;
    /* A resumed run starts where the checkpoint's ends: the data order is a
     * pure function of (seed, epoch), so its step is all it needs. */
    int64_t start = 0;
    if (opts->resume != NULL) {
        st = resume_model(opts->resume, spec, model, total, res->losses, &start, err);
        if (st != MP_OK) {
            goto out_model;
        }
    }
    res->resumed_from_step = start;
    res->epochs_done = start / spe;
    for (int64_t e = 0; e < res->epochs_done; e++) {
        res->epoch_test_accuracy[e] = NAN;
    }
    res->has_test = test.n > 0;
    bool evaluated = false;

    double t_train = 0.0, t0;
    int64_t step = start;
    for (int64_t epoch = start / spe; epoch < epochs; epoch++) {
        mp_data_order(perm, train.n, spec->train.seed, epoch, spec->train.shuffle);
        for (int64_t k = epoch == start / spe ? start % spe : 0; k < spe && step < total; k++) {
            t0 = now_s();
            mp_data_gather(&train, perm, k * B, B, xb, yb);
            double loss = 0.0;
            float *out;
            st = be->ops->upload(be, mp_model_input(model, 0), xb,
                                 (size_t)(B * train.dim) * sizeof(float));
            if (st == MP_OK) {
                st = be->ops->upload(be, labels_dev, yb, (size_t)(B * L) * sizeof(int32_t));
            }
            if (st == MP_OK) {
                st = mp_model_zero_grad(model);
            }
            if (st == MP_OK) {
                st = mp_model_forward(model, 0, B, &out);
            }
            if (st == MP_OK) {
                /* Each position's gradient is 1/(B L) of its loss gradient:
                 * the mean over the batch's positions. */
                st = mp_model_loss(model, 0, labels_dev, B, 1.0f / (float)(B * L), &loss, NULL);
            }
            if (st == MP_OK && !isfinite(loss)) {
                /* A diverged run stops here, as Megatron's NaN check does,
                 * rather than training on and reporting garbage. */
                st = mp_errbuf_set(err, MP_ERR_NONFINITE, "loss is %s at step %lld",
                                   mp_train_nonfinite_name(loss), (long long)step + 1);
                goto out_model;
            }
            if (st == MP_OK) {
                st = mp_model_backward(model, 0, B, NULL);
            }
            if (st == MP_OK) {
                st = mp_model_step(model, step + 1);
            }
            if (st == MP_ERR_NONFINITE) {
                st = mp_errbuf_set(err, st, "a gradient is not finite (NaN or ±Inf) at step %lld",
                                   (long long)step + 1);
                goto out_model;
            }
            if (st != MP_OK) {
                mp_errbuf_set(err, st, "training step %lld failed on %s: %s",
                              (long long)step + 1, be->ops->name, mp_strerror(st));
                goto out_model;
            }
            t_train += now_s() - t0;
            res->losses[step] = loss / (double)(B * L);
            step++;
            res->samples += B;
            if (ckpt && step % spec->checkpoint.every_steps == 0) {
                st = ckpt_writer_start(&ckw, model, step, err);
                if (st != MP_OK) {
                    goto out_model;
                }
            }
            if (opts->on_progress != NULL) {
                mp_train_progress_t p = {
                    .epoch = epoch + 1, .epochs = epochs, .step = step, .steps = total,
                    .step_in_epoch = k + 1, .steps_per_epoch = spe,
                    .loss = res->losses[step - 1],
                    .samples_per_s = t_train > 0 ? (double)res->samples / t_train : 0.0,
                    .tokens_per_s = t_train > 0 ? (double)(res->samples * L) / t_train : 0.0,
                };
                opts->on_progress(&p, opts->arg);
            }
        }
        if (res->has_test && (step % spe == 0 || step == total)) {
            st = evaluate(model, be, &test, eval_rows, labels_dev, &res->test_loss,
                          &res->test_accuracy);
            if (st != MP_OK) {
                mp_errbuf_set(err, st, "evaluation failed: %s", mp_strerror(st));
                goto out_model;
            }
            res->epoch_test_accuracy[res->epochs_done] = res->test_accuracy;
            evaluated = true;
            if (opts->on_progress != NULL) {
                mp_train_progress_t p = {
                    .epoch = epoch + 1, .epochs = epochs, .step = step, .steps = total,
                    .step_in_epoch = spe, .steps_per_epoch = spe,
                    .loss = step > 0 ? res->losses[step - 1] : NAN,
                    .samples_per_s = t_train > 0 ? (double)res->samples / t_train : 0.0,
                    .tokens_per_s = t_train > 0 ? (double)(res->samples * L) / t_train : 0.0,
                    .eval = true, .test_loss = res->test_loss,
                    .test_accuracy = res->test_accuracy,
                };
                opts->on_progress(&p, opts->arg);
            }
        }
        res->epochs_done++;
    }
    ckpt_writer_stop(&ckw);
    res->has_test = evaluated;
    res->checkpoints = ckw.committed;
    res->checkpoint_failures = ckw.failed;
    res->steps = step;
    res->final_loss = step > 0 ? res->losses[step - 1] : NAN;
    res->seconds = t_train;
    res->samples_per_s = t_train > 0 ? (double)res->samples / t_train : 0.0;
    res->tokens_per_s = res->samples_per_s * (double)L;
    if (opts->save_weights != NULL) {
        st = save_weights(model, spec, opts->save_weights, err);
    }

out_model:
    ckpt_writer_stop(&ckw);
    mp_ckpt_snap_free(ckw.snap);
    if (labels_dev != NULL) {
        be->ops->free(be, labels_dev);
    }
    mp_free(yb);
    mp_free(xb);
    mp_free(perm);
    mp_model_destroy(model);
out_backend:
    mp_backend_destroy(be);
out_data:
    mp_dataset_free(&train);
    mp_dataset_free(&test);
    if (st != MP_OK) {
        mp_train_result_free(res);
    }
    return st;
}

void mp_train_result_free(mp_train_result_t *res)
{
    mp_free(res->losses);
    mp_free(res->epoch_test_accuracy);
    res->losses = NULL;
    res->epoch_test_accuracy = NULL;
}
