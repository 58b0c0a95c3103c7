# Duet's one change to llama.cpp (see verifier/KERNELS.md): a hook at the top of the CPU backend's
# matrix multiplication, through which the verifier runs its own batch-invariant quantised kernels.
#
# llama-cpp-sys-2 builds llama.cpp from its crate source, which must not be edited in place. Cargo
# passes this file to CMake as CMAKE_PROJECT_ggml_INCLUDE (.cargo/config.toml), so it runs right
# after ggml's project() call; at the end of ggml's directory it swaps ggml-cpu.c in the ggml-cpu
# target for a copy with the hook inserted. The edit is anchored on one line of upstream code and
# stops the build if that line is gone, so a new llama.cpp cannot silently lose the hook.

cmake_language(DEFER CALL duet_patch_ggml_cpu)

function(duet_patch_ggml_cpu)
    if (NOT TARGET ggml-cpu)
        message(FATAL_ERROR "duet: no ggml-cpu target to patch (GGML_BACKEND_DL builds are not supported)")
    endif()
    set(original "${CMAKE_CURRENT_SOURCE_DIR}/src/ggml-cpu/ggml-cpu.c")
    set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${original}")
    file(READ "${original}" text)

    set(anchor "    // If tiled is supported, it will execute the full op here and we return\n")
    string(FIND "${text}" "${anchor}" at)
    if (at EQUAL -1)
        message(FATAL_ERROR "duet: the anchor of the mul_mat hook is not in ${original}; rebase verifier/ggml/mul-mat-hook.cmake")
    endif()
    set(call "    // duet: the verifier's batch-invariant kernels take the whole product when they know its weights\n    if (duet_mul_mat_hook != NULL && !params->use_ref && duet_mul_mat_hook(dst, params->ith, params->nth)) {\n        return;\n    }\n\n")
    string(REPLACE "${anchor}" "${call}${anchor}" text "${text}")

    set(decl "// duet: see verifier/KERNELS.md\ntypedef bool (*duet_mul_mat_hook_t)(const struct ggml_tensor * dst, int ith, int nth);\nstatic duet_mul_mat_hook_t duet_mul_mat_hook = NULL;\nGGML_BACKEND_API void duet_ggml_set_mul_mat_hook(duet_mul_mat_hook_t hook) { duet_mul_mat_hook = hook; }\n\n")
    set(before "void ggml_compute_forward_mul_mat(\n")
    string(FIND "${text}" "${before}" at)
    if (at EQUAL -1)
        message(FATAL_ERROR "duet: ggml_compute_forward_mul_mat is not in ${original}; rebase verifier/ggml/mul-mat-hook.cmake")
    endif()
    string(REPLACE "${before}" "${decl}${before}" text "${text}")

    set(patched "${CMAKE_CURRENT_BINARY_DIR}/duet/ggml-cpu.c")
    file(WRITE "${patched}" "${text}")

    get_target_property(sources ggml-cpu SOURCES)
    list(TRANSFORM sources REPLACE "^ggml-cpu/ggml-cpu\\.c$" "${patched}")
    list(FIND sources "${patched}" found)
    if (found EQUAL -1)
        message(FATAL_ERROR "duet: ggml-cpu/ggml-cpu.c is not a source of ggml-cpu; rebase verifier/ggml/mul-mat-hook.cmake")
    endif()
    set_property(TARGET ggml-cpu PROPERTY SOURCES "${sources}")
    target_include_directories(ggml-cpu PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src/ggml-cpu")
    message(STATUS "duet: ggml-cpu.c carries the verifier's mul_mat hook")
endfunction()
