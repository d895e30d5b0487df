# mpar-bench-xport: the UCX data plane against ucx_perftest and OpenMPI.
# It reuses the rank runner of the xport tests (no Criterion in it).
add_executable(mpar-bench-xport
  ${CMAKE_CURRENT_LIST_DIR}/xport.c
  ${CMAKE_SOURCE_DIR}/tests/unit/test_xport_harness.c)
target_link_libraries(mpar-bench-xport PRIVATE mp_bench mp_xport PkgConfig::JANSSON)

# The OpenMPI peer (bench/mpi_allreduce.c), run by mpar-bench-xport under mpirun.
find_package(MPI COMPONENTS C QUIET)
if(MPI_C_FOUND)
  add_executable(mpar-bench-xport-mpi ${CMAKE_CURRENT_LIST_DIR}/mpi_allreduce.c)
  target_link_libraries(mpar-bench-xport-mpi PRIVATE MPI::MPI_C)
  add_dependencies(mpar-bench-xport mpar-bench-xport-mpi)
else()
  message(STATUS "mpar: no MPI found; mpar-bench-xport reports allreduce without its OpenMPI peer")
endif()
