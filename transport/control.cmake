# Control-plane transport (owner: control): the handshake with HMAC-SHA256
# auth and framed connections on libuv streams, and the HTTP server of
# mpard's /metrics (requests parsed by libhttp-parser).  Library
# mp_ctl_transport.
add_library(mp_ctl_transport STATIC
  ${CMAKE_CURRENT_LIST_DIR}/auth.c
  ${CMAKE_CURRENT_LIST_DIR}/frame_conn.c
  ${CMAKE_CURRENT_LIST_DIR}/http.c
  ${CMAKE_CURRENT_LIST_DIR}/http_server.c)
target_include_directories(mp_ctl_transport PRIVATE ${HTTP_PARSER_INCLUDE})
target_link_libraries(mp_ctl_transport PUBLIC mp_proto mp_common PkgConfig::UV OpenSSL::Crypto
  ${HTTP_PARSER_LIB})
