/*
 * test_placement.c - placing the pp x tp x dp grid: it fits, TP groups stay
 * inside one node, busy devices are skipped, the rank numbering round
 * trips, and a cluster that cannot hold the job is refused with a message
 * naming what is missing.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "parallel/placement.h"

static void check_valid(const mp_place_t *pl, const mp_place_node_t *nodes)
{
    for (int r = 0; r < pl->nranks; r++) {
        const mp_place_slot_t *a = &pl->slot[r];
        cr_assert(a->device >= 0 && a->device < nodes[a->node].ndevices);
        cr_assert(nodes[a->node].busy == NULL || !nodes[a->node].busy[a->device],
                  "rank %d on a busy device", r);
        cr_assert_eq(a->kind, nodes[a->node].kind);
        for (int q = 0; q < r; q++) {
            cr_assert(!(pl->slot[q].node == a->node && pl->slot[q].device == a->device),
                      "ranks %d and %d share node %d device %d", q, r, a->node, a->device);
        }
        int stage, tp_rank, dp_rank;
        mp_place_coords(pl->pp, pl->tp, r, &stage, &tp_rank, &dp_rank);
        /* A TP group stays inside one node. */
        int r0 = mp_place_rank(pl->pp, pl->tp, stage, 0, dp_rank);
        cr_assert_eq(pl->slot[r0].node, a->node, "rank %d leaves its TP group's node", r);
    }
}

Test(placement, rank_numbering_round_trips)
{
    int pp = 3, tp = 2, dp = 4, r = 0;
    for (int d = 0; d < dp; d++) {
        for (int s = 0; s < pp; s++) {
            for (int t = 0; t < tp; t++) {
                cr_assert_eq(mp_place_rank(pp, tp, s, t, d), r);
                int s2, t2, d2;
                mp_place_coords(pp, tp, r, &s2, &t2, &d2);
                cr_assert(s2 == s && t2 == t && d2 == d);
                r++;
            }
        }
    }
}

Test(placement, fits_filling_nodes_in_order)
{
    mp_place_node_t nodes[] = {
        {.name = "a", .kind = MP_DEV_CPU, .ndevices = 4},
        {.name = "b", .kind = MP_DEV_CUDA, .ndevices = 4},
    };
    mp_place_t pl;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_place_build(nodes, 2, 2, 2, 2, &pl, &err), MP_OK, "%s", err.msg);
    cr_assert_eq(pl.nranks, 8);
    check_valid(&pl, nodes);
    /* Replica 0 (stages 0 and 1) fills node a, replica 1 node b. */
    for (int r = 0; r < 8; r++) {
        cr_assert_eq(pl.slot[r].node, r / 4, "rank %d on node %d", r, pl.slot[r].node);
        cr_assert_eq(pl.slot[r].device, r % 4);
    }
    mp_place_free(&pl);
    cr_assert_null(pl.slot);
}

Test(placement, tp_group_never_splits_across_nodes)
{
    /* 3 + 3 devices hold 3 TP groups of 2 only if a group may span nodes;
     * it may not, so two groups fit and a third is refused. */
    mp_place_node_t nodes[] = {
        {.name = "a", .ndevices = 3},
        {.name = "b", .ndevices = 3},
    };
    mp_place_t pl;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_place_build(nodes, 2, 2, 2, 1, &pl, &err), MP_OK, "%s", err.msg);
    check_valid(&pl, nodes);
    cr_assert_eq(pl.slot[0].node, 0);
    cr_assert_eq(pl.slot[2].node, 1, "the second group starts on node b");
    mp_place_free(&pl);
    cr_assert_eq(mp_place_build(nodes, 2, 3, 2, 1, &pl, &err), MP_ERR_BUSY);
    cr_assert_str_eq(err.msg, "the job needs 3 TP groups of 2 devices each inside one node; the "
                              "cluster has node a (3 free devices), node b (3 free devices)");
}

Test(placement, skips_busy_devices)
{
    bool busy_a[4] = {true, false, true, false};
    bool busy_b[2] = {false, true};
    mp_place_node_t nodes[] = {
        {.name = "a", .ndevices = 4, .busy = busy_a},
        {.name = "b", .ndevices = 2, .busy = busy_b},
        {.name = "c", .ndevices = 2},
    };
    mp_place_t pl;
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_place_build(nodes, 3, 2, 2, 1, &pl, &err), MP_OK, "%s", err.msg);
    check_valid(&pl, nodes);
    cr_assert_eq(pl.slot[0].node, 0);
    cr_assert_eq(pl.slot[0].device, 1);
    cr_assert_eq(pl.slot[1].device, 3);
    cr_assert_eq(pl.slot[2].node, 2, "node b has one free device, too few for a group");
    mp_place_free(&pl);
}

Test(placement, refuses_naming_what_is_missing)
{
    mp_place_node_t nodes[] = {
        {.name = "a", .ndevices = 1},
        {.name = "b", .ndevices = 1},
    };
    mp_place_t pl = {.nranks = -5};
    mp_errbuf_t err = {{0}};
    cr_assert_eq(mp_place_build(nodes, 2, 2, 2, 2, &pl, &err), MP_ERR_BUSY);
    cr_assert_str_eq(err.msg, "the job needs 4 TP groups of 2 devices each inside one node; the "
                              "cluster has node a (1 free device), node b (1 free device)");
    cr_assert_eq(pl.nranks, -5, "output written on failure");
    cr_assert_eq(mp_place_build(nodes, 2, 3, 1, 1, &pl, &err), MP_ERR_BUSY);
    cr_assert_str_eq(err.msg,
                     "the job needs 3 devices; the cluster has node a (1 free device), node b "
                     "(1 free device)");
    cr_assert_eq(mp_place_build(nodes, 0, 1, 1, 1, &pl, &err), MP_ERR_BUSY);
    cr_assert_str_eq(err.msg, "the job needs 1 device; the cluster has no nodes");
    cr_assert_eq(mp_place_build(nodes, 2, 0, 1, 1, &pl, &err), MP_ERR_INVAL);
}
