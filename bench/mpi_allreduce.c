/*
 * mpi_allreduce.c - the OpenMPI peer of mpar-bench-xport's allreduce_busbw:
 * times MPI_Allreduce(MPI_SUM, MPI_FLOAT) of BYTES bytes, in place, over
 * every rank of MPI_COMM_WORLD, and prints one line on rank 0:
 *   mpi_allreduce ranks=N bytes=B iters=I avg_s=T
 * where T is the slowest rank's mean time per call.  Run by the bench
 * under mpirun; single-threaded.
 *
 * Usage: mpar-bench-xport-mpi BYTES ITERS WARMUP
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 4) {
        if (rank == 0) {
            fprintf(stderr, "usage: %s BYTES ITERS WARMUP\n", argv[0]);
        }
        MPI_Finalize();
        return 2;
    }
    long bytes = atol(argv[1]);
    int iters = atoi(argv[2]), warm = atoi(argv[3]);
    int count = (int)(bytes / (long)sizeof(float));
    float *buf = malloc((size_t)(count > 0 ? count : 1) * sizeof(float));
    if (buf == NULL || iters <= 0) {
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int i = 0; i < count; i++) {
        buf[i] = (float)((i + rank) % 7) * 0.25f;
    }
    for (int i = 0; i < warm; i++) {
        MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    for (int i = 0; i < iters; i++) {
        MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    double mine = (MPI_Wtime() - t0) / iters, slowest = 0;
    MPI_Reduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("mpi_allreduce ranks=%d bytes=%ld iters=%d avg_s=%.9f\n", size, bytes, iters,
               slowest);
        fflush(stdout);
    }
    free(buf);
    MPI_Finalize();
    return 0;
}
