/*
 * config.c - mpard's configuration: defaults, the INI file through libinih,
 * then the command line, all through one setter so that a flag and its key
 * accept the same values.  Main thread.
 */
#include "daemon/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static void config_defaults(mp_daemon_config_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->config_path, sizeof(c->config_path), "%s", MP_DAEMON_DEFAULT_CONFIG);
    if (gethostname(c->name, sizeof(c->name)) != 0 || c->name[0] == '\0') {
        snprintf(c->name, sizeof(c->name), "node");
    }
    c->name[sizeof(c->name) - 1] = '\0';
    char *dot = strchr(c->name, '.');
    if (dot != NULL) {
        *dot = '\0';
    }
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:%d", MP_DAEMON_DEFAULT_PORT);
    snprintf(c->socket_path, sizeof(c->socket_path), "%s", MP_DAEMON_DEFAULT_SOCKET);
    snprintf(c->state_dir, sizeof(c->state_dir), "%s", MP_DAEMON_DEFAULT_STATE_DIR);
    snprintf(c->devices, sizeof(c->devices), "cpu:1");
    c->heartbeat_ms = 1000;
    c->dead_after_ms = 5000;
    c->log_level = MP_LOG_INFO;
    snprintf(c->log_level_name, sizeof(c->log_level_name), "info");
}

static mp_status_t parse_bool(const char *v, bool *out_p)
{
    if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcmp(v, "1") ||
        !strcasecmp(v, "on")) {
        *out_p = true;
        return MP_OK;
    }
    if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcmp(v, "0") ||
        !strcasecmp(v, "off")) {
        *out_p = false;
        return MP_OK;
    }
    return MP_ERR_INVAL;
}

static mp_status_t parse_ms(const char *v, uint32_t *out_p)
{
    char *end;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < 10 || n > 3600000) {
        return MP_ERR_INVAL;
    }
    *out_p = (uint32_t)n;
    return MP_OK;
}

static mp_status_t copy_str(char *dst, size_t cap, const char *v)
{
    if (strlen(v) >= cap) {
        return MP_ERR_INVAL;
    }
    snprintf(dst, cap, "%s", v);
    return MP_OK;
}

/* The one setter: `key` is a flag name without dashes or an INI key
 * ("state-dir" and "state_dir" both work). */
static mp_status_t config_set(mp_daemon_config_t *c, const char *key_in, const char *v,
                              mp_errbuf_t *err)
{
    char key[64];
    snprintf(key, sizeof(key), "%s", key_in);
    for (char *p = key; *p; p++) {
        if (*p == '_') {
            *p = '-';
        }
    }
    mp_status_t st = MP_ERR_INVAL;
    const char *expect = "a value";
    if (!strcmp(key, "name")) {
        expect = "a name of letters, digits, '.', '_' or '-' (at most 63)";
        st = v[0] != '\0' ? copy_str(c->name, sizeof(c->name), v) : MP_ERR_INVAL;
        for (const char *p = v; st == MP_OK && *p; p++) {
            if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-') {
                st = MP_ERR_INVAL;
            }
        }
    } else if (!strcmp(key, "coordinator")) {
        expect = "true or false";
        st = parse_bool(v, &c->coordinator);
    } else if (!strcmp(key, "listen")) {
        struct sockaddr_storage ss;
        expect = "HOST:PORT with a numeric host";
        st = mp_daemon_addr_parse(v, &ss, NULL) == MP_OK ? copy_str(c->listen, sizeof(c->listen), v)
                                                         : MP_ERR_INVAL;
    } else if (!strcmp(key, "join")) {
        struct sockaddr_storage ss;
        expect = "HOST:PORT with a numeric host, or empty";
        st = v[0] == '\0' || mp_daemon_addr_parse(v, &ss, NULL) == MP_OK
                 ? copy_str(c->join, sizeof(c->join), v)
                 : MP_ERR_INVAL;
    } else if (!strcmp(key, "metrics-listen")) {
        struct sockaddr_storage ss;
        expect = "HOST:PORT with a numeric host, or empty (off)";
        st = v[0] == '\0' || mp_daemon_addr_parse(v, &ss, NULL) == MP_OK
                 ? copy_str(c->metrics_listen, sizeof(c->metrics_listen), v)
                 : MP_ERR_INVAL;
    } else if (!strcmp(key, "socket")) {
        expect = "a path shorter than 108 bytes";
        st = v[0] != '\0' && strlen(v) < 108 ? copy_str(c->socket_path, sizeof(c->socket_path), v)
                                             : MP_ERR_INVAL;
    } else if (!strcmp(key, "state-dir")) {
        expect = "a directory";
        st = v[0] != '\0' ? copy_str(c->state_dir, sizeof(c->state_dir), v) : MP_ERR_INVAL;
    } else if (!strcmp(key, "secret-file")) {
        expect = "a file path";
        st = copy_str(c->secret_file, sizeof(c->secret_file), v);
    } else if (!strcmp(key, "devices")) {
        mp_daemon_device_t devs[MP_DAEMON_MAX_DEVICES];
        int n;
        mp_errbuf_t derr;
        st = mp_daemon_devices_parse(v, devs, &n, &derr);
        if (st != MP_OK) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "devices: %s", derr.msg);
        }
        st = copy_str(c->devices, sizeof(c->devices), v);
    } else if (!strcmp(key, "heartbeat-ms")) {
        expect = "milliseconds, 10 to 3600000";
        st = parse_ms(v, &c->heartbeat_ms);
    } else if (!strcmp(key, "dead-after-ms")) {
        expect = "milliseconds, 10 to 3600000";
        st = parse_ms(v, &c->dead_after_ms);
    } else if (!strcmp(key, "log-level")) {
        expect = "err, warn, notice, info or debug";
        st = mp_log_level_parse(v, &c->log_level);
        if (st == MP_OK) {
            copy_str(c->log_level_name, sizeof(c->log_level_name), v);
        }
    } else {
        return mp_errbuf_set(err, MP_ERR_INVAL, "unknown setting '%s'", key_in);
    }
    if (st != MP_OK) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "%s: '%s' is not %s", key_in, v, expect);
    }
    return MP_OK;
}

typedef struct {
    mp_daemon_config_t *cfg;
    mp_errbuf_t *err;
    mp_status_t st;
} ini_ctx_t;

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
    ini_ctx_t *ctx = user;
    if (ctx->st != MP_OK) {
        return 0;
    }
    if (section[0] != '\0' && strcmp(section, "mpard") != 0) {
        ctx->st = mp_errbuf_set(ctx->err, MP_ERR_INVAL, "unknown section [%s]", section);
        return 0;
    }
    mp_errbuf_t e;
    if (config_set(ctx->cfg, name, value, &e) != MP_OK) {
        ctx->st = mp_errbuf_set(ctx->err, MP_ERR_INVAL, "%s", e.msg);
        return 0;
    }
    return 1;
}

void mp_daemon_config_usage(void)
{
    printf("usage: mpard [options]\n"
           "  --config FILE          INI configuration (default %s)\n"
           "  --name NAME            this node's name (default: the host name)\n"
           "  --coordinator          also hold the cluster state (membership, jobs)\n"
           "  --listen HOST:PORT     cluster listener of the coordinator (default 127.0.0.1:%d)\n"
           "  --join HOST:PORT       the coordinator to register with\n"
           "  --metrics-listen HOST:PORT  Prometheus text at GET /metrics over HTTP (default off)\n"
           "  --socket PATH          status socket (default %s)\n"
           "  --state-dir DIR        where jobs survive restarts (default %s)\n"
           "  --secret-file FILE     cluster secret (mode 0400); without it only loopback\n"
           "  --devices SPEC         cpu:N | cuda:all | cuda:0,1 | none (default cpu:1)\n"
           "  --heartbeat-ms N       heartbeat interval (default 1000)\n"
           "  --dead-after-ms N      a node is DEAD after this long without one (default 5000)\n"
           "  --log-level LEVEL      err | warn | notice | info | debug (default info)\n"
           "Every option is also a key of the [mpard] section of the config file.\n",
           MP_DAEMON_DEFAULT_CONFIG, MP_DAEMON_DEFAULT_PORT, MP_DAEMON_DEFAULT_SOCKET,
           MP_DAEMON_DEFAULT_STATE_DIR);
}

mp_status_t mp_daemon_config_load(int argc, char **argv, mp_daemon_config_t *cfg_p, bool *help_p,
                                  mp_errbuf_t *err)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"name", required_argument, NULL, 0},
        {"coordinator", no_argument, NULL, 'C'},
        {"listen", required_argument, NULL, 0},
        {"join", required_argument, NULL, 0},
        {"metrics-listen", required_argument, NULL, 0},
        {"socket", required_argument, NULL, 0},
        {"state-dir", required_argument, NULL, 0},
        {"secret-file", required_argument, NULL, 0},
        {"devices", required_argument, NULL, 0},
        {"heartbeat-ms", required_argument, NULL, 0},
        {"dead-after-ms", required_argument, NULL, 0},
        {"log-level", required_argument, NULL, 0},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    mp_daemon_config_t c;
    config_defaults(&c);
    *help_p = false;
    /* Pass 1: collect the flags; the file is read before they are applied. */
    struct {
        const char *key;
        const char *value;
    } set[64];
    int nset = 0;
    optind = 1;
    opterr = 0;
    for (;;) {
        int idx = -1;
        int ch = getopt_long(argc, argv, "", opts, &idx);
        if (ch == -1) {
            break;
        }
        if (ch == '?' || ch == ':') {
            return mp_errbuf_set(err, MP_ERR_INVAL, "unknown or incomplete option '%s'",
                                 argv[optind - 1]);
        }
        if (ch == 'h') {
            *help_p = true;
            return MP_OK;
        }
        if (ch == 'c') {
            if (copy_str(c.config_path, sizeof(c.config_path), optarg) != MP_OK) {
                return mp_errbuf_set(err, MP_ERR_INVAL, "--config: path too long");
            }
            c.config_given = true;
            continue;
        }
        if (nset == (int)(sizeof(set) / sizeof(set[0]))) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "too many options");
        }
        set[nset].key = opts[idx].name;
        set[nset].value = ch == 'C' ? "true" : optarg;
        nset++;
    }
    if (optind < argc) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "unexpected argument '%s'", argv[optind]);
    }
    if (c.config_given || access(c.config_path, F_OK) == 0) {
        ini_ctx_t ctx = {.cfg = &c, .err = err, .st = MP_OK};
        int rc = ini_parse(c.config_path, on_ini, &ctx);
        if (rc == -1) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "cannot open config file %s: %s", c.config_path,
                                 strerror(errno));
        }
        if (ctx.st != MP_OK) {
            char msg[sizeof(err->msg)];
            snprintf(msg, sizeof(msg), "%s", err->msg);
            /* ini_parse returns the line of the first error. */
            return mp_errbuf_set(err, MP_ERR_INVAL, "%s: line %d: %s", c.config_path, rc, msg);
        }
        if (rc != 0) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "%s: line %d: not KEY = VALUE", c.config_path,
                                 rc);
        }
    }
    for (int i = 0; i < nset; i++) {
        mp_errbuf_t e;
        if (config_set(&c, set[i].key, set[i].value, &e) != MP_OK) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "--%s", e.msg);
        }
    }
    if (c.dead_after_ms <= c.heartbeat_ms) {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "dead-after-ms (%u) must be larger than heartbeat-ms (%u)",
                             c.dead_after_ms, c.heartbeat_ms);
    }
    if (!c.coordinator && c.join[0] == '\0') {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "a node needs the coordinator's address: --join HOST:PORT (or run "
                             "it as --coordinator)");
    }
    *cfg_p = c;
    return MP_OK;
}

static int cuda_gpu_count(void)
{
    DIR *d = opendir("/proc/driver/nvidia/gpus");
    if (d == NULL) {
        return 0;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n;
}

mp_status_t mp_daemon_devices_parse(const char *spec, mp_daemon_device_t *devs, int *ndevs_p,
                                    mp_errbuf_t *err)
{
    int n = 0;
    if (!strcmp(spec, "none")) {
        *ndevs_p = 0;
        return MP_OK;
    }
    if (!strncmp(spec, "cpu:", 4)) {
        char *end;
        long k = strtol(spec + 4, &end, 10);
        if (end == spec + 4 || *end != '\0' || k < 1 || k > MP_DAEMON_MAX_DEVICES) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': cpu:N needs N from 1 to %d", spec,
                                 MP_DAEMON_MAX_DEVICES);
        }
        long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
        uint64_t mem = pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize : 0;
        for (int i = 0; i < k; i++) {
            devs[i].kind = MP_DEVKIND_CPU;
            devs[i].index = (uint32_t)i;
            devs[i].memory_bytes = mem / (uint64_t)k;
        }
        *ndevs_p = (int)k;
        return MP_OK;
    }
    if (!strcmp(spec, "cuda:all")) {
        n = cuda_gpu_count();
        if (n == 0) {
            return mp_errbuf_set(err, MP_ERR_NODEV,
                                 "'cuda:all': no NVIDIA GPU found (/proc/driver/nvidia/gpus)");
        }
        for (int i = 0; i < n && i < MP_DAEMON_MAX_DEVICES; i++) {
            devs[i].kind = MP_DEVKIND_CUDA;
            devs[i].index = (uint32_t)i;
            devs[i].memory_bytes = 0;
        }
        *ndevs_p = n < MP_DAEMON_MAX_DEVICES ? n : MP_DAEMON_MAX_DEVICES;
        return MP_OK;
    }
    if (!strncmp(spec, "cuda:", 5)) {
        const char *p = spec + 5;
        while (*p) {
            char *end;
            long k = strtol(p, &end, 10);
            if (end == p || k < 0 || k > 1023 || (*end != ',' && *end != '\0') ||
                n == MP_DAEMON_MAX_DEVICES) {
                return mp_errbuf_set(err, MP_ERR_INVAL,
                                     "'%s': expected cuda:all or cuda:I,J,... with indices", spec);
            }
            for (int i = 0; i < n; i++) {
                if (devs[i].index == (uint32_t)k) {
                    return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': GPU %ld named twice", spec, k);
                }
            }
            devs[n].kind = MP_DEVKIND_CUDA;
            devs[n].index = (uint32_t)k;
            devs[n].memory_bytes = 0;
            n++;
            p = *end == ',' ? end + 1 : end;
        }
        if (n == 0) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': no GPU index", spec);
        }
        *ndevs_p = n;
        return MP_OK;
    }
    return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': expected cpu:N, cuda:all, cuda:I,J or none",
                         spec);
}

mp_status_t mp_daemon_addr_parse(const char *hostport, struct sockaddr_storage *addr_p,
                                 mp_errbuf_t *err)
{
    char host[128];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || colon == hostport || (size_t)(colon - hostport) >= sizeof(host)) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "'%s' is not HOST:PORT", hostport);
    }
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port < 0 || port > 65535) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': port must be 0 to 65535", hostport);
    }
    memset(addr_p, 0, sizeof(*addr_p));
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr_p;
        if (inet_pton(AF_INET6, host + 1, &a6->sin6_addr) != 1) {
            return mp_errbuf_set(err, MP_ERR_INVAL, "'%s': bad IPv6 address", hostport);
        }
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return MP_OK;
    }
    if (!strcmp(host, "localhost")) {
        snprintf(host, sizeof(host), "127.0.0.1");
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr_p;
    if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
        return mp_errbuf_set(err, MP_ERR_INVAL,
                             "'%s': host must be a numeric IPv4 address, "
                             "[IPv6] or localhost",
                             hostport);
    }
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    return MP_OK;
}
