# The CUDA backend, included at the end of gpu/CMakeLists.txt.
# mp_gpu always holds backend_cuda_loader.c, which opens the CUDA backend on
# first use.  With nvcc (MP_HAVE_CUDA) the backend itself, backend_cuda.c +
# cuda_kernels.cu, is the shared library lib/libmpar-cuda.so: cuBLAS from the
# toolkit, the CUDA runtime linked statically (so it needs only the driver's
# libcuda and cuBLAS on the machine that runs it), SASS for sm_90 (H100/H200)
# plus compute_90 PTX that newer GPUs JIT-compile.  Its mp_log/mp_malloc
# calls resolve against the executable, which therefore exports its symbols.
target_sources(mp_gpu PRIVATE backend_cuda_loader.c)
target_link_libraries(mp_gpu PUBLIC ${CMAKE_DL_LIBS})
target_link_options(mp_gpu INTERFACE -rdynamic)
if(MP_HAVE_CUDA)
  target_compile_definitions(mp_gpu PUBLIC MP_HAVE_CUDA=1)
  add_library(mpar_cuda SHARED backend_cuda.c cuda_kernels.cu)
  set_target_properties(mpar_cuda PROPERTIES
    OUTPUT_NAME mpar-cuda
    CUDA_ARCHITECTURES "90-real;90-virtual"
    CUDA_RUNTIME_LIBRARY Static
    CUDA_STANDARD 17
    CUDA_STANDARD_REQUIRED ON
    POSITION_INDEPENDENT_CODE ON)
  target_include_directories(mpar_cuda PRIVATE ${CMAKE_SOURCE_DIR})
  # Host-side warnings of the .cu file follow the project's C flags.
  set(MP_CUDA_WARN -Xcompiler=-Wall,-Wextra,-Wno-unused-parameter)
  if(MP_WERROR)
    list(APPEND MP_CUDA_WARN -Werror=all-warnings -Xcompiler=-Werror)
  endif()
  target_compile_options(mpar_cuda PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${MP_CUDA_WARN}>")
  target_compile_definitions(mpar_cuda PRIVATE MP_HAVE_CUDA=1)
  target_link_libraries(mpar_cuda PRIVATE CUDA::cublas CUDA::cudart_static)
  # Every program that may ask for CUDA finds the plugin in build/lib.
  add_dependencies(mp_gpu mpar_cuda)
  install(TARGETS mpar_cuda LIBRARY DESTINATION lib/mpar)
endif()
