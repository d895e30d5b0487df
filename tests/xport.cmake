# The UCX data plane and collectives: each test executable runs twice,
# with UCX_TLS unset (shared memory within a node) and with UCX_TLS=tcp
# (the transport between hosts; over loopback here).
function(mp_xport_test name)
  mp_add_test(${name} SOURCES ${ARGN} unit/test_xport_harness.c LIBS mp_xport TIMEOUT 240)
  if(TARGET ${name})
    add_test(NAME ${name}_tcp COMMAND ${name} --jobs 1)
    set_tests_properties(${name}_tcp PROPERTIES TIMEOUT 240 ENVIRONMENT "UCX_TLS=tcp")
  endif()
endfunction()
mp_xport_test(test_xport unit/test_xport.c)
mp_xport_test(test_coll unit/test_coll.c)
