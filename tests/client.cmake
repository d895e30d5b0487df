# mpar-client run on a throwaway local cluster (tests/integration/client_run_local.sh).
if(MP_TESTS)
  add_test(NAME client_run_local
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_run_local.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
  set_tests_properties(client_run_local PROPERTIES TIMEOUT 400)
endif()

# mpar-client's conventions: global options in both orders, --help, exit codes.
if(MP_TESTS)
  add_test(NAME client_cli
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_cli.sh
                   $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(client_cli PROPERTIES TIMEOUT 120)
endif()

# mpar-client run on a text data set: a GPT on a local cluster equals the
# serial run; text files too short for a window are refused at start.
if(MP_TESTS)
  add_test(NAME client_run_text
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_run_text.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY} ${CMAKE_SOURCE_DIR})
  set_tests_properties(client_run_text PROPERTIES TIMEOUT 300)
endif()

# mpar-client verify: the job's grid against the serial run, tensor by tensor.
if(MP_TESTS)
  add_test(NAME client_verify
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_verify.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY})
  set_tests_properties(client_verify PROPERTIES TIMEOUT 300)
endif()

# mpar-client sample, and run's learning curve and closing sample of a text job.
if(MP_TESTS)
  add_test(NAME client_sample
           COMMAND ${CMAKE_SOURCE_DIR}/tests/integration/client_sample.sh
                   ${CMAKE_RUNTIME_OUTPUT_DIRECTORY} ${CMAKE_SOURCE_DIR})
  set_tests_properties(client_sample PROPERTIES TIMEOUT 300)
endif()
