/*
 * config.h - mpard's configuration: defaults, then the INI file (libinih;
 * default /etc/mpar/mpard.conf, section [mpard]), then the command line; each
 * flag of DESIGN.md is also a key.  Pure apart from reading the file; main
 * thread (before the loop runs, and on SIGHUP from the loop callback).
 */
#ifndef MP_DAEMON_CONFIG_H
#define MP_DAEMON_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/status.h"

#define MP_DAEMON_DEFAULT_CONFIG "/etc/mpar/mpard.conf"
#define MP_DAEMON_DEFAULT_SOCKET "/run/mpar/mpard.sock"
#define MP_DAEMON_DEFAULT_STATE_DIR "/var/lib/mpar"
#define MP_DAEMON_DEFAULT_PORT 7070
#define MP_DAEMON_MAX_DEVICES 256

typedef enum { MP_DEVKIND_CPU = 1, MP_DEVKIND_CUDA = 2 } mp_daemon_devkind_t;

typedef struct {
    mp_daemon_devkind_t kind;
    uint32_t index;
    uint64_t memory_bytes;
} mp_daemon_device_t;

typedef struct {
    char config_path[PATH_MAX];
    bool config_given; /* --config: a missing file is an error */
    char name[64];
    bool coordinator;
    char listen[128]; /* HOST:PORT of the cluster listener (coordinator) */
    char join[128];   /* HOST:PORT of the coordinator; empty: this mpard when coordinator */
    char metrics_listen[128]; /* HOST:PORT of GET /metrics over HTTP; empty: off */
    char socket_path[PATH_MAX];
    char state_dir[PATH_MAX];
    char secret_file[PATH_MAX];
    char devices[128]; /* "cpu:N", "cuda:all", "cuda:0,1", "none" */
    uint32_t heartbeat_ms;
    uint32_t dead_after_ms;
    mp_log_level_t log_level;
    char log_level_name[16];
} mp_daemon_config_t;

/*
 * Builds the configuration from defaults, the INI file and argv (argv wins).
 * MP_ERR_INVAL with the reason in err for an unknown flag or key, a bad
 * value or a missing --config file.  `help_p` is set for --help.
 */
mp_status_t mp_daemon_config_load(int argc, char **argv, mp_daemon_config_t *cfg_p, bool *help_p,
                                  mp_errbuf_t *err);
void mp_daemon_config_usage(void);

/* Parses cfg->devices into `devs` (at most MP_DAEMON_MAX_DEVICES). */
mp_status_t mp_daemon_devices_parse(const char *spec, mp_daemon_device_t *devs, int *ndevs_p,
                                    mp_errbuf_t *err);

/* Splits "HOST:PORT" ("[v6]:PORT" too) into a sockaddr. */
mp_status_t mp_daemon_addr_parse(const char *hostport, struct sockaddr_storage *addr_p,
                                 mp_errbuf_t *err);

#endif
