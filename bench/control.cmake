# mpar-bench-control: status-socket requests/s (1 and 64 clients) and mpard's
# idle RSS with 3 nodes registered; it starts its own mpard processes.
add_executable(mpar-bench-control ${CMAKE_CURRENT_LIST_DIR}/control.c)
target_link_libraries(mpar-bench-control PRIVATE mp_common PkgConfig::JANSSON Threads::Threads)
add_dependencies(mpar-bench-control mpard)
