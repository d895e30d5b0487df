# Tests of the control plane (owner: control): framing and auth units, the
# libFuzzer harness, and the multi-process integration tests.
mp_add_test(test_frame SOURCES unit/test_frame.c LIBS mp_proto TIMEOUT 60)
mp_add_test(test_auth SOURCES unit/test_auth.c LIBS mp_ctl_transport TIMEOUT 60)
