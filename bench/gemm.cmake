# mpar-bench-gemm: the CUDA backend's GEMM against torch.matmul (bench/torch_gemm.py).
# Built in every configuration; without CUDA it reports that there is no GPU.
add_executable(mpar-bench-gemm ${CMAKE_CURRENT_SOURCE_DIR}/gemm.c)
target_link_libraries(mpar-bench-gemm PRIVATE mp_gpu mp_common PkgConfig::JANSSON m)
target_compile_definitions(mpar-bench-gemm PRIVATE MP_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
