/*
 * placement.c - greedy placement of the pp x tp x dp grid on nodes, TP
 * groups kept inside one node; the refusal names what is missing.  Owns the
 * slot array it returns; pure, any thread.
 */
#include "parallel/placement.h"

#include <stdio.h>
#include <string.h>

#include "common/alloc.h"

int mp_place_rank(int pp, int tp, int stage, int tp_rank, int dp_rank)
{
    return (dp_rank * pp + stage) * tp + tp_rank;
}

void mp_place_coords(int pp, int tp, int rank, int *stage_p, int *tp_rank_p, int *dp_rank_p)
{
    *tp_rank_p = rank % tp;
    *stage_p = (rank / tp) % pp;
    *dp_rank_p = rank / (tp * pp);
}

static int free_devices(const mp_place_node_t *node)
{
    int n = 0;
    for (int d = 0; d < node->ndevices; d++) {
        if (node->busy == NULL || !node->busy[d]) {
            n++;
        }
    }
    return n;
}

static mp_status_t refuse(const mp_place_node_t *nodes, int nnodes, int groups, int tp,
                          mp_errbuf_t *err)
{
    char have[768];
    size_t len = 0;
    have[0] = '\0';
    for (int i = 0; i < nnodes; i++) {
        int nfree = free_devices(&nodes[i]);
        char one[160];
        snprintf(one, sizeof(one), "%snode %s (%d free device%s)", i > 0 ? ", " : "",
                 nodes[i].name != NULL ? nodes[i].name : "?", nfree, nfree == 1 ? "" : "s");
        size_t n = strlen(one);
        if (len + n + 8 >= sizeof(have)) {
            snprintf(have + len, sizeof(have) - len, ", ...");
            break;
        }
        memcpy(have + len, one, n + 1);
        len += n;
    }
    if (nnodes == 0) {
        snprintf(have, sizeof(have), "no nodes");
    }
    if (tp == 1) {
        return mp_errbuf_set(err, MP_ERR_BUSY, "the job needs %d device%s; the cluster has %s",
                             groups, groups == 1 ? "" : "s", have);
    }
    return mp_errbuf_set(err, MP_ERR_BUSY,
                         "the job needs %d TP group%s of %d devices each inside one node; the "
                         "cluster has %s",
                         groups, groups == 1 ? "" : "s", tp, have);
}

mp_status_t mp_place_build(const mp_place_node_t *nodes, int nnodes, int pp, int tp, int dp,
                           mp_place_t *place_p, mp_errbuf_t *err)
{
    if (pp < 1 || tp < 1 || dp < 1 || nnodes < 0) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "placement: grid pp=%d tp=%d dp=%d is not a grid",
                             pp, tp, dp);
    }
    if ((long long)pp * tp * dp > 1 << 20) {
        return mp_errbuf_set(err, MP_ERR_INVAL, "placement: grid pp=%d tp=%d dp=%d is too large",
                             pp, tp, dp);
    }
    int groups = pp * dp;
    long long capacity = 0;
    for (int i = 0; i < nnodes; i++) {
        capacity += free_devices(&nodes[i]) / tp;
    }
    if (capacity < groups) {
        return refuse(nodes, nnodes, groups, tp, err);
    }
    int nranks = groups * tp;
    mp_place_slot_t *slot = mp_malloc(sizeof(*slot) * (size_t)nranks);
    if (slot == NULL) {
        return mp_errbuf_set(err, MP_ERR_NOMEM, "placement: out of memory");
    }
    int node = 0;
    int next_dev = 0; /* first device of `node` not yet considered */
    for (int g = 0; g < groups; g++) {
        /* Move on until a node has tp free devices from next_dev on. */
        for (;;) {
            int nfree = 0;
            for (int d = next_dev; d < nodes[node].ndevices; d++) {
                if (nodes[node].busy == NULL || !nodes[node].busy[d]) {
                    nfree++;
                }
            }
            if (nfree >= tp) {
                break;
            }
            node++;
            next_dev = 0;
        }
        int base = g * tp; /* group g = dp_rank * pp + stage, rank = g * tp + tp_rank */
        for (int r = 0; r < tp; r++) {
            while (nodes[node].busy != NULL && nodes[node].busy[next_dev]) {
                next_dev++;
            }
            slot[base + r] =
                (mp_place_slot_t){.node = node, .device = next_dev, .kind = nodes[node].kind};
            next_dev++;
        }
    }
    *place_p = (mp_place_t){.pp = pp, .tp = tp, .dp = dp, .nranks = nranks, .slot = slot};
    return MP_OK;
}

void mp_place_free(mp_place_t *place)
{
    if (place != NULL) {
        mp_free(place->slot);
        place->slot = NULL;
        place->nranks = 0;
    }
}
