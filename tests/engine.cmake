# Tests of the model-parallel engine: the tensor-parallel model against the
# serial one (threads with in-memory collectives).
mp_add_test(test_engine_tpmodel SOURCES unit/test_engine_tpmodel.c LIBS mp_model mp_parallel
            Threads::Threads m TIMEOUT 120)
# The GPT kinds through the model: finite differences, B + W, TP = serial.
mp_add_test(test_gpt_model SOURCES unit/test_gpt_model.c LIBS mp_model mp_parallel
            Threads::Threads m TIMEOUT 300)
# The engine against the serial trainer: shard threads over real UCX workers.
if(TARGET mp_engine)
  mp_add_test(test_engine_equiv SOURCES unit/test_engine_equiv.c LIBS mp_engine TIMEOUT 600)
endif()
if(TARGET mp_engine)
  mp_add_test(test_engine_fail SOURCES unit/test_engine_fail.c LIBS mp_engine TIMEOUT 180)
endif()
if(TARGET mp_engine)
  mp_add_test(test_engine_timeline SOURCES unit/test_engine_timeline.c LIBS mp_engine
              TIMEOUT 120)
endif()
if(TARGET mp_engine)
  # The engine split across processes as the daemons run it.
  mp_add_test(test_engine_procs SOURCES integration/test_engine_procs.c LIBS mp_engine
              TIMEOUT 180)
  if(TARGET test_engine_procs)
    # Over TCP too: the transport between hosts (loopback here).
    add_test(NAME test_engine_procs_tcp COMMAND test_engine_procs --jobs 1)
    set_tests_properties(test_engine_procs_tcp PROPERTIES TIMEOUT 180 ENVIRONMENT "UCX_TLS=tcp")
  endif()
endif()
if(TARGET mp_engine)
  mp_add_test(test_engine_trace SOURCES unit/test_engine_trace.c LIBS mp_engine
              PkgConfig::JANSSON TIMEOUT 60)
endif()
if(TARGET mp_engine)
  mp_add_test(test_engine_calib SOURCES unit/test_engine_calib.c LIBS mp_engine TIMEOUT 60)
endif()
if(TARGET mp_engine)
  # The feeder's micro-batches of multi-label (text) samples over a real UCX worker.
  mp_add_test(test_engine_feeder SOURCES unit/test_engine_feeder.c LIBS mp_engine TIMEOUT 60)
endif()
if(TARGET mp_engine)
  mp_add_test(test_engine_curve SOURCES unit/test_engine_curve.c LIBS mp_engine TIMEOUT 60)
endif()
