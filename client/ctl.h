/*
 * ctl.h - the cluster commands of mpar-client: nodes, jobs, submit JOB.json
 * [-f], status JOB, logs JOB [-f], cancel JOB.  They talk to mpard with the
 * framed protocol, over its Unix socket (--socket PATH, default
 * /run/mpar/mpard.sock) or over TCP to a coordinator (--connect HOST:PORT
 * --secret-file FILE).  Human tables by default, one JSON document with
 * -o json.  Single-threaded, blocking sockets.
 */
#ifndef MP_CLIENT_CTL_H
#define MP_CLIENT_CTL_H

/* argv[0] is the subcommand.  Returns the exit code of DESIGN.md: 0 success,
 * 1 the job failed (or no such job), 2 usage or invalid job spec, 3 daemon
 * unreachable, 4 authentication or permission refused. */
int mp_client_ctl_main(int argc, char **argv);

#endif
