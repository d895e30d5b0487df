/*
 * curve.h - the learning curve of a run as an SVG picture: the training
 * loss of every step (thin) with its moving average, and the test loss at
 * each evaluation (dots, labelled), against steps.  Pure (writes to a
 * FILE); any thread but a libuv loop thread when the FILE is a file.
 */
#ifndef MP_ENGINE_CURVE_H
#define MP_ENGINE_CURVE_H

#include <stdint.h>
#include <stdio.h>

#include "common/status.h"

typedef struct {
    double step; /* the evaluation came after this many steps */
    double loss;
} mp_curve_point_t;

/*
 * Writes the curve of losses[0..nsteps) (step i + 1's mean training loss;
 * values that are not finite are left out of the line) and ntest test
 * points.  title is XML-escaped.  MP_ERR_INVAL when there is nothing to
 * draw (no finite loss at all).
 */
mp_status_t mp_curve_write_svg(FILE *out, const char *title, const double *losses,
                               int64_t nsteps, const mp_curve_point_t *test, int ntest);

#endif
