# The CUDA backend against the CPU backend, op by op.  Registered in every
# build: without a GPU (or without nvcc) each test skips and says why.
mp_add_test(test_cuda SOURCES unit/test_cuda.c LIBS mp_gpu TIMEOUT 300)
