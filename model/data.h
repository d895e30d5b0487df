/*
 * data.h - data sets: the gzipped IDX files of Fashion-MNIST (Debian's
 * dataset-fashion-mnist) and the seeded synthetic teacher data set, plus
 * deterministic shuffling.  Host memory only.  Loading does blocking file
 * I/O: never call it on a libuv loop thread.
 */
#ifndef MP_MODEL_DATA_H
#define MP_MODEL_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"

#define MP_FASHION_MNIST_DIR "/usr/share/datasets/fashion-mnist"
/* Text: byte tokens; a text may hold at most MP_TEXT_MAX_BYTES (its
 * windows take 8 bytes of memory per byte). */
#define MP_TEXT_VOCAB 256
#define MP_TEXT_MAX_BYTES (256ll << 20)
/* The named corpus "kjv": what this program prints for this range. */
#define MP_KJV_PROGRAM "/usr/bin/bible"
#define MP_KJV_RANGE "gen1:1-rev22:21"

typedef struct {
    int64_t n;     /* samples */
    int64_t dim;   /* features per sample */
    int64_t classes;
    int64_t ydim;  /* labels per sample: 1, or T for text (the next token of each position) */
    float *x;      /* [n, dim]; Fashion-MNIST pixels / 255; text: token ids as floats */
    int32_t *y;    /* [n, ydim], in [0, classes) */
} mp_dataset_t;

/* Reads one gzipped IDX file.  images: magic 0x00000803, 3 dims; labels:
 * 0x00000801, 1 dim.  Each failure (missing, truncated, bad magic, bad
 * dimensions, label out of range) has its own message naming the file. */
mp_status_t mp_idx_read_images(const char *path, float **x_p, int64_t *n_p, int64_t *dim_p,
                               mp_errbuf_t *err);
mp_status_t mp_idx_read_labels(const char *path, int32_t **y_p, int64_t *n_p, mp_errbuf_t *err);

/* Loads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from dir, checking
 * image/label counts agree. */
mp_status_t mp_data_load_fashion_mnist(const char *dir, mp_dataset_t *train, mp_dataset_t *test,
                                       mp_errbuf_t *err);

/* Cheap checks before a load, reading no data: `path` exists and is a
 * regular file (folder: a folder), not a FIFO, socket or device, whose
 * open() could block a daemon's thread for ever (MP_ERR_IO naming it). */
mp_status_t mp_data_check_file(const char *path, bool folder, mp_errbuf_t *err);
/* dir is a folder whose four IDX files are regular files with headers that
 * agree (image and label counts); *train_n_p and *dim_p: the training
 * images and pixels per image their headers claim. */
mp_status_t mp_data_fashion_mnist_check(const char *dir, int64_t *train_n_p, int64_t *dim_p,
                                        mp_errbuf_t *err);

/* Synthetic: x ~ U(-1,1)^dim from (seed, sample, feature); label = argmax
 * of a fixed random teacher network (dim -> 32 tanh -> classes) seeded by
 * seed.  The test split uses sample indices after the training ones. */
mp_status_t mp_data_synthetic(int64_t n, int64_t test_n, int64_t dim, int64_t classes,
                              uint64_t seed, mp_dataset_t *train, mp_dataset_t *test,
                              mp_errbuf_t *err);

/* Text (DESIGN.md "Text data"): the bytes of `path` as tokens (vocab 256);
 * the first floor(0.9 n) bytes are the training split, the rest the test
 * split; in a split of n bytes, sample i < floor((n - 1) / T) is
 * x = bytes[i*T, i*T + T), y = bytes[i*T + 1, i*T + T + 1).  dim = ydim = T,
 * classes = 256.  A missing, unreadable or empty file, or one too short
 * for one window in either split, is refused naming the file. */
mp_status_t mp_data_load_text(const char *path, int64_t block_size, mp_dataset_t *train,
                              mp_dataset_t *test, mp_errbuf_t *err);
/* The same windows over a text held in memory (len bytes); `what` names
 * it in errors. */
mp_status_t mp_data_text_from_bytes(const unsigned char *bytes, int64_t len, int64_t block_size,
                                    const char *what, mp_dataset_t *train, mp_dataset_t *test,
                                    mp_errbuf_t *err);
/* The same windows over what a program prints on stdout: argv[0] (a full
 * path) runs with posix_spawn, no shell, stdin from /dev/null; a program
 * that is missing, cannot run, exits non-zero (its first line of stderr is
 * quoted) or prints too little is refused naming the command. */
mp_status_t mp_data_load_program(const char *const argv[], int64_t block_size, mp_dataset_t *train,
                                 mp_dataset_t *test, mp_errbuf_t *err);
/* The named corpus "kjv": the King James Bible as Debian's bible-kjv prints
 * it (`bible gen1:1-rev22:21`, run without a shell), as text windows. */
mp_status_t mp_data_load_kjv(int64_t block_size, mp_dataset_t *train, mp_dataset_t *test,
                             mp_errbuf_t *err);
/* Cheap checks made before a job starts, without reading the text: a text
 * of len bytes (`what` names it) holds a window in both splits (at least
 * 10 * block_size + 1 bytes); a file exists, is a regular file (not a FIFO
 * or a device), readable and long enough; *train_n_p (when not NULL): its
 * training windows.  MP_ERR_IO or MP_ERR_FORMAT naming it. */
mp_status_t mp_data_text_check_size(int64_t len, int64_t block_size, const char *what,
                                    mp_errbuf_t *err);
mp_status_t mp_data_text_check(const char *path, int64_t block_size, int64_t *train_n_p,
                               mp_errbuf_t *err);

void mp_dataset_free(mp_dataset_t *ds);

/* perm[0..n) = the order of epoch `epoch` (Fisher-Yates from a counter-based
 * RNG of (seed, epoch)); identity when shuffle is 0. */
void mp_data_order(int64_t *perm, int64_t n, uint64_t seed, int64_t epoch, int shuffle);

/* Copies the samples perm[first .. first+count) into x_out [count, dim] and y_out [count, ydim]. */
void mp_data_gather(const mp_dataset_t *ds, const int64_t *perm, int64_t first, int64_t count,
                    float *x_out, int32_t *y_out);

#endif
