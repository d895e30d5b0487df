/*
 * util.h - what every benchmark measures with: a monotonic clock in
 * seconds and the median of a sample (bench/util.c; the mp_bench library
 * of bench/CMakeLists.txt).
 */
#ifndef MP_BENCH_UTIL_H
#define MP_BENCH_UTIL_H

/* CLOCK_MONOTONIC in seconds. */
double mp_bench_now_s(void);
/* The median of v[0..n) (the mean of the middle two for an even n); sorts
 * v in place.  0 for n < 1. */
double mp_bench_median(double *v, int n);

#endif
