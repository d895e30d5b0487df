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

/* `mpar-client run JOB.json [--serial] ...`; argv[0] is "run". */
int mp_client_run_main(int argc, char **argv);

#endif
