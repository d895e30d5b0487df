# The PyTorch cross-check of the serial path (Debian's python3-torch).
if(MP_TESTS)
  add_test(NAME torch_crosscheck
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/ref/torch_check.py
                   $<TARGET_FILE:mpar-client>)
  set_tests_properties(torch_crosscheck PROPERTIES TIMEOUT 900)
endif()
# The PyTorch cross-check of the serial GPT and of `mpar-client sample`.
if(MP_TESTS)
  add_test(NAME torch_gpt_crosscheck
           COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/ref/torch_gpt_check.py
                   $<TARGET_FILE:mpar-client>)
  set_tests_properties(torch_gpt_crosscheck PROPERTIES TIMEOUT 600)
endif()
