# Tests of the model-parallel engine: the tensor-parallel model against the
# serial one (threads with in-memory collectives).
mp_add_test(test_engine_tpmodel SOURCES unit/test_engine_tpmodel.c LIBS mp_model mp_parallel
            Threads::Threads m TIMEOUT 120)
