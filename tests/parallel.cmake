# Tests of parallel/: schedules and their simulator, stage partitioning,
# placement, and the tensor-parallel plan's math.
mp_add_test(test_sched SOURCES unit/test_sched.c LIBS mp_parallel TIMEOUT 60)
mp_add_test(test_partition SOURCES unit/test_partition.c LIBS mp_parallel TIMEOUT 60)
mp_add_test(test_placement SOURCES unit/test_placement.c LIBS mp_parallel TIMEOUT 60)
mp_add_test(test_tpmath SOURCES unit/test_tpmath.c LIBS mp_parallel m TIMEOUT 60)
