# Jobs on a cluster of mpard daemons (owner: wiring): equivalence with the
# serial run through real daemons, and failure/cancel handling.  Each test
# starts its own coordinator and nodes on loopback (tests/integration/).
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME engine_daemon_equiv
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/engine_daemon_equiv.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(engine_daemon_equiv PROPERTIES TIMEOUT 300)
endif()
# The GPT on its grids through real daemons, against the serial run.
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME engine_daemon_gpt
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/engine_daemon_gpt.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(engine_daemon_gpt PROPERTIES TIMEOUT 400)
endif()
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME engine_daemon_fail
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/engine_daemon_fail.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  # Its FAILED-within-the-heartbeat-timeout check is about timing: it does
  # not share the machine with the fuzzer or the control plane's timing test.
  set_tests_properties(engine_daemon_fail PROPERTIES TIMEOUT 300 RESOURCE_LOCK mp_control_cpu)
endif()
# A cluster whose coordinator and nodes each run in their own network
# namespace (root only; skips, saying why, elsewhere): jobs across "hosts"
# over UCX tcp, a cut link, lossy links.
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME netns_cluster
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/netns_cluster.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  # FAILED within the heartbeat timeout is a timing check, like engine_daemon_fail's.
  set_tests_properties(netns_cluster PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77
                       RESOURCE_LOCK mp_control_cpu)
endif()
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME engine_daemon_waits
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/engine_daemon_waits.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  # `waits` names a SIGSTOPped node within seconds: not beside the fuzzers.
  set_tests_properties(engine_daemon_waits PROPERTIES TIMEOUT 240 RESOURCE_LOCK mp_control_cpu)
endif()
# Checkpoints and restarts (owner: ckpt): the fault matrix (a node, a node
# inside a checkpoint write, the coordinator inside a commit and mid-job)
# ends SUCCEEDED bit-equal to the uninterrupted run, and only failures count
# against max_restarts (not a coordinator's restart); reshards and refusals.
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME ckpt_faults
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/ckpt_faults.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(ckpt_faults PROPERTIES TIMEOUT 600)
endif()
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME ckpt_reshard
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/ckpt_reshard.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(ckpt_reshard PROPERTIES TIMEOUT 400)
endif()
