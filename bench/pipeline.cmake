# mpar-bench-pipeline: measured pipeline bubble, activation memory and pp=2 throughput.
if(TARGET mp_engine)
  add_executable(mpar-bench-pipeline ${CMAKE_CURRENT_SOURCE_DIR}/pipeline.c)
  target_link_libraries(mpar-bench-pipeline PRIVATE mp_bench mp_engine PkgConfig::JANSSON m)
  target_compile_definitions(mpar-bench-pipeline PRIVATE MP_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
endif()
