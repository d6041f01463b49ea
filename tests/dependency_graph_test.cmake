# The layering the build must keep, checked on the build's own link lines:
# for each binary below, the libraries its link line names (the transitive
# closure of the library it tests, plus GoogleTest) must match none of the
# forbidden patterns. A library that starts to reach a forbidden one (a new
# target_link_libraries, a header-only split undone) fails this test.
#
#   cmake -DBUILD_NINJA=build/build.ninja -P tests/dependency_graph_test.cmake
#
# Checks (binary: library under test: what it must not reach):
#   tests/placement_test, tests/router_core_test: tandem_router;
#   tests/openai_front_test: tandem_openai_front:
#       no CUDA (cudart, tandem_cuda_*), no kernels, no UCX (ucp/ucs/uct),
#       no RocksDB, no kvstore/transfer/engine, no model weights (tandem_model)
#   tests/hf_config_test: tandem_model_info: the same
#   tests/kv_manager_test: tandem_engine_kv: no UCX, RocksDB, kvstore,
#       transfer, model, kernels or CUDA
#   tests/engine_test: tandem_engine: no UCX, RocksDB, kvstore or transfer
#   tests/sampler_test: tandem_sampler: no model, kernels, CUDA or KV
#
# The link lines come from build.ninja (the project builds with Ninja);
# another generator has none, and the test says so and fails.
if(NOT BUILD_NINJA OR NOT EXISTS "${BUILD_NINJA}")
  message(FATAL_ERROR "dependency_graph_test: no build.ninja at '${BUILD_NINJA}' (configure with -G Ninja)")
endif()

set(cuda "cudart|libcuda[.]|tandem_cuda_")
set(ucx "libuc[pst][.]|-luc[pst]( |$)|/ucx/")
set(rocksdb "rocksdb")
set(upper_kv "libtandem_kvstore|libtandem_transfer")
set(no_weights "${cuda}|libtandem_kernels[.]|${ucx}|${rocksdb}|${upper_kv}|libtandem_engine|libtandem_model[.]a")

set(checks
  "tests/placement_test=${no_weights}"
  "tests/router_core_test=${no_weights}"
  "tests/openai_front_test=${no_weights}"
  "tests/hf_config_test=${no_weights}"
  "tests/kv_manager_test=${cuda}|libtandem_kernels[.]|${ucx}|${rocksdb}|${upper_kv}|libtandem_model"
  "tests/engine_test=${ucx}|${rocksdb}|${upper_kv}"
  "tests/sampler_test=${cuda}|libtandem_kernels[.]|libtandem_model|libtandem_engine")

# Each "build OUTPUT ..." statement line, and its LINK_LIBRARIES variable line.
file(STRINGS "${BUILD_NINJA}" lines REGEX "^(build [^ :]+|  LINK_LIBRARIES = )")
set(current "")
foreach(line IN LISTS lines)
  if(line MATCHES "^build ([^ :]+)")
    set(current "${CMAKE_MATCH_1}")
  elseif(line MATCHES "^  LINK_LIBRARIES = (.*)$" AND NOT current STREQUAL "")
    string(MAKE_C_IDENTIFIER "${current}" key)
    set("link_${key}" "${CMAKE_MATCH_1}")
  endif()
endforeach()

set(failures "")
foreach(check IN LISTS checks)
  string(FIND "${check}" "=" eq)
  string(SUBSTRING "${check}" 0 ${eq} binary)
  math(EXPR start "${eq} + 1")
  string(SUBSTRING "${check}" ${start} -1 forbidden)
  string(MAKE_C_IDENTIFIER "${binary}" key)
  if(NOT DEFINED "link_${key}")
    string(APPEND failures "\n  ${binary}: no link line in build.ninja (target renamed or removed?)")
    continue()
  endif()
  separate_arguments(libs UNIX_COMMAND "${link_${key}}")
  set(bad "")
  foreach(lib IN LISTS libs)
    if(lib MATCHES "${forbidden}")
      list(APPEND bad "${lib}")
    endif()
  endforeach()
  if(bad)
    list(REMOVE_DUPLICATES bad)
    list(JOIN bad " " bad)
    string(APPEND failures "\n  ${binary} links ${bad}")
  else()
    message(STATUS "${binary}: clean")
  endif()
endforeach()

if(failures)
  message(FATAL_ERROR "dependency_graph_test: a library reaches a layer it must not:${failures}")
endif()
