# Unit tests of model/: the job spec, the IDX reader, the data sets.
mp_add_test(test_spec SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_spec.c LIBS mp_model)
mp_add_test(test_idx SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_idx.c LIBS mp_model ZLIB::ZLIB)
mp_add_test(test_data SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_data.c LIBS mp_model
            TIMEOUT 120)
# Checkpoint files: the safetensors format and the checkpoint layout, reshards.
mp_add_test(test_safetensors SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_safetensors.c
            LIBS mp_model)
mp_add_test(test_ckpt SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_ckpt.c
            LIBS mp_model mp_parallel TIMEOUT 60)
mp_add_test(test_npy SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_npy.c LIBS mp_model)
mp_add_test(test_sample SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/unit/test_sample.c LIBS mp_model)
