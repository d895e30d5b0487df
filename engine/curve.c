/*
 * curve.c - the learning-curve SVG of a run (engine/curve.h): axes with
 * round tick values, the per-step training loss as a thin line, its
 * trailing moving average (about a fortieth of the run) as a thick one,
 * and the test evaluations as labelled dots.  Pure; owns nothing.
 */
#include "engine/curve.h"

#include <math.h>
#include <string.h>

#include "common/alloc.h"

#define CV_W 900.0
#define CV_H 440.0
#define CV_LEFT 70.0
#define CV_RIGHT 30.0
#define CV_TOP 50.0
#define CV_BOTTOM 50.0

/* A round step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over span. */
static double nice_step(double span, int ticks)
{
    double raw = span / ticks;
    double p = pow(10.0, floor(log10(raw)));
    double f = raw / p;
    return (f < 1.5 ? 1.0 : f < 3.5 ? 2.0 : f < 7.5 ? 5.0 : 10.0) * p;
}

static void xml_text(FILE *out, const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        switch (*s) {
        case '<':
            fputs("&lt;", out);
            break;
        case '>':
            fputs("&gt;", out);
            break;
        case '&':
            fputs("&amp;", out);
            break;
        case '"':
            fputs("&quot;", out);
            break;
        default:
            fputc(*s, out);
        }
    }
}

typedef struct {
    double x0, x1, y0, y1;
} cv_box_t;

static double px(const cv_box_t *b, double step)
{
    return CV_LEFT + (step - b->x0) / (b->x1 - b->x0) * (CV_W - CV_LEFT - CV_RIGHT);
}

static double py(const cv_box_t *b, double loss)
{
    return CV_H - CV_BOTTOM - (loss - b->y0) / (b->y1 - b->y0) * (CV_H - CV_TOP - CV_BOTTOM);
}

static void axes(FILE *out, const cv_box_t *b)
{
    double ys = nice_step(b->y1 - b->y0, 6);
    for (double v = ceil(b->y0 / ys) * ys; v <= b->y1 + 1e-9 * ys; v += ys) {
        fprintf(out,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                CV_LEFT, py(b, v), CV_W - CV_RIGHT, py(b, v), CV_LEFT - 6, py(b, v) + 4, v);
    }
    double xs = nice_step(b->x1 - b->x0, 8);
    if (xs < 1.0) {
        xs = 1.0;
    }
    for (double v = ceil(b->x0 / xs) * xs; v <= b->x1 + 1e-9 * xs; v += xs) {
        fprintf(out,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e4e4e4\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%g</text>\n",
                px(b, v), CV_TOP, px(b, v), CV_H - CV_BOTTOM, px(b, v), CV_H - CV_BOTTOM + 16,
                v);
    }
    fprintf(out,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#888\"/>\n"
            "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n"
            "<text x=\"16\" y=\"%.1f\" text-anchor=\"middle\" "
            "transform=\"rotate(-90 16 %.1f)\">loss</text>\n",
            CV_LEFT, CV_TOP, CV_W - CV_LEFT - CV_RIGHT, CV_H - CV_TOP - CV_BOTTOM,
            (CV_LEFT + CV_W - CV_RIGHT) / 2, CV_H - 12, (CV_TOP + CV_H - CV_BOTTOM) / 2,
            (CV_TOP + CV_H - CV_BOTTOM) / 2);
}

/* A polyline through the finite values of v[0..n) at steps 1..n. */
static void line(FILE *out, const cv_box_t *b, const double *v, int64_t n, const char *color,
                 double width)
{
    fprintf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" points=\"", color,
            width);
    for (int64_t i = 0; i < n; i++) {
        if (isfinite(v[i])) {
            fprintf(out, "%.1f,%.1f ", px(b, (double)(i + 1)), py(b, v[i]));
        }
    }
    fputs("\"/>\n", out);
}

mp_status_t mp_curve_write_svg(FILE *out, const char *title, const double *losses,
                               int64_t nsteps, const mp_curve_point_t *test, int ntest)
{
    double lo = INFINITY, hi = -INFINITY;
    for (int64_t i = 0; i < nsteps; i++) {
        if (isfinite(losses[i])) {
            lo = fmin(lo, losses[i]);
            hi = fmax(hi, losses[i]);
        }
    }
    if (!isfinite(lo)) {
        return MP_ERR_INVAL;
    }
    for (int i = 0; i < ntest; i++) {
        if (isfinite(test[i].loss)) {
            lo = fmin(lo, test[i].loss);
            hi = fmax(hi, test[i].loss);
        }
    }
    if (hi - lo < 1e-6) {
        hi = lo + 1.0;
    }
    double pad = 0.05 * (hi - lo);
    cv_box_t b = {0.0, (double)(nsteps > 1 ? nsteps : 2), fmax(0.0, lo - pad), hi + pad};
    double *avg = mp_malloc((size_t)nsteps * sizeof(double));
    if (avg == NULL) {
        return MP_ERR_NOMEM;
    }
    /* Trailing mean over the last w finite losses. */
    int64_t w = nsteps / 40 > 1 ? nsteps / 40 : 1;
    double sum = 0.0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < nsteps; i++) {
        if (isfinite(losses[i])) {
            sum += losses[i];
            cnt++;
        }
        if (i >= w && isfinite(losses[i - w])) {
            sum -= losses[i - w];
            cnt--;
        }
        avg[i] = cnt > 0 ? sum / (double)cnt : NAN;
    }

    fprintf(out,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "font-family=\"sans-serif\" font-size=\"11\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
            "<text x=\"10\" y=\"22\" font-size=\"14\">",
            CV_W, CV_H);
    xml_text(out, title != NULL ? title : "learning curve");
    fputs("</text>\n", out);
    axes(out, &b);
    line(out, &b, losses, nsteps, "#9ecae1", 1.0);
    if (w > 1) {
        line(out, &b, avg, nsteps, "#08519c", 2.0);
    }
    for (int i = 0; i < ntest; i++) {
        if (!isfinite(test[i].loss)) {
            continue;
        }
        double x = px(&b, test[i].step), y = py(&b, test[i].loss);
        fprintf(out,
                "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"#d62728\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#d62728\">test %.3f"
                "</text>\n",
                x, y, x - 8, y - 8, test[i].loss);
    }
    /* The legend, top right. */
    double lx = CV_W - CV_RIGHT - 250, ly = CV_TOP + 18;
    fprintf(out,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#9ecae1\"/>\n"
            "<text x=\"%.1f\" y=\"%.1f\">training loss, each step</text>\n",
            lx, ly, lx + 24, ly, lx + 30, ly + 4);
    if (w > 1) {
        fprintf(out,
                "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#08519c\" "
                "stroke-width=\"2\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\">mean of the last %lld steps</text>\n",
                lx, ly + 16, lx + 24, ly + 16, lx + 30, ly + 20, (long long)w);
    }
    if (ntest > 0) {
        fprintf(out,
                "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"#d62728\"/>\n"
                "<text x=\"%.1f\" y=\"%.1f\">test loss (held-out split)</text>\n",
                lx + 12, ly + 32, lx + 30, ly + 36);
    }
    fputs("</svg>\n", out);
    mp_free(avg);
    return ferror(out) ? MP_ERR_IO : MP_OK;
}
