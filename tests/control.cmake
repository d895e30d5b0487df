# Tests of the control plane (owner: control): framing and auth units, the
# libFuzzer harness, and the multi-process integration tests.
mp_add_test(test_frame SOURCES unit/test_frame.c LIBS mp_proto TIMEOUT 60)
mp_add_test(test_auth SOURCES unit/test_auth.c LIBS mp_ctl_transport TIMEOUT 60)

# Multi-process: a coordinator and 3 nodes on loopback (tests/integration/).
if(MP_TESTS)
  add_test(NAME control_cluster
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/control_cluster.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(control_cluster PROPERTIES TIMEOUT 180)
endif()
