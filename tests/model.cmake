# Unit tests of model/: the job spec, the IDX reader, the data sets.
mp_add_test(test_spec SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_spec.c LIBS mp_model)
