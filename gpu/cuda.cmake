# The CUDA backend of mp_gpu, included at the end of gpu/CMakeLists.txt.
# With nvcc (MP_HAVE_CUDA): backend_cuda.c + cuda_kernels.cu, cuBLAS from the
# toolkit, the CUDA runtime linked statically (so binaries need only the
# driver's libcuda and cuBLAS on the machine that runs them), SASS for
# sm_90 (H100/H200) plus compute_90 PTX that newer GPUs JIT-compile.
# Without nvcc: backend_cuda_none.c, whose entry points report "not built".
if(MP_HAVE_CUDA)
  target_sources(mp_gpu PRIVATE backend_cuda.c cuda_kernels.cu)
  set_target_properties(mp_gpu PROPERTIES
    CUDA_ARCHITECTURES "90-real;90-virtual"
    CUDA_RUNTIME_LIBRARY Static
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON)
  # Host-side warnings of the .cu file follow the project's C flags.
  set(MP_CUDA_WARN -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter)
  if(MP_WERROR)
    list(APPEND MP_CUDA_WARN -Werror=all-warnings -Xcompiler=-Werror)
  endif()
  target_compile_options(mp_gpu PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${MP_CUDA_WARN}>")
  target_compile_definitions(mp_gpu PUBLIC MP_HAVE_CUDA=1)
  target_link_libraries(mp_gpu PUBLIC CUDA::cublas CUDA::cudart_static)
else()
  target_sources(mp_gpu PRIVATE backend_cuda_none.c)
endif()
