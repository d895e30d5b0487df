# mpar-bench-pipeline's benchmark document (tests/integration/bench_pipeline_json.py):
# its shape and the bubble results' consistency, not their speed.
if(MP_TESTS AND TARGET mpar-bench-pipeline)
  add_test(NAME bench_pipeline_json
           COMMAND python3 ${CMAKE_SOURCE_DIR}/tests/integration/bench_pipeline_json.py
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
  set_tests_properties(bench_pipeline_json PROPERTIES TIMEOUT 600)
endif()
