# Tests of gpu/: the CPU backend's ops, the layers, the optimizers, init.
mp_add_test(test_gemm SOURCES unit/test_gemm.c LIBS mp_gpu Threads::Threads TIMEOUT 120)
mp_add_test(test_layers SOURCES unit/test_layers.c LIBS mp_gpu TIMEOUT 120)
mp_add_test(test_seq_layers SOURCES unit/test_seq_layers.c LIBS mp_gpu TIMEOUT 120)
mp_add_test(test_optim SOURCES unit/test_optim.c LIBS mp_gpu TIMEOUT 60)
mp_add_test(test_init SOURCES unit/test_init.c LIBS mp_gpu TIMEOUT 60)
