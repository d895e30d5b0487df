# Control-plane transport (owner: control): the handshake with HMAC-SHA256
# auth and framed connections on libuv streams.  Library mp_ctl_transport.
add_library(mp_ctl_transport STATIC
  ${CMAKE_CURRENT_LIST_DIR}/auth.c
  ${CMAKE_CURRENT_LIST_DIR}/frame_conn.c)
target_link_libraries(mp_ctl_transport PUBLIC mp_proto mp_common PkgConfig::UV OpenSSL::Crypto)
