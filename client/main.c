/*
 * main.c - mpar-client: takes the global options (--socket, --connect,
 * --secret-file, -o) wherever they stand, before or after the command, as
 * kubectl, docker and git do, and dispatches the subcommand with them moved
 * right after its name.  `run` trains (serially with --serial); the cluster
 * commands talk to mpard (client/ctl.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#ifdef MP_HAVE_CTL
#include "client/ctl.h"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mpar-client [global options] <command> [options]\n"
            "\n"
            "commands (each takes --help):\n"
            "  run JOB.json [--serial] [-o json] [--save-weights DIR] [--device cpu|cuda|auto]\n"
            "               [--threads N] [--tf32] [--timeline FILE.svg|none]\n"
            "                                 train a job: on a throwaway local cluster, or\n"
            "                                 with --serial in this process on one device\n"
            "               [--resume CKPT_DIR]  ... continuing from a checkpoint\n"
            "  export CKPT_DIR OUT_DIR [--format npy|safetensors]\n"
            "                                 a checkpoint's full tensors, as --save-weights\n"
            "  verify JOB.json [--steps N] [-v]\n"
            "                                 N steps on the job's grid and serially; compares\n"
            "                                 every tensor (exit 1 beyond the tolerance)\n"
            "  sample JOB.json --weights DIR --prompt TEXT [--tokens N] [--temperature X]\n"
            "                 [--top-k K] [--seed S]\n"
            "                                 text from a trained text model's weights\n"
#ifdef MP_HAVE_CTL
            "  nodes                          list the cluster's nodes\n"
            "  jobs                           list jobs\n"
            "  submit JOB.json [-f] [--save-weights DIR] [--resume CKPT_DIR]\n"
            "                                 submit a job (-f: follow its progress)\n"
            "  status JOB                     show one job (a running one: its live step,\n"
            "                                 loss and samples/s)\n"
            "  waits JOB                      a running job's wait-for graph and what holds\n"
            "                                 it up\n"
            "  logs JOB [-f]                  show a job's events\n"
            "  cancel JOB                     cancel a job\n"
            "  trace JOB [--format chrome|svg] [--file FILE]\n"
            "                                 the timeline of a job's last step\n"
            "\n"
            "global options, before or after the command:\n"
            "  --socket PATH                  mpard's Unix socket (default /run/mpar/mpard.sock,\n"
            "                                 or $MPAR_SOCKET)\n"
            "  --connect HOST:PORT            a coordinator over TCP instead\n"
            "  --secret-file FILE             the cluster secret for --connect\n"
#else
            "\n"
            "global options, before or after the command:\n"
#endif
            "  -o json|table                  one JSON document instead of a table\n"
            "\n"
            "exit codes: 0 ok, 1 job failed, 2 usage or invalid spec, 3 daemon unreachable,\n"
            "            4 authentication or permission refused\n");
}

/* How many argv entries the global option at argv[i] spans (1 or 2: its
 * value may be the next entry or joined with '='), 0 when argv[i] is not a
 * global option. */
static int global_option_len(char **argv, int argc, int i)
{
    static const char *const longs[] = {"--socket", "--connect", "--secret-file", "--output"};
    const char *a = argv[i];
    for (size_t k = 0; k < sizeof(longs) / sizeof(longs[0]); k++) {
        size_t n = strlen(longs[k]);
        if (strncmp(a, longs[k], n) == 0 && a[n] == '=') {
            return 1;
        }
        if (strcmp(a, longs[k]) == 0) {
            return i + 1 < argc ? 2 : 1;
        }
    }
    if (strncmp(a, "-o", 2) == 0) {
        return a[2] != '\0' ? 1 : i + 1 < argc ? 2 : 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    /* The global options before the command, and the command. */
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return MP_EXIT_OK;
        }
        if (strcmp(a, "--version") == 0) {
            printf("mpar-client %s\n", MP_VERSION);
            return MP_EXIT_OK;
        }
        int n = global_option_len(argv, argc, i);
        if (n == 0) {
            fprintf(stderr, "mpar-client: unknown global option '%s' (see mpar-client --help)\n",
                    a);
            return MP_EXIT_USAGE;
        }
        i += n;
    }
    if (i >= argc) {
        if (i > 1) {
            fprintf(stderr, "mpar-client: no command after the options\n");
        }
        usage(stderr);
        return MP_EXIT_USAGE;
    }
    const char *cmd = argv[i];
    char *hargv[3] = {NULL, "--help", NULL};
    if (strcmp(cmd, "help") == 0) {
        if (i + 1 >= argc) {
            usage(stdout);
            return MP_EXIT_OK;
        }
        /* `help CMD` is `CMD --help`. */
        hargv[0] = argv[i + 1];
        argc = 2;
        argv = hargv;
        i = 0;
        cmd = argv[0];
    }
    /* argv for the command: its name, the global options given before it,
     * then its own arguments, so that each command parses one list. */
    int nargc = argc - i;
    char **nargv = malloc(((size_t)argc + 1) * sizeof(*nargv));
    if (nargv == NULL) {
        return MP_EXIT_FAILED;
    }
    int k = 0;
    nargv[k++] = (char *)cmd;
    for (int j = 1; j < i; j++) {
        nargv[k++] = argv[j];
    }
    for (int j = i + 1; j < argc; j++) {
        nargv[k++] = argv[j];
    }
    nargv[k] = NULL;
    nargc = k;
    int rc;
    if (strcmp(cmd, "run") == 0) {
        rc = mp_client_run_main(nargc, nargv);
    } else if (strcmp(cmd, "trace") == 0) {
        rc = mp_client_trace_main(nargc, nargv);
    } else if (strcmp(cmd, "export") == 0) {
        rc = mp_client_export_main(nargc, nargv);
    } else if (strcmp(cmd, "verify") == 0) {
        rc = mp_client_verify_main(nargc, nargv);
    } else if (strcmp(cmd, "sample") == 0) {
        rc = mp_client_sample_main(nargc, nargv);
    } else {
#ifdef MP_HAVE_CTL
        rc = mp_client_ctl_main(nargc, nargv);
#else
        fprintf(stderr, "mpar-client: unknown command '%s'\n", cmd);
        usage(stderr);
        rc = MP_EXIT_USAGE;
#endif
    }
    free(nargv);
    return rc;
}
