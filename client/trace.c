/*
 * trace.c - `mpar-client trace JOB`: fetches the job's record (the
 * timeline of its last training step, one row of action spans per shard)
 * through `mpar-client status JOB -o json` and writes it as Chrome
 * trace-event JSON (Perfetto, chrome://tracing) or, with --format svg, as a
 * Gantt chart like the GPipe paper's pipeline figures.  Also renders a job
 * document already fetched (mp_client_trace_render, used by `run`).
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/client.h"
#include "common/alloc.h"
#include "engine/trace.h"
#include "parallel/sched.h"

static int op_from_name(const char *name, mp_sched_op_t *op_p)
{
    for (int op = MP_SCHED_RECV_ACT; op <= MP_SCHED_OP_LAST; op++) {
        if (strcmp(name, mp_sched_op_name((mp_sched_op_t)op)) == 0) {
            *op_p = (mp_sched_op_t)op;
            return 0;
        }
    }
    return -1;
}

int mp_client_trace_render(json_t *job, const char *format, FILE *out, const char *title,
                           char *why, size_t why_len)
{
    json_t *tl = json_object_get(job, "timeline");
    json_t *rows_j = json_object_get(tl, "rows");
    if (!json_is_array(rows_j) || json_array_size(rows_j) == 0) {
        snprintf(why, why_len, "the job has no timeline yet (no training step has finished)");
        return -1;
    }
    size_t n = json_array_size(rows_j);
    mp_trace_row_t *rows = mp_calloc(n, sizeof(*rows));
    mp_exec_span_t **spans = mp_calloc(n, sizeof(*spans));
    int rc = -1;
    if (rows == NULL || spans == NULL) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *r = json_array_get(rows_j, i);
        json_t *sp = json_object_get(r, "spans");
        size_t ns = json_array_size(sp);
        rows[i].rank = (int)json_integer_value(json_object_get(r, "rank"));
        rows[i].stage = (int)json_integer_value(json_object_get(r, "stage"));
        rows[i].tp_rank = (int)json_integer_value(json_object_get(r, "tp"));
        rows[i].dp_rank = (int)json_integer_value(json_object_get(r, "dp"));
        spans[i] = mp_calloc(ns ? ns : 1, sizeof(mp_exec_span_t));
        if (spans[i] == NULL) {
            snprintf(why, why_len, "out of memory");
            goto out;
        }
        int k = 0;
        for (size_t j = 0; j < ns; j++) {
            json_t *s = json_array_get(sp, j);
            const char *name = json_string_value(json_object_get(s, "op"));
            mp_sched_op_t op;
            if (name == NULL || op_from_name(name, &op) != 0) {
                continue; /* an action this build does not draw */
            }
            spans[i][k].op = op;
            spans[i][k].mb = (int32_t)json_integer_value(json_object_get(s, "mb"));
            spans[i][k].chunk = (int32_t)json_integer_value(json_object_get(s, "chunk"));
            spans[i][k].t0_ns = (uint64_t)json_integer_value(json_object_get(s, "t0_ns"));
            spans[i][k].t1_ns = (uint64_t)json_integer_value(json_object_get(s, "t1_ns"));
            k++;
        }
        rows[i].nspans = k;
        rows[i].spans = spans[i];
    }
    mp_status_t st = strcmp(format, "svg") == 0
                         ? mp_trace_write_svg(out, rows, (int)n, title)
                         : mp_trace_write_chrome(out, rows, (int)n);
    if (st != MP_OK) {
        snprintf(why, why_len, "cannot write the trace: %s", mp_strerror(st));
    } else {
        rc = 0;
    }
out:
    for (size_t i = 0; spans != NULL && i < n; i++) {
        mp_free(spans[i]);
    }
    mp_free(spans);
    mp_free(rows);
    return rc;
}

/* Runs this program's `status JOB -o json` with the same connection flags
 * and returns its stdout parsed, or NULL with *exit_p set. */
static json_t *fetch_job(const char *self, const char *job, char **conn_args, int nconn,
                         int *exit_p)
{
    int pfd[2];
    if (pipe(pfd) != 0) {
        *exit_p = MP_EXIT_FAILED;
        return NULL;
    }
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[16];
        int a = 0;
        argv[a++] = (char *)self;
        argv[a++] = "status";
        argv[a++] = (char *)job;
        argv[a++] = "-o";
        argv[a++] = "json";
        for (int i = 0; i < nconn && a < 15; i++) {
            argv[a++] = conn_args[i];
        }
        argv[a] = NULL;
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        execv(self, argv);
        _exit(127);
    }
    close(pfd[1]);
    json_error_t jerr;
    json_t *doc = json_loadfd(pfd[0], JSON_DISABLE_EOF_CHECK, &jerr);
    close(pfd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : MP_EXIT_FAILED;
    if (code != 0 && code != MP_EXIT_FAILED) {
        json_decref(doc);
        *exit_p = code; /* status already said why on stderr */
        return NULL;
    }
    if (doc == NULL) {
        fprintf(stderr, "mpar-client trace: no job document from `status %s -o json`\n", job);
        *exit_p = MP_EXIT_FAILED;
    }
    return doc;
}

int mp_client_trace_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"format", required_argument, NULL, 'f'}, {"output", required_argument, NULL, 'o'},
        {"file", required_argument, NULL, 'F'},
        {"socket", required_argument, NULL, 's'}, {"connect", required_argument, NULL, 'c'},
        {"secret-file", required_argument, NULL, 'k'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *format = "chrome", *outpath = NULL;
    char *conn[6];
    int nconn = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (strcmp(optarg, "chrome") != 0 && strcmp(optarg, "svg") != 0) {
                fprintf(stderr, "mpar-client trace: --format: expected chrome or svg, got '%s'\n",
                        optarg);
                return MP_EXIT_USAGE;
            }
            format = optarg;
            break;
        case 'o':
            /* -o json, as on every command: one JSON document, the Chrome trace. */
            if (strcmp(optarg, "json") != 0) {
                fprintf(stderr, "mpar-client trace: -o: expected json, got '%s' (write a file "
                                "with --file)\n", optarg);
                return MP_EXIT_USAGE;
            }
            format = "chrome";
            break;
        case 'F':
            outpath = optarg;
            break;
        case 's':
        case 'c':
        case 'k':
            conn[nconn++] = c == 's' ? "--socket" : c == 'c' ? "--connect" : "--secret-file";
            conn[nconn++] = optarg;
            break;
        case 'h':
            printf("usage: mpar-client trace JOB [--format chrome|svg] [--file FILE] [-o json]\n"
                   "       [--socket PATH | --connect HOST:PORT --secret-file FILE]\n");
            return MP_EXIT_OK;
        default:
            return MP_EXIT_USAGE;
        }
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: mpar-client trace JOB [--format chrome|svg] [--file FILE]\n");
        return MP_EXIT_USAGE;
    }
    const char *job = argv[optind];
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        fprintf(stderr, "mpar-client trace: cannot find my own executable\n");
        return MP_EXIT_FAILED;
    }
    self[n] = '\0';
    int code = MP_EXIT_OK;
    json_t *doc = fetch_job(self, job, conn, nconn, &code);
    if (doc == NULL) {
        return code;
    }
    json_t *jobj = json_object_get(doc, "job") ? json_object_get(doc, "job") : doc;
    FILE *out = outpath ? fopen(outpath, "w") : stdout;
    if (out == NULL) {
        perror(outpath);
        json_decref(doc);
        return MP_EXIT_FAILED;
    }
    char why[256], title[256];
    snprintf(title, sizeof(title), "job %s", job);
    int rc = mp_client_trace_render(jobj, format, out, title, why, sizeof(why));
    if (outpath != NULL && fclose(out) != 0) {
        rc = -1;
        snprintf(why, sizeof(why), "cannot write %s", outpath);
    }
    json_decref(doc);
    if (rc != 0) {
        fprintf(stderr, "mpar-client trace: job %s: %s\n", job, why);
        return MP_EXIT_FAILED;
    }
    if (outpath != NULL) {
        fprintf(stderr, "mpar-client trace: wrote %s\n", outpath);
    }
    return MP_EXIT_OK;
}
