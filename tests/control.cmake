# Tests of the control plane (owner: control): framing and auth units, the
# libFuzzer harness, and the multi-process integration tests.
mp_add_test(test_frame SOURCES unit/test_frame.c LIBS mp_proto TIMEOUT 60)
mp_add_test(test_auth SOURCES unit/test_auth.c LIBS mp_ctl_transport TIMEOUT 60)
mp_add_test(test_frame_json SOURCES unit/test_frame_json.c LIBS mp_proto TIMEOUT 60)
mp_add_test(test_frame_conn SOURCES unit/test_frame_conn.c LIBS mp_ctl_transport TIMEOUT 60)
mp_add_test(test_http SOURCES unit/test_http.c LIBS mp_ctl_transport TIMEOUT 60)

# Multi-process: a coordinator and 3 nodes on loopback (tests/integration/).
if(MP_TESTS)
  add_test(NAME control_cluster
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/control_cluster.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  # Its DEAD-within-a-heartbeat check is about timing: it does not share the
  # machine with the fuzzer.
  set_tests_properties(control_cluster PROPERTIES TIMEOUT 180 RESOURCE_LOCK mp_control_cpu)
endif()

# The systemd unit: verify and the offline security score.
if(MP_TESTS)
  add_test(NAME control_systemd_unit
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/control_systemd.sh
            ${CMAKE_SOURCE_DIR}/deploy/systemd/mpard.service $<TARGET_FILE:mpard>)
  set_tests_properties(control_systemd_unit PROPERTIES TIMEOUT 60)
endif()

# libFuzzer harnesses: the main build uses gcc; a harness is compiled by
# clang with ASan+UBSan in one command, from the same sources, and run for a
# bounded time from the seeds its writer makes.
find_program(MP_CLANG NAMES clang clang-14)
function(mp_add_fuzzer name)
  # ARGS: more compiler arguments (include folders, sources generated
  # elsewhere, which DEPENDS covers by their target).
  cmake_parse_arguments(F "" "TEST;SEEDS;SECONDS" "SOURCES;ARGS;LIBS;DEPENDS" ${ARGN})
  set(bin ${CMAKE_BINARY_DIR}/bin/${name})
  add_custom_command(
    OUTPUT ${bin}
    COMMAND ${MP_CLANG} -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined
            -fno-sanitize-recover=undefined -D_GNU_SOURCE -DMP_VERSION="${PROJECT_VERSION}"
            -I${CMAKE_SOURCE_DIR} ${F_ARGS} ${F_SOURCES} -o ${bin} ${F_LIBS}
    DEPENDS ${F_SOURCES} ${F_DEPENDS}
    COMMENT "clang libFuzzer harness ${name}"
    VERBATIM)
  add_custom_target(${name} ALL DEPENDS ${bin})
  add_test(NAME ${F_TEST}
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/run_fuzz.sh ${bin} $<TARGET_FILE:${F_SEEDS}>
            ${CMAKE_CURRENT_BINARY_DIR}/${name}-work ${F_SECONDS})
  set_tests_properties(${F_TEST} PROPERTIES TIMEOUT 180 RESOURCE_LOCK mp_control_cpu)
endfunction()

if(MP_TESTS AND MP_CLANG)
  # The frame decoder, every message's unpack and the handshake.
  add_executable(fuzz_seeds fuzz/seeds.c)
  target_link_libraries(fuzz_seeds PRIVATE mp_proto)
  mp_add_fuzzer(fuzz_frame TEST control_fuzz SEEDS fuzz_seeds SECONDS 45
    SOURCES ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_frame.c ${CMAKE_SOURCE_DIR}/proto/codec.c
            ${CMAKE_SOURCE_DIR}/proto/json.c ${CMAKE_SOURCE_DIR}/transport/auth.c
            ${CMAKE_SOURCE_DIR}/common/status.c ${CMAKE_SOURCE_DIR}/common/alloc.c
            ${CMAKE_SOURCE_DIR}/common/log.c
    ARGS -I${CMAKE_BINARY_DIR} ${MP_PROTO_GEN_C}
    LIBS ${PROTOBUFC_LDFLAGS} ${JANSSON_LDFLAGS} -lcrypto -lpthread
    DEPENDS ${CMAKE_SOURCE_DIR}/proto/mpar.proto mp_proto)
  # The HTTP request handling of mpard's metrics listener (transport/http.c
  # on libhttp-parser).
  add_executable(fuzz_http_seeds fuzz/seeds_http.c)
  mp_add_fuzzer(fuzz_http TEST control_fuzz_http SEEDS fuzz_http_seeds SECONDS 30
    SOURCES ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_http.c ${CMAKE_SOURCE_DIR}/transport/http.c
            ${CMAKE_SOURCE_DIR}/common/status.c ${CMAKE_SOURCE_DIR}/common/alloc.c
            ${CMAKE_SOURCE_DIR}/common/log.c
    ARGS -I${HTTP_PARSER_INCLUDE}
    LIBS ${HTTP_PARSER_LIB} -lpthread
    DEPENDS ${CMAKE_SOURCE_DIR}/transport/http.h)
endif()

# mpard's GET /metrics over HTTP against bad HTTP (garbage, oversized
# headers, a slow sender, wrong path and method, too many connections).
if(MP_TESTS)
  add_test(NAME control_metrics_http
    COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/integration/metrics_http.py $<TARGET_FILE:mpard>)
  set_tests_properties(control_metrics_http PROPERTIES TIMEOUT 60)
endif()

# A real Prometheus server scrapes a coordinator's /metrics (skipped, exit 77,
# without Debian's prometheus).
if(MP_TESTS AND TARGET mpard AND TARGET mpar-client)
  add_test(NAME control_metrics_prometheus
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/metrics_prometheus.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(control_metrics_prometheus PROPERTIES TIMEOUT 180 SKIP_RETURN_CODE 77)
endif()

# mpard's flags and config file, mpar-client's usage errors, socket permissions.
if(MP_TESTS)
  add_test(NAME control_config
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/control_config.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(control_config PROPERTIES TIMEOUT 60)
endif()

# Issue 13's probe of bad input: non-finite losses, submit-time checks, a
# FIFO as data, a stop with a blocked thread, capped and idle status readers.
if(MP_TESTS)
  add_test(NAME control_probe
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/integration/control_probe.sh
            $<TARGET_FILE:mpard> $<TARGET_FILE:mpar-client> ${CMAKE_SOURCE_DIR})
  set_tests_properties(control_probe PROPERTIES TIMEOUT 180)
endif()
