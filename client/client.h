/*
 * client.h - the subcommands of mpar-client, each a main-like function
 * returning the process exit code of DESIGN.md: 0 success, 1 the job
 * failed, 2 usage or invalid job spec, 3 daemon unreachable, 4
 * authentication refused.
 */
#ifndef MP_CLIENT_H
#define MP_CLIENT_H

enum {
    MP_EXIT_OK = 0,
    MP_EXIT_FAILED = 1,
    MP_EXIT_USAGE = 2,
    MP_EXIT_UNREACHABLE = 3,
    MP_EXIT_AUTH = 4,
};

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* `mpar-client run JOB.json [--serial] ...`; argv[0] is "run". */
int mp_client_run_main(int argc, char **argv);
/* `mpar-client verify JOB.json [--steps N]`; argv[0] is "verify". */
int mp_client_verify_main(int argc, char **argv);
/* `mpar-client sample JOB.json --weights DIR --prompt TEXT ...`; argv[0] is "sample". */
int mp_client_sample_main(int argc, char **argv);
/* `mpar-client trace JOB [--format chrome|svg] [--file FILE]`; argv[0] is "trace". */
int mp_client_trace_main(int argc, char **argv);

/* Writes a job document's "timeline" as Chrome trace JSON (format "chrome")
 * or an SVG Gantt chart ("svg"); -1 with why set when it cannot. */
int mp_client_trace_render(json_t *job, const char *format, FILE *out, const char *title,
                           char *why, size_t why_len);

/* Runs a job on a throwaway local cluster of mpard daemons (client/local.c);
 * returns the exit code. timeline_path NULL: "<name>-timeline.svg"; "none": no SVG. */
int mp_client_run_local(const char *spec_path, int pp, int tp, int dp, const char *name,
                        bool json, const char *save_dir, const char *timeline_path, bool quiet);

#endif
