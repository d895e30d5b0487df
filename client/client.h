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
#include <stdint.h>
#include <stdio.h>

#include "model/spec.h"

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

/* ---- what run shows of a finished run (client/report.c) ---- */

/* The final sample of a text job: a greedy-ish draw after a newline. */
#define MP_CLIENT_SAMPLE_PROMPT "\n"
#define MP_CLIENT_SAMPLE_TEMPERATURE 0.5
#define MP_CLIENT_SAMPLE_TOKENS 240

/* Writes the learning curve of losses[0..nsteps) and the test loss after
 * the last step (when has_test) to path; 0, or -1 after saying why on stderr. */
int mp_client_write_curve(const char *path, const char *title, const double *losses,
                          int64_t nsteps, double test_loss, bool has_test);
/* Whether spec's model writes text (mpar-client sample can run it). */
bool mp_client_is_text_job(const mp_spec_t *spec);
/* Loads and validates a job spec; on failure prints the one-line error (a
 * file error names the file, a spec error names the field, after the file)
 * and returns false: the caller exits MP_EXIT_USAGE. */
bool mp_client_load_spec(const char *path, mp_spec_t **spec_p);
/* The prompt and `tokens` bytes the model of spec with the weights in
 * weights_dir writes after it (mp_malloc'ed, *len_p bytes, any of which may
 * be NUL), or NULL after saying why. */
char *mp_client_run_sample(const mp_spec_t *spec, const char *weights_dir, int64_t tokens,
                           size_t *len_p);
/* Prints a sample of len bytes indented under a run's summary. */
void mp_client_print_sample(FILE *out, const char *text, size_t len, int64_t tokens);
/* Removes a folder and everything under it. */
void mp_client_remove_tree(const char *dir);

/* A JSON string of bytes that may not be UTF-8 (ASCII kept, other bytes U+FFFD). */
json_t *mp_client_json_bytes(const char *s, size_t n);

/* A job spec file's text (malloc'ed, NUL-terminated), refused past a
 * frame's size; an exit code (the reason on stderr). */
int mp_client_read_spec_text(const char *path, char **text_p);
/* client/ckpt.c.  Before a submit: a relative checkpoint.dir of the spec
 * text (read from spec_path) made absolute against the spec's folder
 * (*text_p: the rewritten text to send, malloc'ed, or NULL to send text as
 * it is), and with resume_dir (else NULL) its absolute form in resume_abs
 * after the checkpoint was opened and checked against the spec.  Returns
 * an exit code (MP_EXIT_USAGE, the reason on stderr, when refused). */
int mp_client_spec_prepare(const char *spec_path, const char *text, const char *resume_dir,
                           char **text_p, char *resume_abs, size_t cap);
/* `mpar-client export CKPT_DIR OUT_DIR [--format npy|safetensors]`. */
int mp_client_export_main(int argc, char **argv);
/* Whether a local cluster of the grid fits a machine of `cores` cores and
 * `mem` bytes available (0: unknown): 0, or -1 with the refusal in why. */
int mp_client_local_capacity(int pp, int tp, int dp, long cores, uint64_t mem, char *why,
                             size_t why_len);

/* Runs a job on a throwaway local cluster of mpard daemons (client/local.c);
 * returns the exit code. timeline_path NULL: "<name>-timeline.svg"; "none": no SVG;
 * curve_path likewise ("<name>-curve.svg").  A text job's result ends with
 * sample_tokens bytes of text from its final weights (0: none). */
int mp_client_run_local(const char *spec_path, int pp, int tp, int dp, const char *name,
                        bool json, const char *save_dir, const char *timeline_path, bool quiet,
                        const mp_spec_t *spec, const char *curve_path, int64_t sample_tokens,
                        const char *resume_dir);

#endif
