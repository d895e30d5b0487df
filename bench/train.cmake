add_executable(mpar-bench-train ${CMAKE_CURRENT_SOURCE_DIR}/train.c)
target_link_libraries(mpar-bench-train PRIVATE mp_model mp_gpu mp_common PkgConfig::JANSSON m)
target_compile_definitions(mpar-bench-train PRIVATE MP_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
