# The UCX data plane (ucx.c) and the collectives over it (coll.c): mp_xport.
add_library(mp_xport STATIC
  ${CMAKE_CURRENT_LIST_DIR}/ucx.c
  ${CMAKE_CURRENT_LIST_DIR}/coll.c)
target_link_libraries(mp_xport PUBLIC mp_common PkgConfig::UCX Threads::Threads)
