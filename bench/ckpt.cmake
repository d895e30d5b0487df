add_executable(mpar-bench-ckpt ${CMAKE_CURRENT_SOURCE_DIR}/ckpt.c)
target_link_libraries(mpar-bench-ckpt PRIVATE mp_bench mp_model mp_gpu mp_common PkgConfig::JANSSON m)
target_compile_definitions(mpar-bench-ckpt PRIVATE MP_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
