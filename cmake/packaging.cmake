# Installed packages of the library (issue 19), included from CMakeLists.txt:
#   bin/modelshrink
#   lib/libmodelshrink.so.MAJOR (-> .so.MAJOR.MINOR.PATCH), lib/libmodelshrink.a
#   include/modelshrink.h, share/modelshrink/schema/*.schema.json
#   lib/pkgconfig/modelshrink.pc, lib/cmake/modelshrink/ (find_package(modelshrink))
#   share/man/man1/modelshrink.1, share/bash-completion/completions/modelshrink
#   share/doc/modelshrink/ (LICENSE, README.md)
# Both libraries are made from the objects of libmsh.a (compiled once, PIC, hidden visibility).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MSH_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/modelshrink")
set(MSH_PUBLIC_INCLUDE $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

# ---- libmodelshrink.so: exports exactly the MSH_API functions of include/modelshrink.h ----
add_library(modelshrink_shared SHARED ${MSH_ALL_OBJECTS})
add_dependencies(modelshrink_shared ${MSH_OBJECT_LIBS})
set_target_properties(modelshrink_shared PROPERTIES
  OUTPUT_NAME modelshrink
  EXPORT_NAME modelshrink
  LINKER_LANGUAGE C
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR})
target_include_directories(modelshrink_shared INTERFACE ${MSH_PUBLIC_INCLUDE})
target_link_libraries(modelshrink_shared PRIVATE ${MSH_LINK_DEPS})
if(NOT MSH_SANITIZE)
  # Every library it uses is named (clang's sanitizer runtimes are left for the program).
  target_link_options(modelshrink_shared PRIVATE LINKER:-z,defs)
endif()

# ---- libmodelshrink.a: one pre-linked object ----
# The library's objects are linked into one relocatable object (cc -r) whose hidden symbols are
# then made local (objcopy --localize-hidden). The archive so defines the MSH_API functions and
# nothing else: a program that links it keeps its own zip_*, onnx__* (protobuf-c) or NVTX
# symbols without clashes, and the internals are not an interface anyone can start using.
if(NOT CMAKE_OBJCOPY)
  message(FATAL_ERROR "objcopy (binutils) not found: it makes libmodelshrink.a")
endif()
set(_msh_prelinked
    "${CMAKE_CURRENT_BINARY_DIR}/prelink/$<CONFIG>/modelshrink_all${CMAKE_C_OUTPUT_EXTENSION}")
add_custom_command(
  OUTPUT "${_msh_prelinked}"
  COMMAND "${CMAKE_COMMAND}" -E make_directory "${CMAKE_CURRENT_BINARY_DIR}/prelink/$<CONFIG>"
  COMMAND "${CMAKE_C_COMPILER}" -r -nostdlib -o "${_msh_prelinked}.r" ${MSH_ALL_OBJECTS}
  COMMAND "${CMAKE_OBJCOPY}" --localize-hidden "${_msh_prelinked}.r" "${_msh_prelinked}"
  COMMAND "${CMAKE_COMMAND}" -E rm -f "${_msh_prelinked}.r"
  DEPENDS ${MSH_ALL_OBJECTS}
  COMMENT "Pre-linking libmodelshrink.a (only the MSH_API functions stay global)"
  COMMAND_EXPAND_LISTS VERBATIM)
add_library(modelshrink_static STATIC "${_msh_prelinked}")
add_dependencies(modelshrink_static ${MSH_OBJECT_LIBS})
set_target_properties(modelshrink_static PROPERTIES
  OUTPUT_NAME modelshrink
  EXPORT_NAME modelshrink_static
  LINKER_LANGUAGE C)
target_include_directories(modelshrink_static INTERFACE ${MSH_PUBLIC_INCLUDE})
# What a static link needs. modelshrinkConfig.cmake makes the pkg-config targets again, under
# names of its own (PkgConfig::modelshrink_<name>), so as not to take a user's.
foreach(_dep ${MSH_LINK_DEPS})
  if(_dep MATCHES "^PkgConfig::(.*)$")
    string(TOLOWER "${CMAKE_MATCH_1}" _name)
    target_link_libraries(modelshrink_static PRIVATE
      "$<BUILD_INTERFACE:${_dep}>$<INSTALL_INTERFACE:PkgConfig::modelshrink_${_name}>")
  else()
    target_link_libraries(modelshrink_static PRIVATE ${_dep})
  endif()
endforeach()

# ---- the manual page and the bash completion, from src/cli/usage.c's table ----
add_executable(modelshrink-gendoc src/cli/gendoc.c src/cli/usage.c)
target_include_directories(modelshrink-gendoc PRIVATE include)
target_compile_options(modelshrink-gendoc PRIVATE ${MSH_WARNINGS})
set(MSH_DOC_DIR "${CMAKE_BINARY_DIR}/doc")
set(MSH_MANPAGE "${MSH_DOC_DIR}/modelshrink.1")
set(MSH_COMPLETION "${MSH_DOC_DIR}/modelshrink.bash")
file(MAKE_DIRECTORY "${MSH_DOC_DIR}")
add_custom_command(
  OUTPUT "${MSH_MANPAGE}"
  COMMAND modelshrink-gendoc man "${MSH_MANPAGE}"
  DEPENDS modelshrink-gendoc
  COMMENT "Generating modelshrink.1")
add_custom_command(
  OUTPUT "${MSH_COMPLETION}"
  COMMAND modelshrink-gendoc bash "${MSH_COMPLETION}"
  DEPENDS modelshrink-gendoc
  COMMENT "Generating the bash completion")
add_custom_target(modelshrink-doc ALL DEPENDS "${MSH_MANPAGE}" "${MSH_COMPLETION}")

# ---- modelshrink.pc ----
# Written at install time, so that `cmake --install --prefix P` gets P in it.
set(MSH_PC_LIBS_PRIVATE "-lpthread -lm")
if(MSH_HAVE_CUDA)
  string(APPEND MSH_PC_LIBS_PRIVATE " -L${CUDAToolkit_LIBRARY_DIR} -lcudart -lstdc++")
endif()
foreach(_d LIBDIR INCLUDEDIR DATADIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${_d}}")
    set(MSH_PC_${_d} "${CMAKE_INSTALL_${_d}}")
  else()
    set(MSH_PC_${_d} "\${prefix}/${CMAKE_INSTALL_${_d}}")
  endif()
endforeach()
set(MSH_PC_PREFIX "@CMAKE_INSTALL_PREFIX@") # filled in by the install step
configure_file("${PROJECT_SOURCE_DIR}/cmake/modelshrink.pc.in"
               "${CMAKE_CURRENT_BINARY_DIR}/modelshrink.pc.stage" @ONLY)
install(CODE "configure_file(\"${CMAKE_CURRENT_BINARY_DIR}/modelshrink.pc.stage\"
                             \"${CMAKE_CURRENT_BINARY_DIR}/modelshrink.pc\" @ONLY)")

# ---- the CMake package ----
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/modelshrinkConfig.cmake.in"
                              "${CMAKE_CURRENT_BINARY_DIR}/modelshrinkConfig.cmake"
                              INSTALL_DESTINATION "${MSH_CMAKE_DIR}")
# 0.x releases promise what the SONAME promises: the same major version is compatible.
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/modelshrinkConfigVersion.cmake"
                                 COMPATIBILITY SameMajorVersion)

# ---- install ----
# A Python wheel (pyproject.toml, scikit-build-core, which installs into the wheel's platlib):
# the command and the shared library go into the package folder, where modelshrink/_native.py
# loads the library by its path and modelshrink/_cli.py runs the command; nothing else (the
# header, the archive and the packages are for C programs).
option(MSH_PYTHON_WHEEL "Install the layout of the Python package's wheel instead" OFF)
if(MSH_PYTHON_WHEEL)
  install(TARGETS modelshrink RUNTIME DESTINATION modelshrink/bin)
  # The real file under its SONAME: a wheel holds no symbolic links.
  install(FILES "$<TARGET_FILE:modelshrink_shared>" DESTINATION modelshrink
          RENAME "libmodelshrink.so.${PROJECT_VERSION_MAJOR}")
  return()
endif()
install(TARGETS modelshrink RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")
install(TARGETS modelshrink_shared modelshrink_static EXPORT modelshrinkTargets
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}")
install(FILES include/modelshrink.h DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY include/schema/ DESTINATION "${CMAKE_INSTALL_DATADIR}/modelshrink/schema"
        FILES_MATCHING PATTERN "*.json")
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/modelshrink.pc"
        DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
install(EXPORT modelshrinkTargets NAMESPACE modelshrink:: DESTINATION "${MSH_CMAKE_DIR}")
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/modelshrinkConfig.cmake"
              "${CMAKE_CURRENT_BINARY_DIR}/modelshrinkConfigVersion.cmake"
        DESTINATION "${MSH_CMAKE_DIR}")
install(FILES "${MSH_MANPAGE}" DESTINATION "${CMAKE_INSTALL_MANDIR}/man1")
install(FILES "${MSH_COMPLETION}" RENAME modelshrink
        DESTINATION "${CMAKE_INSTALL_DATADIR}/bash-completion/completions")
install(FILES LICENSE README.md DESTINATION "${CMAKE_INSTALL_DOCDIR}")
