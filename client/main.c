/*
 * main.c - mpar-client: dispatches the subcommand.  `run` trains (serially
 * with --serial); the cluster commands talk to mpard (client/ctl.c).
 */
#include <stdio.h>
#include <string.h>

#include "client/client.h"
#ifdef MP_HAVE_CTL
#include "client/ctl.h"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mpar-client <command> [options]\n"
            "\n"
            "commands:\n"
            "  run JOB.json [--serial] [-o json] [--save-weights DIR] [--device cpu|cuda|auto]\n"
            "               [--threads N] [--tf32] [--timeline FILE.svg|none]\n"
            "                                 train a job: on a throwaway local cluster, or\n"
            "                                 with --serial in this process on one device\n"
#ifdef MP_HAVE_CTL
            "  nodes                          list the cluster's nodes\n"
            "  jobs                           list jobs\n"
            "  submit JOB.json [-f]           submit a job (-f: follow its progress)\n"
            "  status JOB                     show one job\n"
            "  logs JOB [-f]                  show a job's events\n"
            "  cancel JOB                     cancel a job\n"
            "  trace JOB [--format chrome|svg] [--file FILE]\n"
            "                                 the timeline of a job's last step\n"
            "\n"
            "cluster options: --socket PATH | --connect HOST:PORT --secret-file FILE; -o json\n"
#endif
            "\n"
            "exit codes: 0 ok, 1 job failed, 2 usage or invalid spec, 3 daemon unreachable,\n"
            "            4 authentication refused\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? MP_EXIT_USAGE : MP_EXIT_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("mpar-client %s\n", MP_VERSION);
        return MP_EXIT_OK;
    }
    if (strcmp(argv[1], "run") == 0) {
        return mp_client_run_main(argc - 1, argv + 1);
    }
    if (strcmp(argv[1], "trace") == 0) {
        return mp_client_trace_main(argc - 1, argv + 1);
    }
#ifdef MP_HAVE_CTL
    return mp_client_ctl_main(argc - 1, argv + 1);
#else
    fprintf(stderr, "mpar-client: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return MP_EXIT_USAGE;
#endif
}
