# mpar-client run on a throwaway local cluster (tests/integration/client_run_local.sh).
if(MP_TESTS)
  add_test(NAME client_run_local
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_run_local.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
  set_tests_properties(client_run_local PROPERTIES TIMEOUT 400)
endif()
