/*
 * seeds.c - writes the seed corpus of fuzz_frame: one file per message type
 * of mpar.proto, each a byte choosing the chunking followed by a valid frame
 * (and one with two frames back to back).  usage: fuzz_seeds DIR
 */
#include <stdio.h>
#include <string.h>

#include "common/alloc.h"
#include "proto/codec.h"

static int n_written;

static int put(const char *dir, const char *name, const Mpar__Envelope *env, int twice)
{
    uint8_t *buf;
    size_t len;
    if (mp_frame_pack(env, MP_FRAME_MAX_DEFAULT, &buf, &len) != MP_OK) {
        fprintf(stderr, "fuzz_seeds: cannot pack %s\n", name);
        return 1;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s%s", dir, name, twice ? "-x2" : "");
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        perror(path);
        mp_free(buf);
        return 1;
    }
    uint8_t mode = (uint8_t)(twice ? 0x05 : 0x3f);
    fwrite(&mode, 1, 1, f);
    fwrite(buf, 1, len, f);
    if (twice) {
        fwrite(buf, 1, len, f);
    }
    fclose(f);
    mp_free(buf);
    n_written++;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_seeds DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    uint8_t nonce[32];
    memset(nonce, 7, sizeof(nonce));
    int bad = 0;
    Mpar__Envelope env;

#define SEED(field, CASE, value)                                                                   \
    mpar__envelope__init(&env);                                                                    \
    env.request_id = 9;                                                                            \
    env.msg_case = MPAR__ENVELOPE__MSG_##CASE;                                                     \
    env.field = &value;                                                                            \
    bad |= put(dir, #field, &env, 0);                                                              \
    bad |= put(dir, #field, &env, 1)

    Mpar__Hello hello = MPAR__HELLO__INIT;
    hello.version = 1;
    hello.nonce.data = nonce;
    hello.nonce.len = 32;
    hello.role = MPAR__PEER_ROLE__PEER_ROLE_NODE;
    hello.name = "n1";
    hello.software = "mpar";
    SEED(hello, HELLO, hello);
    Mpar__Challenge ch = MPAR__CHALLENGE__INIT;
    ch.version = 1;
    ch.nonce.data = nonce;
    ch.nonce.len = 32;
    ch.auth_required = 1;
    SEED(challenge, CHALLENGE, ch);
    Mpar__Auth auth = MPAR__AUTH__INIT;
    auth.mac.data = nonce;
    auth.mac.len = 32;
    SEED(auth, AUTH, auth);
    Mpar__Welcome w = MPAR__WELCOME__INIT;
    w.epoch = 3;
    w.mac.data = nonce;
    w.mac.len = 32;
    w.name = "c0";
    w.coordinator = 1;
    SEED(welcome, WELCOME, w);

    Mpar__Device dev = MPAR__DEVICE__INIT;
    dev.kind = MPAR__DEVICE_KIND__DEVICE_KIND_CUDA;
    dev.index = 1;
    dev.memory_bytes = 80ull << 30;
    dev.model = "H100";
    Mpar__Device *devs[2] = {&dev, &dev};
    Mpar__RegisterNode reg = MPAR__REGISTER_NODE__INIT;
    reg.name = "n1";
    reg.devices = devs;
    reg.n_devices = 2;
    reg.incarnation = 12345;
    reg.data_host = "10.0.0.2";
    reg.pid = 4242;
    SEED(register_node, REGISTER_NODE, reg);
    Mpar__NodeRegistered nr = MPAR__NODE_REGISTERED__INIT;
    nr.epoch = 3;
    nr.heartbeat_ms = 1000;
    nr.dead_after_ms = 5000;
    SEED(node_registered, NODE_REGISTERED, nr);
    Mpar__Heartbeat hb = MPAR__HEARTBEAT__INIT;
    hb.seq = 77;
    hb.sent_unix_ms = 1700000000000ull;
    SEED(heartbeat, HEARTBEAT, hb);
    Mpar__Goodbye gb = MPAR__GOODBYE__INIT;
    gb.reason = "stopping";
    SEED(goodbye, GOODBYE, gb);

    Mpar__SubmitJob sj = MPAR__SUBMIT_JOB__INIT;
    sj.spec_json =
        "{\"name\":\"x\",\"model\":{\"input\":4,\"layers\":[{\"type\":\"linear\",\"out\":2}],"
        "\"loss\":\"softmax_xent\"}}";
    sj.submitter = "alice";
    SEED(submit_job, SUBMIT_JOB, sj);
    Mpar__JobInfo ji = MPAR__JOB_INFO__INIT;
    ji.id = "7";
    ji.name = "x";
    ji.state = MPAR__JOB_STATE__JOB_STATE_PENDING;
    ji.reason = "queued";
    ji.pp = ji.tp = ji.dp = 2;
    ji.has_final_loss = 1;
    ji.final_loss = 0.25;
    Mpar__JobAccepted ja = MPAR__JOB_ACCEPTED__INIT;
    ja.job = &ji;
    SEED(job_accepted, JOB_ACCEPTED, ja);
    Mpar__JobInfo *jobs[1] = {&ji};
    Mpar__JobList jl = MPAR__JOB_LIST__INIT;
    jl.jobs = jobs;
    jl.n_jobs = 1;
    SEED(job_list, JOB_LIST, jl);
    Mpar__NodeInfo ni = MPAR__NODE_INFO__INIT;
    ni.name = "n1";
    ni.state = MPAR__NODE_STATE__NODE_STATE_SUSPECT;
    ni.devices = devs;
    ni.n_devices = 2;
    Mpar__NodeInfo *nodes[1] = {&ni};
    Mpar__NodeList nl = MPAR__NODE_LIST__INIT;
    nl.nodes = nodes;
    nl.n_nodes = 1;
    SEED(node_list, NODE_LIST, nl);
    Mpar__ListNodes ln = MPAR__LIST_NODES__INIT;
    SEED(list_nodes, LIST_NODES, ln);
    Mpar__ListJobs lj = MPAR__LIST_JOBS__INIT;
    SEED(list_jobs, LIST_JOBS, lj);
    Mpar__GetJob gj = MPAR__GET_JOB__INIT;
    gj.job_id = "7";
    SEED(get_job, GET_JOB, gj);
    Mpar__JobReply jr = MPAR__JOB_REPLY__INIT;
    jr.job = &ji;
    SEED(job_reply, JOB_REPLY, jr);
    Mpar__CancelJob cj = MPAR__CANCEL_JOB__INIT;
    cj.job_id = "7";
    SEED(cancel_job, CANCEL_JOB, cj);
    Mpar__WatchJob wj = MPAR__WATCH_JOB__INIT;
    wj.job_id = "7";
    wj.follow = 1;
    SEED(watch_job, WATCH_JOB, wj);
    Mpar__JobEvent ev = MPAR__JOB_EVENT__INIT;
    ev.job_id = "7";
    ev.state = MPAR__JOB_STATE__JOB_STATE_RUNNING;
    ev.message = "step 10";
    ev.has_loss = 1;
    ev.loss = 1.5;
    SEED(job_event, JOB_EVENT, ev);
    Mpar__Error er = MPAR__ERROR__INIT;
    er.code = MPAR__ERROR_CODE__ERROR_CODE_INVALID_SPEC;
    er.message = "parallel.tp: 3 does not divide";
    SEED(error, ERROR, er);
    Mpar__Ok ok = MPAR__OK__INIT;
    ok.message = "fine";
    SEED(ok, OK, ok);

    Mpar__ShardId sid = MPAR__SHARD_ID__INIT;
    sid.stage = 1;
    sid.tp_rank = 1;
    Mpar__ShardAssignment sa = MPAR__SHARD_ASSIGNMENT__INIT;
    sa.shard = &sid;
    sa.node = "n1";
    sa.device_kind = MPAR__DEVICE_KIND__DEVICE_KIND_CPU;
    sa.nlayers = 3;
    Mpar__ShardAssignment *sas[2] = {&sa, &sa};
    Mpar__JobAssignment jas = MPAR__JOB_ASSIGNMENT__INIT;
    jas.job_id = "7";
    jas.spec_json = "{}";
    jas.shards = sas;
    jas.n_shards = 2;
    SEED(job_assignment, JOB_ASSIGNMENT, jas);
    Mpar__ShardAddress addr = MPAR__SHARD_ADDRESS__INIT;
    addr.shard = &sid;
    addr.node = "n1";
    addr.ucx_address.data = nonce;
    addr.ucx_address.len = 32;
    Mpar__ShardReady sr = MPAR__SHARD_READY__INIT;
    sr.job_id = "7";
    sr.address = &addr;
    SEED(shard_ready, SHARD_READY, sr);
    Mpar__ShardAddress *addrs[1] = {&addr};
    Mpar__PeerAddresses pa = MPAR__PEER_ADDRESSES__INIT;
    pa.job_id = "7";
    pa.addresses = addrs;
    pa.n_addresses = 1;
    SEED(peer_addresses, PEER_ADDRESSES, pa);
    Mpar__JobStart js = MPAR__JOB_START__INIT;
    js.job_id = "7";
    SEED(job_start, JOB_START, js);
    Mpar__ShardReport rep = MPAR__SHARD_REPORT__INIT;
    rep.job_id = "7";
    rep.shard = &sid;
    rep.step = 5;
    rep.has_loss = 1;
    rep.loss = 0.5;
    SEED(shard_report, SHARD_REPORT, rep);
    Mpar__JobAbort ab = MPAR__JOB_ABORT__INIT;
    ab.job_id = "7";
    ab.reason = "peer died";
    SEED(job_abort, JOB_ABORT, ab);
#undef SEED
    printf("fuzz_seeds: %d seeds in %s\n", n_written, dir);
    return bad;
}
