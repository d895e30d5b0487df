/*
 * test_engine_curve.c - the learning-curve SVG (engine/curve.c): one line
 * point per finite loss (NaN steps left out, not drawn as zero), a moving
 * average on long runs, a labelled dot per test evaluation, an escaped
 * title, and a refusal when there is nothing to draw.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/curve.h"

static char *render(const char *title, const double *l, int64_t n, const mp_curve_point_t *t,
                    int nt, mp_status_t *st_p)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    cr_assert_not_null(f);
    *st_p = mp_curve_write_svg(f, title, l, n, t, nt);
    fclose(f);
    return buf;
}

/* Points of the n-th polyline of an SVG (0-based). */
static int polyline_points(const char *svg, int which)
{
    const char *p = svg;
    for (int i = 0; i <= which; i++) {
        p = strstr(p, "<polyline");
        if (p == NULL) {
            return -1;
        }
        p += 9;
    }
    p = strstr(p, "points=\"") + 8;
    int n = 0;
    for (; *p != '"'; p++) {
        n += *p == ',';
    }
    return n;
}

Test(curve, draws_every_finite_step_and_the_test_points)
{
    double l[200];
    for (int i = 0; i < 200; i++) {
        l[i] = 5.0 * exp(-i / 50.0) + 1.0;
    }
    l[17] = NAN;
    mp_curve_point_t t[2] = {{100, 2.1}, {200, 1.6}};
    mp_status_t st;
    char *svg = render("gpt <demo> & co", l, 200, t, 2, &st);
    cr_assert_eq(st, MP_OK);
    cr_assert(strncmp(svg, "<svg ", 5) == 0);
    cr_assert(strstr(svg, "</svg>\n") != NULL);
    cr_assert_eq(polyline_points(svg, 0), 199, "the NaN step is left out");
    cr_assert_eq(polyline_points(svg, 1), 200, "the moving average covers every step");
    cr_assert(strstr(svg, "test 2.100") != NULL);
    cr_assert(strstr(svg, "test 1.600") != NULL);
    cr_assert(strstr(svg, "mean of the last 5 steps") != NULL, "%s", svg);
    cr_assert(strstr(svg, "gpt &lt;demo&gt; &amp; co") != NULL);
    free(svg);
}

Test(curve, a_short_run_has_no_moving_average)
{
    double l[3] = {3.0, 2.0, 2.5};
    mp_status_t st;
    char *svg = render("short", l, 3, NULL, 0, &st);
    cr_assert_eq(st, MP_OK);
    cr_assert_eq(polyline_points(svg, 0), 3);
    cr_assert_eq(polyline_points(svg, 1), -1);
    cr_assert(strstr(svg, "<circle") == NULL);
    free(svg);
}

Test(curve, refuses_a_run_without_a_finite_loss)
{
    double l[2] = {NAN, INFINITY};
    mp_status_t st;
    char *svg = render("none", l, 2, NULL, 0, &st);
    cr_assert_eq(st, MP_ERR_INVAL);
    free(svg);
    svg = render("empty", l, 0, NULL, 0, &st);
    cr_assert_eq(st, MP_ERR_INVAL);
    free(svg);
}
